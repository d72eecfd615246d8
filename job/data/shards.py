"""Shard formats (TFRecord `tf.train.Example`, Parquet) and the `dataset.json` manifest.

Layout of a data set at ROOT (a local folder or s3://bucket/prefix):

    ROOT/dataset.json
    ROOT/{train,val,test}/part-NNNNN-of-MMMMM.GENERATION.{tfrecord,parquet}

Each example is (id: str, image: encoded bytes, labels: multi-hot of len(class_names)).
TFRecord shards hold `tf.train.Example` with features `image` (bytes), `labels` (int64 list)
and `id` (bytes); Parquet shards hold columns `image` (binary), `labels` (list<int64>) and
`id` (string). Every write of a data set is a new GENERATION (a time stamp plus random
hex): its shards get new names, so the shards an existing dataset.json lists are never
overwritten, and dataset.json, written last, switches readers from one complete set to the
next (`splits.write_dataset`). Data sets written before generations existed have names
without one and read the same.

TensorFlow and pyarrow are imported inside the functions that need them: `validate`,
`analyze` and Ray Data's read tasks use this module and must not pay for TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from job import storage
from job.errors import UserError
from job.storage import scratch

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
FORMATS = ("tfrecord", "parquet")
MANIFEST_NAME = "dataset.json"
PARQUET_ROW_GROUP_ROWS = 256


class DatasetError(UserError):
    """The data set on storage is missing, malformed or does not match the run."""


@dataclass(frozen=True)
class Example:
    """One labelled image."""

    id: str
    image: bytes
    labels: np.ndarray  # multi-hot, len(class_names)


@dataclass(frozen=True)
class Shard:
    """One shard file, as listed in dataset.json."""

    path: str  # relative to ROOT, e.g. "train/part-00000-of-00004.tfrecord"
    num_examples: int
    size_bytes: int
    sha256: str
    label_counts: list[int]


# Leading bytes of the encodings tf.io.decode_image reads.
_MAGIC = ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF8", "gif"), (b"BM", "bmp"))


def sniff_encoding(image: bytes) -> str:
    """ "jpeg", "png", "gif" or "bmp" from an image's leading bytes; "unknown" otherwise."""
    return next((name for magic, name in _MAGIC if image.startswith(magic)), "unknown")


def describe_encodings(found: Iterable[str]) -> str:
    """dataset.json's image_encoding for the encodings seen: "jpeg", or e.g. "jpeg+png" for a mix."""
    return "+".join(sorted(set(found))) or "jpeg"


@dataclass(frozen=True)
class Manifest:
    """The contents of dataset.json."""

    format: str
    class_names: list[str]
    splits: dict[str, list[Shard]]
    image_encoding: str = "jpeg"
    format_version: int = FORMAT_VERSION
    source: dict = field(default_factory=dict)  # how it was made (synth options, prepare input)
    generation: str = ""  # the write that made it; "" for sets written before generations

    def shard_paths(self) -> set[str]:
        """Every shard path (relative to the root) the manifest lists."""
        return {s.path for shards in self.splits.values() for s in shards}

    def num_examples(self, split: str) -> int:
        return sum(s.num_examples for s in self.splits.get(split, []))

    def label_counts(self, split: str) -> list[int]:
        totals = np.zeros(len(self.class_names), dtype=np.int64)
        for s in self.splits.get(split, []):
            totals += np.asarray(s.label_counts, dtype=np.int64)
        return totals.tolist()

    def shard_uris(self, root: str, split: str) -> list[str]:
        return [storage.join(root, s.path) for s in self.splits.get(split, [])]

    def to_json(self) -> dict:
        return {
            "format_version": self.format_version,
            "format": self.format,
            "class_names": list(self.class_names),
            "image_encoding": self.image_encoding,
            "generation": self.generation,
            "source": self.source,
            "splits": {
                name: {
                    "num_examples": self.num_examples(name),
                    "label_counts": self.label_counts(name),
                    "shards": [asdict(s) for s in shards],
                }
                for name, shards in self.splits.items()
            },
        }

    @classmethod
    def from_json(cls, obj: dict, where: str) -> Manifest:
        """A manifest from parsed dataset.json, checked against `manifest_schema` first.

        Raises:
            DatasetError listing what is wrong (types, ranges, names, shard paths, counts).
        """
        from job.data import manifest_schema

        if isinstance(obj, dict) and "format_version" in obj and obj["format_version"] != FORMAT_VERSION:
            raise DatasetError(
                f"{where} has format_version {obj['format_version']!r}; this release reads version "
                f"{FORMAT_VERSION}. Re-create the data set with this release's `python -m job prepare` or `synth`."
            )
        problems = manifest_schema.manifest_problems(obj, FORMATS, SPLITS)
        if problems:
            raise DatasetError(
                f"{where} is not a valid data set manifest:\n{manifest_schema.describe_problems(problems)}\n"
                "Fix it, or re-create the data set with `python -m job prepare` or `python -m job synth`."
            )
        return cls(
            format=obj["format"],
            class_names=list(obj["class_names"]),
            splits={name: [Shard(**s) for s in body["shards"]] for name, body in obj["splits"].items()},
            image_encoding=obj.get("image_encoding", "jpeg"),
            format_version=FORMAT_VERSION,
            source=obj.get("source", {}),
            generation=obj.get("generation", ""),
        )


# ---------------------------------------------------------------------------- manifest


def manifest_uri(root: str) -> str:
    return storage.join(root, MANIFEST_NAME)


def load_manifest(root: str) -> Manifest:
    """Read ROOT/dataset.json.

    Raises:
        DatasetError when it is missing or malformed, saying how to create one.
    """
    uri = manifest_uri(root)
    if not storage.exists(uri):
        raise DatasetError(
            f"No {MANIFEST_NAME} at {root}: this is not a data set folder. Create one with "
            f"`python -m job synth --out {root}` (synthetic scenes) or "
            f"`python -m job prepare --images DIR --labels CSV --out {root}` (your own images)."
        )
    try:
        obj = storage.read_json(uri)
    except (ValueError, storage.StorageError) as exc:
        if storage.exists(uri):  # readable but not JSON; a storage fault would fail exists() too
            raise DatasetError(f"{uri} is not valid JSON ({exc}). Re-create the data set.") from None
        raise
    return Manifest.from_json(obj, uri)


def write_manifest(root: str, manifest: Manifest) -> None:
    """Publish the manifest; call it after every shard is written."""
    storage.write_json(manifest_uri(root), manifest.to_json())


# ---------------------------------------------------------------------------- writing


def shard_name(index: int, count: int, fmt: str, generation: str = "") -> str:
    middle = f".{generation}" if generation else ""
    return f"part-{index:05d}-of-{count:05d}{middle}.{fmt}"


# Any shard file name this product writes, with or without a generation.
SHARD_NAME_PATTERN = re.compile(r"^part-\d{5}-of-\d{5}(\.[0-9A-Za-z-]+)?\.(tfrecord|parquet)$")


def new_generation() -> str:
    """A fresh generation id: sortable by time, unique by its random part."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def split_counts(total: int, num_shards: int) -> list[int]:
    """Examples per shard: as even as possible, larger shards first."""
    base, extra = divmod(total, num_shards)
    return [base + (1 if i < extra else 0) for i in range(num_shards)]


def write_split(
    root: str,
    split: str,
    examples: Iterable[Example],
    num_examples: int,
    num_shards: int,
    fmt: str,
    num_classes: int,
    generation: str = "",
) -> list[Shard]:
    """Write one split as `num_shards` shards and return their manifest entries.

    Args:
        root: the data set root URI.
        split: "train", "val" or "test".
        examples: exactly `num_examples` examples, consumed in order (streaming).
        num_shards: shard count; capped at num_examples so no shard is empty.
        fmt: "tfrecord" or "parquet".
        num_classes: label width; every example must match it.
        generation: put in every shard name, so no existing shard is overwritten.
    """
    if fmt not in FORMATS:
        raise UserError(f"Unknown shard format {fmt!r}; use one of {', '.join(FORMATS)}.")
    num_shards = max(1, min(num_shards, num_examples))
    counts = split_counts(num_examples, num_shards)
    it = iter(examples)
    shards = []
    for index, count in enumerate(counts):
        batch = [_checked(next(it), num_classes) for _ in range(count)]
        data = encode_shard(batch, fmt)
        rel = f"{split}/{shard_name(index, num_shards, fmt, generation)}"
        storage.write_bytes(storage.join(root, rel), data)
        labels = np.stack([e.labels for e in batch]).astype(np.int64) if batch else np.zeros((0, num_classes))
        shards.append(
            Shard(
                path=rel,
                num_examples=len(batch),
                size_bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                label_counts=labels.sum(axis=0).astype(int).tolist(),
            )
        )
    return shards


def _checked(example: Example, num_classes: int) -> Example:
    labels = np.asarray(example.labels)
    if labels.shape != (num_classes,):
        raise DatasetError(f"Example {example.id} has {labels.size} labels, expected {num_classes}.")
    if not np.isin(labels, (0, 1)).all():
        raise DatasetError(f"Example {example.id} has label values other than 0/1: {labels.tolist()}.")
    return example


def encode_shard(examples: Sequence[Example], fmt: str) -> bytes:
    """Serialise examples into one shard's bytes."""
    return _encode_tfrecord(examples) if fmt == "tfrecord" else _encode_parquet(examples)


def _encode_tfrecord(examples: Sequence[Example]) -> bytes:
    import tensorflow as tf

    # TFRecordWriter only writes to paths; a local temp file keeps the storage wing the only
    # module that knows where the bytes finally go.
    with tempfile.TemporaryDirectory(dir=scratch.root()) as tmp:
        path = os.path.join(tmp, "shard.tfrecord")
        with tf.io.TFRecordWriter(path) as writer:
            for e in examples:
                writer.write(tfrecord_example(e))
        with open(path, "rb") as fh:
            return fh.read()


def tfrecord_example(example: Example) -> bytes:
    """A serialised tf.train.Example for one example."""
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example.image])),
        "labels": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in example.labels])),
        "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example.id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _encode_parquet(examples: Sequence[Example]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "image": pa.array([e.image for e in examples], type=pa.binary()),
            "labels": pa.array([[int(v) for v in e.labels] for e in examples], type=pa.list_(pa.int64())),
            "id": pa.array([e.id for e in examples], type=pa.string()),
        }
    )
    buf = io.BytesIO()
    # Images are already compressed; small row groups keep readers' memory bounded.
    pq.write_table(table, buf, row_group_size=PARQUET_ROW_GROUP_ROWS, compression="none")
    return buf.getvalue()


# ---------------------------------------------------------------------------- reading


def read_shard(data: bytes, fmt: str, where: str) -> Iterator[Example]:
    """Parse one shard's bytes into examples.

    Raises:
        DatasetError naming `where` and the record index when a record is corrupt
        (a TFRecord CRC mismatch, a truncated file, an unreadable Parquet file).
    """
    if fmt == "tfrecord":
        yield from _read_tfrecord(data, where)
    else:
        yield from _read_parquet(data, where)


def _read_tfrecord(data: bytes, where: str) -> Iterator[Example]:
    import tensorflow as tf

    # TensorFlow's reader takes a file cut inside a record header for a clean end of file;
    # the framing check catches that, the reader below checks the CRCs.
    split_tfrecord(data, where)
    with tempfile.TemporaryDirectory(dir=scratch.root()) as tmp:
        path = os.path.join(tmp, "shard.tfrecord")
        with open(path, "wb") as fh:
            fh.write(data)
        index = 0
        iterator = iter(tf.data.TFRecordDataset(path))
        while True:
            try:
                raw = next(iterator)
            except StopIteration:
                return
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
                raise DatasetError(
                    f"Shard {where} is corrupt at record {index} ({exc.message.splitlines()[0]}). "
                    "Re-create the data set or restore the shard from its source."
                ) from None
            yield parse_tfrecord_example(raw.numpy(), f"{where} record {index}")
            index += 1


def split_tfrecord(data: bytes, where: str) -> list[bytes]:
    """The serialised records of a TFRecord file, without TensorFlow.

    Ray Data read tasks use this so they need not import TensorFlow (seconds per process)
    or parse examples in Python; tf.data parses whole batches on the worker. The framing
    (8-byte length, 4-byte length CRC, data, 4-byte data CRC) is checked for truncation;
    the CRCs themselves are verified by `validate` and by the sha256 pre-flight check.
    """
    out, pos, end = [], 0, len(data)
    while pos < end:
        if pos + 12 > end:
            raise DatasetError(f"Shard {where} is truncated at record {len(out)} (incomplete header).")
        length = int.from_bytes(data[pos : pos + 8], "little")
        start = pos + 12
        stop = start + length
        if stop + 4 > end:
            raise DatasetError(f"Shard {where} is truncated at record {len(out)} ({length} bytes announced).")
        out.append(data[start:stop])
        pos = stop + 4
    return out


def count_records(data: bytes, fmt: str, where: str) -> int:
    """Records in one shard's bytes, from the TFRecord framing or the Parquet footer (no parsing)."""
    if fmt == "tfrecord":
        return len(split_tfrecord(data, where))
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"Shard {where} is not a readable Parquet file ({exc}). Re-create the data set.") from None


def parse_tfrecord_example(raw: bytes, where: str) -> Example:
    """Parse one serialised tf.train.Example written by `tfrecord_example`."""
    import tensorflow as tf

    try:
        ex = tf.train.Example.FromString(raw)
        feat = ex.features.feature
        return Example(
            id=feat["id"].bytes_list.value[0].decode() if "id" in feat else "",
            image=feat["image"].bytes_list.value[0],
            labels=np.asarray(feat["labels"].int64_list.value, dtype=np.int64),
        )
    except Exception as exc:  # protobuf raises its own DecodeError type
        raise DatasetError(f"{where} is not a valid tf.train.Example with image/labels ({exc}).") from None


def parquet_table(data: bytes, columns: Sequence[str] | None = None):
    """A whole Parquet shard's bytes as a pyarrow Table, read on the calling thread.

    Shards are small and already in memory, so Arrow's CPU and I/O thread pools buy nothing;
    and a pool thread still alive at interpreter exit aborts the process ("terminate called
    without an active exception", apache/arrow#34314) instead of letting it exit cleanly.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data), columns=columns, use_threads=False, pre_buffer=False)


def checked_parquet_table(data: bytes, where: str, columns: Sequence[str] | None = None):
    """`parquet_table`, with a DatasetError naming the shard when it is not Parquet or lacks
    the image/labels columns."""
    import pyarrow as pa

    try:
        table = parquet_table(data)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"Shard {where} is not a readable Parquet file ({exc}). Re-create the data set.") from None
    missing = {"image", "labels"} - set(table.column_names)
    if missing:
        raise DatasetError(f"Shard {where} lacks column(s) {', '.join(sorted(missing))}.")
    return table.select(list(columns)) if columns is not None else table


def _read_parquet(data: bytes, where: str) -> Iterator[Example]:
    table = checked_parquet_table(data, where)
    ids = table.column("id").to_pylist() if "id" in table.column_names else [""] * table.num_rows
    images = table.column("image").to_pylist()
    labels = table.column("labels").to_pylist()
    for i in range(table.num_rows):
        yield Example(id=ids[i], image=images[i], labels=np.asarray(labels[i], dtype=np.int64))


def read_split(root: str, manifest: Manifest, split: str) -> Iterator[tuple[str, Example]]:
    """Every example of a split, with the URI of its shard."""
    for uri in manifest.shard_uris(root, split):
        for example in read_shard(storage.read_bytes(uri), manifest.format, uri):
            yield uri, example


def read_labels(root: str, manifest: Manifest, split: str, limit: int | None = None) -> np.ndarray:
    """The multi-hot label matrix of a split (optionally only its first `limit` rows)."""
    rows = []
    for _, example in read_split(root, manifest, split):
        rows.append(example.labels)
        if limit is not None and len(rows) >= limit:
            break
    return np.stack(rows) if rows else np.zeros((0, len(manifest.class_names)), dtype=np.int64)
