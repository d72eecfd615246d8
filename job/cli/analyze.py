"""`analyze`: label frequencies, co-occurrence, P(j|i) and phi; flags inseparable label pairs.

Example:
  python -m job analyze --data s3://multilabel/datasets/demo
"""

from __future__ import annotations

import argparse

import numpy as np

from job import storage
from job.data import shards
from job.data.labels import format_label_analysis
from job.errors import UserError

HELP = "Label frequencies, co-occurrence, P(j|i), phi; flags inseparable pairs."


def add_arguments(a: argparse.ArgumentParser) -> None:
    a.add_argument("--data", required=True, help="Data set root (local path or s3://).")
    a.add_argument("--splits", default="train,val,test", help="Splits to include (default all).")
    a.add_argument("--threshold", type=float, default=0.95, help="Flag pairs whose P(j|i) and P(i|j) reach this.")


def run(args: argparse.Namespace) -> int:
    storage.check_access(args.data)  # a stalled or wrong endpoint fails here, in seconds
    manifest = shards.load_manifest(args.data)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in manifest.splits]
    if unknown or not splits:
        raise UserError(
            f"--splits {args.splits!r}: {args.data} has no split {', '.join(unknown) or '(none given)'}. "
            f"Its splits are {', '.join(manifest.splits)}."
        )
    y = np.concatenate([shards.read_labels(args.data, manifest, s) for s in splits])
    print(f"{args.data}: {len(y)} images from split(s) {', '.join(splits)}")
    print(format_label_analysis(y, manifest.class_names, threshold=args.threshold))
    return 0
