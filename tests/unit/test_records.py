"""Shards and dataset.json: round trips in both formats, shard layout, and damaged files.

Data sets are written to tmp_path with tiny JPEGs; every failure test checks that the
message names what a user must look at (the shard, the record index, the command to run).
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from job.data import shards, splits
from job.data.shards import DatasetError, Example
from job.data.synthetic import encode_jpeg
from job.errors import UserError

CLASSES = ["sea", "sunset", "trees"]


def _examples(n: int, k: int = len(CLASSES), seed: int = 0, prefix: str = "ex") -> list[Example]:
    """n distinct examples: 8x8 random JPEGs and a label pattern that varies with i."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        labels = np.array([(i >> b) & 1 for b in range(k)], dtype=np.int64)
        out.append(Example(id=f"{prefix}-{i:03d}", image=encode_jpeg(pixels), labels=labels))
    return out


def _write_set(root: str, fmt: str, sizes=None, shard_counts=None) -> tuple[shards.Manifest, dict[str, list[Example]]]:
    sizes = sizes or {"train": 10, "val": 4, "test": 3}
    shard_counts = shard_counts or {"train": 3, "val": 2, "test": 1}
    written, data = {}, {}
    for offset, split in enumerate(shards.SPLITS):
        data[split] = _examples(sizes[split], seed=offset, prefix=split)
        written[split] = shards.write_split(
            root, split, iter(data[split]), sizes[split], shard_counts[split], fmt, len(CLASSES)
        )
    manifest = shards.Manifest(format=fmt, class_names=list(CLASSES), splits=written, source={"test": True})
    shards.write_manifest(root, manifest)
    return manifest, data


def _tfrecord_bytes(n: int = 4) -> bytes:
    return shards.encode_shard(_examples(n), "tfrecord")


def _record_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start of header, length of data) of each record, from the framing."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 8], "little")
        out.append((pos, length))
        pos += 12 + length + 4
    return out


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_write_then_read_round_trip(tmp_path, fmt):
    root = str(tmp_path / "ds")
    manifest, data = _write_set(root, fmt)
    loaded = shards.load_manifest(root)
    assert loaded == manifest
    assert loaded.format == fmt
    assert loaded.class_names == CLASSES
    for split in shards.SPLITS:
        got = [ex for _, ex in shards.read_split(root, loaded, split)]
        want = data[split]
        assert [e.id for e in got] == [e.id for e in want]
        assert [e.image for e in got] == [e.image for e in want]
        assert [e.labels.tolist() for e in got] == [e.labels.tolist() for e in want]
        assert loaded.num_examples(split) == len(want)


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_read_split_names_the_shard_of_each_example(tmp_path, fmt):
    root = str(tmp_path / "ds")
    manifest, _ = _write_set(root, fmt)
    uris = [uri for uri, _ in shards.read_split(root, manifest, "train")]
    # 10 examples over 3 shards: 4, 3, 3, in shard order.
    expected = manifest.shard_uris(root, "train")
    assert uris == [expected[0]] * 4 + [expected[1]] * 3 + [expected[2]] * 3


def test_read_labels_matches_written_labels(tmp_path):
    root = str(tmp_path / "ds")
    manifest, data = _write_set(root, "parquet")
    labels = shards.read_labels(root, manifest, "train")
    assert labels.shape == (10, len(CLASSES))
    assert labels.tolist() == [e.labels.tolist() for e in data["train"]]
    assert shards.read_labels(root, manifest, "train", limit=3).shape == (3, len(CLASSES))


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_shard_names_and_even_sizes(tmp_path, fmt):
    root = str(tmp_path / "ds")
    manifest, _ = _write_set(
        root, fmt, sizes={"train": 10, "val": 4, "test": 3}, shard_counts={"train": 3, "val": 2, "test": 8}
    )
    assert sorted(os.listdir(os.path.join(root, "train"))) == [
        f"part-00000-of-00003.{fmt}",
        f"part-00001-of-00003.{fmt}",
        f"part-00002-of-00003.{fmt}",
    ]
    assert [s.num_examples for s in manifest.splits["train"]] == [4, 3, 3]
    assert [s.path for s in manifest.splits["val"]] == [
        f"val/part-00000-of-00002.{fmt}",
        f"val/part-00001-of-00002.{fmt}",
    ]
    assert [s.num_examples for s in manifest.splits["val"]] == [2, 2]
    # More shards than examples: capped, so no shard is empty.
    assert [s.num_examples for s in manifest.splits["test"]] == [1, 1, 1]
    assert sorted(os.listdir(os.path.join(root, "test"))) == [f"part-0000{i}-of-00003.{fmt}" for i in range(3)]
    assert os.path.isfile(os.path.join(root, "dataset.json"))


@pytest.mark.parametrize(
    "total, num_shards, expected",
    [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (7, 4, [2, 2, 2, 1]), (5, 1, [5]), (2, 2, [1, 1])],
)
def test_split_counts_are_even_and_larger_first(total, num_shards, expected):
    counts = shards.split_counts(total, num_shards)
    assert counts == expected
    assert sum(counts) == total and max(counts) - min(counts) <= 1


def test_shard_name_format():
    assert shards.shard_name(7, 120, "tfrecord") == "part-00007-of-00120.tfrecord"


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_manifest_sha256_and_size_match_the_files(tmp_path, fmt):
    root = str(tmp_path / "ds")
    _write_set(root, fmt)
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    checked = 0
    for body in on_disk["splits"].values():
        for shard in body["shards"]:
            data = (tmp_path / "ds" / shard["path"]).read_bytes()
            assert shard["size_bytes"] == len(data)
            assert shard["sha256"] == hashlib.sha256(data).hexdigest()
            checked += 1
    assert checked == 3 + 2 + 1


def test_label_counts_per_shard_and_per_split(tmp_path):
    root = str(tmp_path / "ds")
    manifest, data = _write_set(root, "tfrecord")
    for split in shards.SPLITS:
        expected = np.stack([e.labels for e in data[split]]).sum(axis=0).tolist()
        assert manifest.label_counts(split) == expected
        # Per-shard counts add up to the split's, and are saved in dataset.json.
        assert np.sum([s.label_counts for s in manifest.splits[split]], axis=0).tolist() == expected
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    # train labels are the bits of 0..9: bit0 set 5 times, bit1 4 times, bit2 4 times.
    assert on_disk["splits"]["train"]["label_counts"] == [5, 4, 4]
    assert on_disk["splits"]["train"]["num_examples"] == 10


# ---------------------------------------------------------------------------- refused at write time


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_label_width_mismatch_is_refused_naming_the_example(tmp_path, fmt):
    examples = _examples(3) + [Example(id="too-wide", image=b"x", labels=np.array([0, 1, 0, 1]))]
    with pytest.raises(DatasetError, match=r"too-wide has 4 labels, expected 3"):
        shards.write_split(str(tmp_path / "ds"), "train", iter(examples), 4, 1, fmt, 3)


@pytest.mark.parametrize("bad", [[0, 2, 1], [0, -1, 0], [0.5, 0, 1]])
def test_non_binary_labels_are_refused(tmp_path, bad):
    examples = [Example(id="odd", image=b"x", labels=np.array(bad))]
    with pytest.raises(DatasetError, match="odd has label values other than 0/1"):
        shards.write_split(str(tmp_path / "ds"), "train", iter(examples), 1, 1, "parquet", 3)


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(UserError, match="Unknown shard format 'csv'"):
        shards.write_split(str(tmp_path / "ds"), "train", iter(_examples(2)), 2, 1, "csv", 3)


# ---------------------------------------------------------------------------- manifest errors


def test_folder_without_manifest_says_how_to_create_one(tmp_path):
    root = str(tmp_path / "empty")
    os.makedirs(root)
    with pytest.raises(DatasetError) as info:
        shards.load_manifest(root)
    message = str(info.value)
    assert "No dataset.json" in message and root in message
    assert "python -m job synth" in message
    assert "python -m job prepare" in message


def test_malformed_json_is_a_dataset_error(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text('{"format_version": 1, "format": ')
    with pytest.raises(DatasetError) as info:
        shards.load_manifest(str(root))
    message = str(info.value)
    assert "dataset.json" in message
    assert "not valid JSON" in message
    assert "Re-create" in message


def test_wrong_format_version_names_both_versions(tmp_path):
    root = str(tmp_path / "ds")
    _write_set(root, "parquet")
    path = tmp_path / "ds" / "dataset.json"
    obj = json.loads(path.read_text())
    obj["format_version"] = 7
    path.write_text(json.dumps(obj))
    with pytest.raises(DatasetError) as info:
        shards.load_manifest(root)
    message = str(info.value)
    assert "format_version 7" in message and f"version {shards.FORMAT_VERSION}" in message
    assert "python -m job prepare" in message


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"format": "parquet", "class_names": [], "splits": {}}, "format_version"),  # missing key
        (
            {"format_version": 1, "format": "csv", "class_names": [], "splits": {}},
            "format must be one of tfrecord, parquet, got 'csv'",
        ),
        ([1, 2, 3], "not a valid data set manifest"),
        (
            {
                "format_version": 1,
                "format": "parquet",
                "class_names": ["a"],
                "splits": {"train": {"shards": [{"path": "x", "bogus": 1}]}},
            },
            "not a valid data set manifest",
        ),
    ],
)
def test_manifest_with_wrong_structure_is_a_dataset_error(tmp_path, obj, fragment):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(obj))
    with pytest.raises(DatasetError, match=fragment) as info:
        shards.load_manifest(str(root))
    assert "dataset.json" in str(info.value)


def _first_shard(obj):
    return obj["splits"]["train"]["shards"][0]


def _set(path: str, value):
    """A mutation of a valid manifest: set the value at a dotted path ("splits.train.shards.0.path")."""

    def mutate(obj):
        *parents, last = path.split(".")
        target = obj
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[int(last) if isinstance(target, list) else last] = value

    return mutate


def _shard_field(key: str, value):
    return _set(f"splits.train.shards.0.{key}", value)


# Each hostile or careless edit of dataset.json, and the words the error must say.
BAD_MANIFESTS = {
    "negative count": (_shard_field("num_examples", -3), "num_examples must be in 0..inf, got -3"),
    "float count": (_shard_field("num_examples", 4.0), "num_examples must be a whole number, got 4.0"),
    "string count": (_shard_field("num_examples", "4"), "num_examples must be a whole number, got '4'"),
    "NaN count": (_shard_field("num_examples", float("nan")), "num_examples must be a whole number, got NaN"),
    "boolean count": (_shard_field("num_examples", True), "num_examples must be a whole number, got True"),
    "huge count": (_shard_field("num_examples", 10**15), "claims 1000000000000000 examples in"),
    "negative size": (_shard_field("size_bytes", -1), "size_bytes must be in 0.."),
    "negative label count": (_set("splits.train.shards.0.label_counts.1", -1), "label_counts[1] must be in 0.."),
    "label count above the examples": (
        _set("splits.train.shards.0.label_counts.0", 99),
        "label_counts[0] must be in 0..5, got 99",
    ),
    "short label counts": (_shard_field("label_counts", [1]), "has 1 entries but class_names lists 3"),
    "bad sha256": (_shard_field("sha256", "abc"), "sha256 must be 64 lowercase hex digits"),
    "absolute path": (_shard_field("path", "/etc/passwd"), "must be relative to the data set root"),
    "dot-dot path": (_shard_field("path", "train/../../other/x.tfrecord"), "must stay inside the data set root"),
    "other bucket": (_shard_field("path", "s3://other-bucket/x.tfrecord"), "must be relative to the data set root"),
    "empty path": (_shard_field("path", ""), "must be a non-empty string"),
    "one shard twice": (_set("splits.train.shards.1.path", None), None),  # replaced below
    "string class_names": (_set("class_names", "sea,sunset,trees"), "class_names must be a non-empty list"),
    "empty class_names": (_set("class_names", []), "class_names must be a non-empty list"),
    "empty class name": (_set("class_names", ["sea", "", "trees"]), "class_names must be non-empty strings"),
    "duplicate class_names": (_set("class_names", ["sea", "sea", "trees"]), "lists 'sea' twice"),
    "NFC duplicate class_names": (
        _set("class_names", ["caf\u00e9", "cafe\u0301", "trees"]),
        "(the same name in Unicode NFC)",
    ),
    "numeric class name": (_set("class_names", ["sea", 7, "trees"]), "class_names must be non-empty strings, got 7"),
    "unknown split": (_set("splits.holdout", {"shards": []}), "unknown split(s) 'holdout'"),
    "split total disagrees": (
        _set("splits.train.num_examples", 11),
        "splits.train.num_examples is 11 but its shards hold 10",
    ),
}
BAD_MANIFESTS["one shard twice"] = (
    lambda obj: obj["splits"]["train"]["shards"][1].update(path=_first_shard(obj)["path"]),
    "is also listed at splits.train.shards[0]",
)


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_every_load_refuses_a_manifest_that_cannot_be_trusted(tmp_path, case):
    root = str(tmp_path / "ds")
    _write_set(root, "tfrecord", shard_counts={"train": 2, "val": 1, "test": 1})
    path = os.path.join(root, "dataset.json")
    obj = json.loads(open(path).read())
    mutate, fragment = BAD_MANIFESTS[case]
    mutate(obj)
    with open(path, "w") as fh:
        fh.write(json.dumps(obj))  # json writes NaN as the bare token NaN, as a careless script would
    with pytest.raises(DatasetError) as info:
        shards.load_manifest(root)
    assert fragment in str(info.value), str(info.value)


def test_a_count_inflated_by_one_is_caught_when_the_shards_are_read(tmp_path):
    from job.data.validate import validate_dataset

    root = str(tmp_path / "ds")
    _write_set(root, "parquet", shard_counts={"train": 2, "val": 1, "test": 1})
    path = os.path.join(root, "dataset.json")
    obj = json.loads(open(path).read())
    _first_shard(obj)["num_examples"] += 1  # still plausible for its size: only the shard can tell
    obj["splits"]["train"]["num_examples"] += 1
    with open(path, "w") as fh:
        fh.write(json.dumps(obj))
    # The pre-flight check `train` runs with data.verify_checksums=false: sampled, no full hash.
    report = validate_dataset(root, full_hash=False, sample_records=4)
    assert not report.ok
    assert any("holds 5 records but dataset.json lists 6" in e for e in report.errors), report.errors


# ---------------------------------------------------------------------------- TFRecord framing


def test_split_tfrecord_matches_tensorflow(tmp_path):
    import tensorflow as tf

    data = _tfrecord_bytes(5)
    path = tmp_path / "s.tfrecord"
    path.write_bytes(data)
    expected = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    got = shards.split_tfrecord(data, "s.tfrecord")
    assert len(expected) == 5
    assert got == expected
    # Each record parses back into the example that was written.
    assert [shards.parse_tfrecord_example(r, "x").id for r in got] == [f"ex-{i:03d}" for i in range(5)]


def test_split_tfrecord_of_an_empty_file_is_empty():
    assert shards.split_tfrecord(b"", "empty.tfrecord") == []


@pytest.mark.parametrize(
    "where_in_record, kind",
    [
        (5, "incomplete header"),  # cut inside the 12-byte header of record 2
        (12 + 30, "bytes announced"),  # cut inside record 2's data
        (-2, "bytes announced"),  # cut inside record 2's trailing data CRC
    ],
)
def test_split_tfrecord_on_a_truncated_file_names_the_shard(where_in_record, kind):
    data = _tfrecord_bytes(4)
    start, length = _record_offsets(data)[2]
    cut = start + where_in_record if where_in_record >= 0 else start + 12 + length + 4 + where_in_record
    where = "s3://bucket/ds/train/part-00001-of-00004.tfrecord"
    with pytest.raises(DatasetError) as info:
        shards.split_tfrecord(data[:cut], where)
    message = str(info.value)
    assert where in message
    assert "truncated at record 2" in message
    assert kind in message


def test_read_shard_on_a_flipped_byte_names_the_record(tmp_path):
    data = bytearray(_tfrecord_bytes(4))
    start, length = _record_offsets(bytes(data))[2]
    data[start + 12 + length // 2] ^= 0xFF  # same size, one byte of record 2's payload changed
    where = "train/part-00000-of-00001.tfrecord"
    got = []
    with pytest.raises(DatasetError) as info:
        for example in shards.read_shard(bytes(data), "tfrecord", where):
            got.append(example.id)
    message = str(info.value)
    assert where in message
    assert "record 2" in message
    # The two good records before it were read.
    assert got == ["ex-000", "ex-001"]


@pytest.mark.parametrize("where_in_record", [5, 12 + 30])
def test_read_shard_on_a_truncated_tfrecord_raises(where_in_record):
    # A shard cut short (an interrupted copy) must not read as a shorter, valid shard.
    data = _tfrecord_bytes(4)
    start, _ = _record_offsets(data)[2]
    with pytest.raises(DatasetError, match=r"part-00003-of-00004\.tfrecord.*record 2"):
        list(shards.read_shard(data[: start + where_in_record], "tfrecord", "val/part-00003-of-00004.tfrecord"))


def test_read_shard_on_an_unreadable_parquet_file():
    data = shards.encode_shard(_examples(3), "parquet")
    with pytest.raises(DatasetError, match=r"train/part-00000-of-00001\.parquet is not a readable Parquet"):
        list(shards.read_shard(data[: len(data) // 2], "parquet", "train/part-00000-of-00001.parquet"))


# ---------------------------------------------------------------------------- splits


def test_assign_splits_is_deterministic_disjoint_and_complete():
    a = splits.assign_splits(100, 0.15, 0.1, seed=3)
    b = splits.assign_splits(100, 0.15, 0.1, seed=3)
    for name in ("train", "val", "test"):
        assert a[name].tolist() == b[name].tolist()
        assert a[name].tolist() == sorted(a[name].tolist())
    assert (len(a["val"]), len(a["test"]), len(a["train"])) == (15, 10, 75)
    union = np.concatenate([a["train"], a["val"], a["test"]])
    assert sorted(union.tolist()) == list(range(100))  # disjoint and covering
    other = splits.assign_splits(100, 0.15, 0.1, seed=4)
    assert other["val"].tolist() != a["val"].tolist()


def test_assign_splits_allows_an_empty_test_split():
    assigned = splits.assign_splits(10, 0.2, 0.0, seed=0)
    assert len(assigned["test"]) == 0 and len(assigned["val"]) == 2 and len(assigned["train"]) == 8


@pytest.mark.parametrize(
    "val, test, fragment",
    [
        (-0.1, 0.1, "--val-fraction must be in [0, 1)"),
        (1.0, 0.0, "--val-fraction must be in [0, 1)"),
        (0.1, 1.5, "--test-fraction must be in [0, 1)"),
        (0.6, 0.4, "must be below 1"),
    ],
)
def test_assign_splits_rejects_bad_fractions(val, test, fragment):
    with pytest.raises(UserError) as info:
        splits.assign_splits(100, val, test, seed=0)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "n, val, test, empty",
    [
        (3, 0.1, 0.1, "'val'"),  # round(0.3) = 0 val examples
        (2, 0.0, 0.0, "'val'"),
        (4, 0.5, 0.4, "'train'"),  # 2 val + 2 test leave no train
    ],
)
def test_assign_splits_rejects_empty_splits(n, val, test, empty):
    with pytest.raises(UserError, match=f"leave the {empty} split empty"):
        splits.assign_splits(n, val, test, seed=0)
