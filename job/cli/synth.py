"""`synth`: write a synthetic multi-label data set (local path or s3://).

Example:
  python -m job synth --out s3://multilabel/datasets/demo --num-images 2000
"""

from __future__ import annotations

import argparse
import time

from job.data.splits import write_synthetic
from job.data.synthetic import FAMILIES, SceneSpec, parse_pair

HELP = "Generate a synthetic multi-label data set (local path or s3://)."


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--out", required=True, help="Data set root: a local folder or s3://bucket/prefix.")
    s.add_argument(
        "--kind",
        choices=tuple(FAMILIES),
        default="scenes",
        help="scenes: landscapes whose labels (desert mountains sea sunset trees) span the picture; "
        "objects: 1-3 shapes (circle square triangle cross star ring diamond hexagon arrow crescent) "
        "at random places on clutter, like objects in photos. Default scenes.",
    )
    s.add_argument("--num-images", type=int, default=2000, help="Images in all splits together (default 2000).")
    s.add_argument("--image-size", type=int, default=64, help="Image width and height in pixels (default 64).")
    s.add_argument("--format", choices=("tfrecord", "parquet"), default="tfrecord", help="Shard format.")
    s.add_argument("--seed", type=int, default=0, help="Seed: same seed, same bytes.")
    s.add_argument("--num-shards", type=int, default=4, help="Train shards (val/test get proportionally fewer).")
    s.add_argument("--val-fraction", type=float, default=0.15, help="Share of images in val (default 0.15).")
    s.add_argument("--test-fraction", type=float, default=0.15, help="Share of images in test (default 0.15).")
    s.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="A:B:P",
        help="Tie labels A and B: when one is present the other is too with probability P "
        "(1.0 = always together). Repeatable.",
    )
    s.add_argument(
        "--label-probability",
        type=float,
        nargs="+",
        default=None,
        metavar="P",
        help="Probability of each label, in the family's label order (default 0.35 each for scenes, "
        "0.15 each for objects).",
    )
    s.add_argument(
        "--overwrite", action="store_true", help="Replace a data set already at --out (atomically, as `prepare` does)."
    )
    s.add_argument("--quiet", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    spec_kwargs = {"kind": args.kind, "image_size": args.image_size, "pairs": tuple(parse_pair(p) for p in args.pair)}
    if args.label_probability is not None:
        spec_kwargs["label_probability"] = tuple(args.label_probability)
    spec = SceneSpec(**spec_kwargs)
    start = time.perf_counter()
    manifest = write_synthetic(
        args.out,
        spec,
        num_images=args.num_images,
        seed=args.seed,
        fmt=args.format,
        num_shards=args.num_shards,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{s} {manifest.num_examples(s)}" for s in manifest.splits)
    print(
        f"wrote {args.num_images} synthetic images ({sizes}) to {args.out} in {seconds:.1f} s "
        f"({args.num_images / max(seconds, 1e-9):.0f} images/s)"
    )
    return 0
