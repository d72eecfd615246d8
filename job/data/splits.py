"""Building data sets: the deterministic train/val/test split and writing all three splits.

Both `synth` (generated scenes) and `prepare` (the user's images and CSV) go through
`write_dataset`, so the layout and manifest are the same whichever made them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from job import storage
from job.data import shards
from job.data.synthetic import generate
from job.errors import UserError
from job.progress import Progress


def assign_splits(num_examples: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of each split: a seeded permutation cut by fraction; each index list sorted.

    Raises:
        UserError when the fractions are out of range or leave a split empty.
    """
    for name, f in (("val", val_fraction), ("test", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise UserError(f"--{name}-fraction must be in [0, 1), got {f}.")
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f"--val-fraction + --test-fraction must be below 1, got {val_fraction + test_fraction}.")
    order = np.random.default_rng(seed).permutation(num_examples)
    n_val = int(round(num_examples * val_fraction))
    n_test = int(round(num_examples * test_fraction))
    splits = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    for name in ("train", "val"):
        if len(splits[name]) == 0:
            raise UserError(
                f"{num_examples} examples leave the {name!r} split empty; add examples or raise "
                f"--{'val-fraction' if name == 'val' else 'test-fraction'}."
            )
    return {name: np.sort(idx) for name, idx in splits.items()}


def shard_counts(num_train_shards: int, sizes: dict[str, int]) -> dict[str, int]:
    """Shards per split: `num_train_shards` for train, proportionally fewer (at least 1) for the others."""
    if num_train_shards < 1:
        raise UserError(f"--num-shards must be at least 1, got {num_train_shards}.")
    per_shard = max(1, sizes["train"] // num_train_shards)
    return {name: (num_train_shards if name == "train" else max(1, -(-n // per_shard))) for name, n in sizes.items()}


def write_dataset(
    root: str,
    class_names: list[str],
    fmt: str,
    splits: dict[str, np.ndarray],
    make_example: Callable[[int], shards.Example],
    num_train_shards: int,
    source: dict,
    progress: bool = True,
) -> shards.Manifest:
    """Write every split's shards, then dataset.json (last, so readers never see half a set).

    Args:
        root: data set root URI.
        class_names: label order.
        fmt: "tfrecord" or "parquet".
        splits: example indices per split (from `assign_splits`).
        make_example: builds example i; called once per index, in order.
        num_train_shards: shard count of the train split.
        source: how the set was made, saved in the manifest.
        progress: show a progress bar.
    """
    sizes = {name: len(idx) for name, idx in splits.items()}
    counts = shard_counts(num_train_shards, sizes)
    total = sum(sizes.values())
    bar = Progress("writing", unit="images", enabled=progress)
    done = 0
    encodings: set[str] = set()  # recorded in dataset.json: pass-through keeps PNGs as PNGs

    def stream(indices):
        nonlocal done
        for i in indices:
            example = make_example(int(i))
            encodings.add(shards.sniff_encoding(example.image))
            done += 1
            if done % 50 == 0 or done == total:
                bar.update(done, total)
            yield example

    written = {}
    for name in shards.SPLITS:
        if sizes.get(name, 0) == 0:
            written[name] = []
            continue
        written[name] = shards.write_split(
            root, name, stream(splits[name]), sizes[name], counts[name], fmt, len(class_names)
        )
    bar.close()
    manifest = shards.Manifest(
        format=fmt,
        class_names=list(class_names),
        splits=written,
        source=source,
        image_encoding=shards.describe_encodings(encodings),
    )
    shards.write_manifest(root, manifest)
    return manifest


def write_synthetic(
    out: str,
    spec,
    *,
    num_images: int,
    seed: int,
    fmt: str = "tfrecord",
    num_shards: int = 4,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = True,
) -> shards.Manifest:
    """Generate `num_images` synthetic scenes and write them as a data set at `out`."""

    if num_images < 3:
        raise UserError(f"--num-images must be at least 3 (one per split), got {num_images}.")
    storage.check_access(out, write=True)
    splits = assign_splits(num_images, val_fraction, test_fraction, seed)

    def make_example(i: int) -> shards.Example:
        image_id, jpeg, labels = next(generate(1, spec, seed, start=i))
        return shards.Example(id=image_id, image=jpeg, labels=labels)

    source = {
        "synthetic": {
            "kind": spec.kind,
            "num_images": num_images,
            "seed": seed,
            "image_size": spec.image_size,
            "label_probability": list(spec.label_probability),
            "pairs": [list(p) for p in spec.pairs],
        }
    }
    return write_dataset(out, list(spec.class_names), fmt, splits, make_example, num_shards, source, progress)
