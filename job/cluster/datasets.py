"""Ray Data reads of a data set's shards, through the storage wing's filesystem.

Kept apart from the driver on purpose: Ray Data's read tasks unpickle these functions, so
this module must import nothing heavy (no TensorFlow).
"""

from __future__ import annotations

import functools

import pyarrow as pa
import ray

from job import storage
from job.data import shards

# What the workers' pipeline takes from a Parquet shard (job.data.pipeline.examples_from_batches).
PARQUET_COLUMNS = ("image", "labels")


def ray_dataset(data_uri: str, manifest: shards.Manifest, split: str):
    """A Ray Dataset of one split's shards, read through the storage wing's filesystem.

    Both formats are read as whole files: a read task parses a Parquet shard into its
    image/labels rows, and splits a TFRecord shard into records that the worker parses. Each
    read checks the shard's count against dataset.json.
    """
    fs, root = storage.arrow_filesystem(data_uri)
    paths = [f"{root.rstrip('/')}/{s.path}" for s in manifest.splits[split]]
    expected = {path: s.num_examples for path, s in zip(paths, manifest.splits[split])}
    files = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
    if manifest.format == "parquet":
        # Not ray.data.read_parquet: Ray 2.60's reader (Data source V2) starts 32 footer-reader
        # actors, one Python process each, at every execution of the dataset (every epoch) to
        # learn the row counts dataset.json already has. On a 2-CPU node that was ~110 worker
        # processes in a 3-epoch run, and the first step of each attempt came ~100 s late.
        return files.map_batches(
            functools.partial(_parquet_rows, expected=expected), batch_format="pyarrow", batch_size=1
        )
    # Not ray.data.read_tfrecords: it imports TensorFlow in every read task and parses each
    # Example in Python. Splitting the framing is cheap; the worker parses whole batches.
    return files.flat_map(functools.partial(_tfrecord_rows, expected=expected))


def _parquet_rows(files: pa.Table, expected: dict[str, int]) -> pa.Table:
    tables = []
    for path, data in zip(files.column("path").to_pylist(), files.column("bytes").to_pylist()):
        table = shards.checked_parquet_table(data, path, PARQUET_COLUMNS)
        _check_count(path, table.num_rows, expected)
        tables.append(table)
    return pa.concat_tables(tables)


def _tfrecord_rows(row: dict, expected: dict[str, int]) -> list[dict]:
    records = shards.split_tfrecord(row["bytes"], row["path"])
    _check_count(row["path"], len(records), expected)
    return [{"record": r} for r in records]


def _check_count(path: str, count: int, expected: dict[str, int]) -> None:
    # The plan's steps per epoch come from dataset.json's counts: a shard that disagrees
    # would silently change what an epoch is.
    listed = expected.get(path)
    if listed is not None and listed != count:
        raise shards.DatasetError(
            f"Shard {path} holds {count} records but dataset.json lists {listed}. "
            "Re-create the data set, or restore the shard."
        )
