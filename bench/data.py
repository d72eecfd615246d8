"""The benchmark's data: one synthetic set written twice, as TFRecord and as Parquet shards.

Both formats hold the same images (same seed), so format comparisons see the same bytes.
Sets are kept in the work folder (never in the repository) and reused when they match.
"""

from __future__ import annotations

import os

from job.data import shards

FORMATS = ("tfrecord", "parquet")


def dataset_dir(workdir: str, fmt: str) -> str:
    return os.path.join(workdir, f"data-{fmt}")


def ensure_datasets(workdir: str, num_images: int, image_size: int, seed: int = 0) -> dict[str, str]:
    """{format: data set root}, writing any set that is missing or was made differently."""
    from job.data.splits import write_synthetic
    from job.data.synthetic import SceneSpec

    roots = {}
    for fmt in FORMATS:
        root = dataset_dir(workdir, fmt)
        if not _matches(root, num_images, image_size, seed):
            write_synthetic(
                root,
                SceneSpec(image_size=image_size),
                num_images=num_images,
                seed=seed,
                fmt=fmt,
                num_shards=4,
                progress=False,
                overwrite=True,  # a set made with other parameters (a --quick run) is replaced
            )
        roots[fmt] = root
    return roots


def _matches(root: str, num_images: int, image_size: int, seed: int) -> bool:
    try:
        synth = shards.load_manifest(root).source.get("synthetic", {})
    except Exception:
        return False
    return synth.get("num_images") == num_images and synth.get("image_size") == image_size and synth.get("seed") == seed
