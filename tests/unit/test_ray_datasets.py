"""The parse step of the `ray_data` ingest path's Parquet reads (job.cluster.datasets).

Ray Data hands each read task whole shard files (path, bytes); the task must give the
workers the image/labels columns, and refuse a shard that is not Parquet or that disagrees
with dataset.json's count, naming it. The integration tests run the whole path on a local
Ray (tests/integration/test_ray_train.py, the ray_data-Parquet kill test).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from job.cluster import datasets
from job.data import shards


def _shard(n: int, start: int = 0) -> bytes:
    examples = [
        shards.Example(id=f"img-{i}", image=b"\xff\xd8jpeg-%d" % i, labels=np.array([i % 2, 1, 0], dtype=np.int64))
        for i in range(start, start + n)
    ]
    return shards.encode_shard(examples, "parquet")


def _files(**shard_bytes: bytes) -> pa.Table:
    return pa.table({"path": list(shard_bytes), "bytes": list(shard_bytes.values())})


def test_shards_become_the_image_and_labels_rows_in_order():
    table = datasets._parquet_rows(_files(a=_shard(3), b=_shard(2, start=3)), expected={"a": 3, "b": 2})
    assert table.column_names == ["image", "labels"]
    assert table.column("image").to_pylist() == [b"\xff\xd8jpeg-%d" % i for i in range(5)]
    assert table.column("labels").to_pylist()[:2] == [[0, 1, 0], [1, 1, 0]]


def test_a_shard_that_is_not_parquet_is_named():
    with pytest.raises(shards.DatasetError, match=r"Shard bucket/train/b.parquet is not a readable Parquet file"):
        datasets._parquet_rows(_files(**{"bucket/train/b.parquet": b"PAR1 cut short"}), expected={})


def test_a_shard_whose_count_disagrees_with_dataset_json_is_refused():
    with pytest.raises(shards.DatasetError, match=r"Shard a holds 3 records but dataset.json lists 4"):
        datasets._parquet_rows(_files(a=_shard(3)), expected={"a": 4})
