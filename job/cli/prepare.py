"""Turn your own images into a data set: a folder of images plus a CSV of labels.

The CSV has a header row and the columns `image` (a path relative to --images) and `labels`
(space-separated label names; empty means no label):

    image,labels
    photos/0001.jpg,sea sunset
    photos/0002.png,trees

Every row is checked before anything is written: the image exists and decodes, and (with
--classes) its labels are known. A bad row stops the command with its row number (row 1 is
the header) unless --skip-bad-rows leaves it out.

Examples:
    python -m job prepare --images data/img --labels data/labels.csv --out s3://bucket/datasets/mine
    python -m job prepare --images data/img --labels data/labels.csv --out data/mine \\
        --format parquet --classes sea,sunset,trees --reencode --image-size 256
    python -m job validate s3://bucket/datasets/mine --full-hash
"""

from __future__ import annotations

import argparse
import os
import sys

from job.data.image_limits import DEFAULT_MAX_PIXELS, format_pixels
from job.data.prepare import (
    DEFAULT_JPEG_QUALITY,
    DEFAULT_MIN_TRAIN_SHARDS,
    DEFAULT_TARGET_SHARD_MB,
    PrepareOptions,
    default_threads,
    parse_classes,
    prepare_dataset,
)

HELP = "Turn a folder of images plus a labels CSV into a data set (local path or s3://)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", required=True, metavar="DIR", help="Folder the CSV's image paths are relative to.")
    p.add_argument(
        "--labels",
        required=True,
        metavar="CSV",
        help="CSV with columns `image` (relative path) and `labels` (space-separated names).",
    )
    p.add_argument("--out", required=True, metavar="URI", help="Data set root: a local folder or s3://bucket/prefix.")
    p.add_argument(
        "--format", choices=("tfrecord", "parquet"), default="tfrecord", help="Shard format (default tfrecord)."
    )
    p.add_argument(
        "--classes",
        default=None,
        metavar="A,B,C",
        help="Label names in output order; a row with any other label is a bad row. "
        "Default: the sorted unique names found in the CSV.",
    )
    p.add_argument("--val-fraction", type=float, default=0.15, help="Share of images in val (default 0.15).")
    p.add_argument("--test-fraction", type=float, default=0.15, help="Share of images in test (default 0.15).")
    p.add_argument("--seed", type=int, default=0, help="Split seed: the same seed and CSV give the same shards.")
    shards = p.add_mutually_exclusive_group()
    shards.add_argument(
        "--num-shards", type=int, default=None, metavar="N", help="Train shards (val/test get proportionally fewer)."
    )
    shards.add_argument(
        "--target-shard-mb",
        type=float,
        default=None,
        metavar="MB",
        help="Approximate shard size in MB, estimated from the image file sizes. Default: "
        f"{DEFAULT_TARGET_SHARD_MB:g} MB, with at least {DEFAULT_MIN_TRAIN_SHARDS} train shards.",
    )
    p.add_argument(
        "--reencode",
        action="store_true",
        help="Decode every image and save it as JPEG (default: copy the bytes unchanged; "
        "JPEG, PNG, GIF and BMP pass through).",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="With --reencode: resize so the shorter side is PX pixels (aspect kept, never enlarged).",
    )
    p.add_argument(
        "--jpeg-quality",
        type=int,
        default=None,
        metavar="Q",
        help=f"With --reencode: JPEG quality 1..95 (default {DEFAULT_JPEG_QUALITY}).",
    )
    p.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="Leave out rows whose image is missing or does not decode, or whose labels are unknown, "
        "and report how many; default: stop and list them.",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="Replace a data set already at --out. The switch is atomic: readers see the old set until "
        "the new one is complete, and a kill leaves one of the two whole.",
    )
    p.add_argument(
        "--allow-outside",
        action="store_true",
        help="Accept CSV rows whose file resolves outside --images (e.g. an images folder of symlinks "
        "into a shared store); default: such rows are bad rows.",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        metavar="N",
        help=f"Threads that read, check and re-encode images (default {default_threads()}).",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="An image above N pixels (width x height, read from its header without decoding it) is a bad "
        f"row (default {DEFAULT_MAX_PIXELS}, {format_pixels(DEFAULT_MAX_PIXELS)}; training's data.max_pixels "
        "skips larger ones too).",
    )
    p.add_argument("--quiet", action="store_true", help="No progress bars.")


def run(args: argparse.Namespace) -> int:
    options = PrepareOptions(
        fmt=args.format,
        classes=parse_classes(args.classes) if args.classes is not None else None,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        num_shards=args.num_shards,
        target_shard_mb=args.target_shard_mb,
        reencode=args.reencode,
        image_size=args.image_size,
        jpeg_quality=args.jpeg_quality,
        skip_bad_rows=args.skip_bad_rows,
        allow_outside=args.allow_outside,
        overwrite=args.overwrite,
        threads=args.threads,
        max_pixels=args.max_pixels,
    )
    result = prepare_dataset(args.images, args.labels, args.out, options, progress=not args.quiet)
    manifest = result.manifest
    name = os.path.basename(args.labels)
    for bad in result.skipped[:20]:
        print(f"skipped {bad.describe(name)}", file=sys.stderr)
    if len(result.skipped) > 20:
        print(f"skipped {len(result.skipped) - 20} more row(s)", file=sys.stderr)
    sizes = ", ".join(f"{s} {manifest.num_examples(s)}" for s in manifest.splits)
    names = manifest.class_names
    shown = ", ".join(names[:10]) + (f", ... ({len(names) - 10} more)" if len(names) > 10 else "")
    skipped = (
        f"; skipped {len(result.skipped)} bad row(s) of {result.rows} (row 1 is the header)" if result.skipped else ""
    )
    print(
        f"wrote {result.num_images} images ({sizes}) with {len(manifest.class_names)} classes "
        f"({shown}) to {args.out} in {result.seconds:.1f} s "
        f"({result.num_images / max(result.seconds, 1e-9):.0f} images/s){skipped}"
    )
    print(f"check it with: python -m job validate {args.out} --full-hash")
    return 0
