"""Ray Data reads of a data set's shards, through the storage wing's filesystem.

Kept apart from the driver on purpose: Ray Data's read tasks unpickle these functions, so
this module must import nothing heavy (no TensorFlow).
"""

from __future__ import annotations

import functools

import ray

from job import storage
from job.data import shards


def ray_dataset(data_uri: str, manifest: shards.Manifest, split: str):
    """A Ray Dataset of one split's shards, read through the storage wing's filesystem."""
    fs, root = storage.arrow_filesystem(data_uri)
    paths = [f"{root.rstrip('/')}/{s.path}" for s in manifest.splits[split]]
    if manifest.format == "parquet":
        return ray.data.read_parquet(paths, filesystem=fs, columns=["image", "labels"])
    # Not ray.data.read_tfrecords: it imports TensorFlow in every read task and parses each
    # Example in Python. Splitting the framing is cheap; the worker parses whole batches.
    files = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
    expected = {path: s.num_examples for path, s in zip(paths, manifest.splits[split])}
    return files.flat_map(functools.partial(_tfrecord_rows, expected=expected))


def _tfrecord_rows(row: dict, expected: dict[str, int]) -> list[dict]:
    records = shards.split_tfrecord(row["bytes"], row["path"])
    # The plan's steps per epoch come from dataset.json's counts: a shard that disagrees
    # would silently change what an epoch is.
    listed = expected.get(row["path"])
    if listed is not None and listed != len(records):
        raise shards.DatasetError(
            f"Shard {row['path']} holds {len(records)} records but dataset.json lists {listed}. "
            "Re-create the data set, or restore the shard."
        )
    return [{"record": r} for r in records]
