"""Building data sets: the deterministic train/val/test split and writing all three splits.

Both `synth` (generated scenes) and `prepare` (the user's images and CSV) go through
`write_dataset`, so the layout and manifest are the same whichever made them.

Publishing is atomic from a reader's point of view, on local disk and on S3 alike: the new
shards get names of their own (a new generation), dataset.json is replaced last in one
atomic write, and only then are older generations deleted. A reader, or a kill at any
point, sees the old complete set or the new one. The previous generation is kept until the
next publish, so a run that loaded the old dataset.json just before can still read its shards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import numpy as np

from job import storage
from job.config import DEFAULT_LEASE_TIMEOUT_SECONDS
from job.data import shards
from job.data.synthetic import generate
from job.errors import UserError
from job.progress import Progress
from job.storage.lease import RunLease

log = logging.getLogger(__name__)


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
    overwrite: bool = False,
) -> shards.Manifest:
    """Write every split's shards as a new generation, publish dataset.json, drop old generations.

    Args:
        root: data set root URI.
        class_names: label order.
        fmt: "tfrecord" or "parquet".
        splits: example indices per split (from `assign_splits`).
        make_example: builds example i; called once per index, in order.
        num_train_shards: shard count of the train split.
        source: how the set was made, saved in the manifest.
        progress: show a progress bar.
        overwrite: replace a data set already at `root` (else that is a UserError).
    """
    # One writer per data set root at a time (the same lease a run takes on its folder):
    # a second `prepare` onto the same --out is refused instead of interleaving generations.
    with RunLease(root, DEFAULT_LEASE_TIMEOUT_SECONDS, chain=""):
        previous = check_target(root, overwrite)
        generation = shards.new_generation()
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
        try:
            for name in shards.SPLITS:
                if sizes.get(name, 0) == 0:
                    written[name] = []
                    continue
                written[name] = shards.write_split(
                    root, name, stream(splits[name]), sizes[name], counts[name], fmt, len(class_names), generation
                )
        except BaseException:
            # Nothing was published; take back this generation's shards (a kill leaves them to the next publish).
            with contextlib.suppress(Exception):
                remove_stale_shards(root, only_generation=generation)
            raise
        bar.close()
        manifest = shards.Manifest(
            format=fmt,
            class_names=list(class_names),
            splits=written,
            source=source,
            image_encoding=shards.describe_encodings(encodings),
            generation=generation,
        )
        shards.write_manifest(root, manifest)
        remove_stale_shards(root, keep=manifest.shard_paths() | (previous.shard_paths() if previous else set()))
        return manifest


def check_target(root: str, overwrite: bool) -> shards.Manifest | None:
    """The data set already at `root` (None if there is none); refuses to replace it without `overwrite`.

    Call it before any expensive work, so a forgotten --overwrite costs nothing.
    """
    if not storage.exists(shards.manifest_uri(root)):
        return None
    try:
        previous = shards.load_manifest(root)
    except shards.DatasetError:
        previous = None  # a damaged manifest: nothing worth keeping readable
    if not overwrite:
        what = (
            f"{sum(previous.num_examples(s) for s in previous.splits)} examples"
            if previous
            else "a damaged dataset.json"
        )
        raise UserError(
            f"{root} already holds a data set ({what}). Pass --overwrite to replace it (readers keep "
            "the old set until the new one is complete), or choose another --out."
        )
    return previous


def remove_stale_shards(root: str, keep: set[str] = frozenset(), only_generation: str | None = None) -> None:
    """Delete shard files under ROOT/SPLIT/ that are not in `keep`, and leftovers of killed writes;
    with `only_generation`, only that generation's shards.

    Only names this product writes are touched, so other files in the folder are safe.
    """
    removed = 0
    for split in shards.SPLITS:
        folder = storage.join(root, split)
        removed += storage.delete_partial_files(folder)
        for uri in storage.list_files(folder):
            name = storage.basename(uri)
            if storage.join(folder, name) != uri:
                continue  # in a subfolder: not ours
            if only_generation is not None and f".{only_generation}." not in name:
                continue
            if shards.SHARD_NAME_PATTERN.match(name) and f"{split}/{name}" not in keep:
                storage.delete(uri)
                removed += 1
    if removed:
        log.info("removed %d unpublished or superseded shard file(s) under %s", removed, root)


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
    overwrite: bool = False,
) -> shards.Manifest:
    """Generate `num_images` synthetic scenes and write them as a data set at `out`."""

    if num_images < 3:
        raise UserError(f"--num-images must be at least 3 (one per split), got {num_images}.")
    storage.check_access(out, write=True)
    check_target(out, overwrite)
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
    return write_dataset(
        out, list(spec.class_names), fmt, splits, make_example, num_shards, source, progress, overwrite
    )
