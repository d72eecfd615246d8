"""Which examples each rank reads in an epoch, for the direct ingest path (`data.ingest: direct`).

Pure Python and NumPy (no TensorFlow, no Ray), so the rule is easy to test and to reason about:

- The split's shard files are put in an order drawn from (seed, epoch): a new order every
  epoch, the same on every rank without any communication.
- The examples of the files, in that order, form one stream; rank r reads the r-th of
  `world_size` equal slices of it, `total // world_size` examples each. A rank's slice is a
  list of segments (file, first example, end), whole files except at the two ends, so a
  file is read by at most two ranks and most reads are whole-file GETs.
- Every rank therefore gets exactly the same number of examples (the manifest's counts make
  this exact; the check against the file's own record count happens when it is read), and
  the `total % world_size` left over fall at a different place every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Segment:
    """Examples [start, stop) of one shard file (indices as in dataset.json's count)."""

    uri: str
    start: int
    stop: int

    @property
    def num_examples(self) -> int:
        return self.stop - self.start


def file_order(num_files: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The files' order in one epoch: a permutation drawn from (seed, epoch), or as listed."""
    if not shuffle:
        return list(range(num_files))
    return np.random.default_rng([abs(int(seed)), int(epoch)]).permutation(num_files).tolist()


def rank_segments(
    files: Sequence[tuple[str, int]],
    rank: int,
    world_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
) -> list[Segment]:
    """The segments rank `rank` of `world_size` reads in `epoch`.

    Args:
        files: (uri, number of examples) of every shard of the split, as dataset.json lists them.
        rank, world_size: this worker's place in the group.
        seed, epoch: draw the file order (ignored when `shuffle` is False).
        shuffle: False keeps the listed order (evaluation, the val split).
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a group of {world_size}")
    total = sum(count for _, count in files)
    per_rank = total // world_size
    begin, end = rank * per_rank, (rank + 1) * per_rank
    segments: list[Segment] = []
    offset = 0  # the stream position of the current file's first example
    for index in file_order(len(files), seed, epoch, shuffle):
        uri, count = files[index]
        lo, hi = max(begin, offset), min(end, offset + count)
        if lo < hi:
            segments.append(Segment(uri, lo - offset, hi - offset))
        offset += count
        if offset >= end:
            break
    return segments
