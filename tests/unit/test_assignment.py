"""The direct ingest path's rule for which examples each rank reads (`job.data.assignment`),
and the tf.data source built on it (`pipeline.examples_from_shards(rank=, world_size=)`)."""

from __future__ import annotations

from collections import Counter

import pytest

from job.data import pipeline
from job.data.assignment import rank_segments
from tests.unit.test_inputs import _pairs, _write

FILES = [("s3://b/d/train/part-0", 30), ("s3://b/d/train/part-1", 25), ("s3://b/d/train/part-2", 31)]


def _examples(segments) -> list[tuple[str, int]]:
    return [(s.uri, i) for s in segments for i in range(s.start, s.stop)]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_ranks_get_equal_disjoint_parts_that_cover_the_split(world_size, epoch):
    parts = [_examples(rank_segments(FILES, r, world_size, seed=11, epoch=epoch)) for r in range(world_size)]
    total = sum(n for _, n in FILES)
    assert [len(p) for p in parts] == [total // world_size] * world_size
    everything = [e for p in parts for e in p]
    assert len(set(everything)) == len(everything), "an example is read by two ranks"
    assert len(everything) == total - total % world_size


def test_one_file_for_two_workers_is_split_inside_the_file():
    parts = [rank_segments([("f", 9)], r, 2) for r in range(2)]
    assert [(s.start, s.stop) for p in parts for s in p] == [(0, 4), (4, 8)]


def test_every_epoch_draws_a_new_file_order_the_same_on_every_rank():
    first = {e: [s.uri for s in rank_segments(FILES, 0, 1, seed=3, epoch=e)] for e in range(6)}
    assert len({tuple(v) for v in first.values()}) > 1, "the order never changes between epochs"
    assert rank_segments(FILES, 1, 2, seed=3, epoch=4) == rank_segments(FILES, 1, 2, seed=3, epoch=4)
    assert [s.uri for s in rank_segments(FILES, 0, 1, shuffle=False)] == [u for u, _ in FILES]


def test_a_rank_outside_the_group_is_refused():
    with pytest.raises(ValueError, match="rank 2 is not in a group of 2"):
        rank_segments(FILES, 2, 2)


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_two_ranks_read_disjoint_equal_parts_and_each_pass_is_a_new_epoch(tmp_path, fmt):
    root = str(tmp_path / "ds")
    manifest, data = _write(root, fmt, {"train": (23, 4)})

    def part(rank: int, first_epoch: int):
        ds = pipeline.examples_from_shards(
            root, manifest, "train", shuffle_shards=True, seed=5, rank=rank, world_size=2, first_epoch=first_epoch
        )
        return [img for img, _ in _pairs(ds)]

    zero, one = part(0, 0), part(1, 0)
    assert len(zero) == len(one) == 11
    assert not set(zero) & set(one)
    assert set(zero) | set(one) <= {e.image for e in data["train"]}
    # A repeated source moves to the next epoch's assignment: as a resumed run's first pass does.
    ds = pipeline.examples_from_shards(root, manifest, "train", shuffle_shards=True, seed=5, rank=0, world_size=2)
    two_passes = [img for img, _ in _pairs(ds.repeat(2))]
    assert two_passes[:11] == zero and two_passes[11:] == part(0, 1)
    assert Counter(two_passes[11:]).most_common(1)[0][1] == 1


def test_a_shard_with_fewer_examples_than_listed_names_it(tmp_path):
    root = str(tmp_path / "ds")
    manifest, _ = _write(root, "parquet", {"train": (6, 2)})
    shard = manifest.splits["train"][0]
    lying = type(manifest)(
        format=manifest.format,
        class_names=manifest.class_names,
        splits={
            "train": [
                type(shard)(**{**shard.__dict__, "num_examples": shard.num_examples + 1}),
                *manifest.splits["train"][1:],
            ]
        },
    )
    with pytest.raises(Exception, match=r"holds 3 examples but dataset.json lists 4"):
        list(pipeline.examples_from_shards(root, lying, "train").as_numpy_iterator())


def test_a_pass_ends_at_the_epochs_examples_so_pass_k_is_epoch_k(tmp_path):
    root = str(tmp_path / "ds")
    manifest, _ = _write(root, "tfrecord", {"train": (23, 4)})

    def source(first_epoch: int, per_pass: int | None):
        return pipeline.examples_from_shards(
            root, manifest, "train", shuffle_shards=True, seed=2, first_epoch=first_epoch, examples_per_pass=per_pass
        )

    # 2 steps of 4 per epoch: each pass stops after 8 examples of that epoch's order.
    passes = [img for img, _ in _pairs(source(0, 8).repeat(3))]
    assert len(passes) == 24
    for epoch in range(3):
        assert passes[8 * epoch : 8 * epoch + 8] == [img for img, _ in _pairs(source(epoch, None))][:8]
