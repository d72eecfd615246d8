"""`validate`: the pre-flight check of a data set; exit 0 if usable, 1 if not.

Example:
  python -m job validate s3://multilabel/datasets/demo --full-hash
"""

from __future__ import annotations

import argparse

from job import storage
from job.data.validate import validate_dataset
from job.progress import Progress

HELP = "Pre-flight check of a data set; exit 0 if usable, 1 if not."


def add_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("uri", help="Data set root (local path or s3://).")
    v.add_argument("--full-hash", action="store_true", help="Read every shard whole: sha256 and every record.")
    v.add_argument("--workers", type=int, default=1, help="Workers the job will use (warns on too few shards).")
    v.add_argument("--sample-records", type=int, default=8, help="Images decoded per shard (default 8).")
    v.add_argument("--quiet", action="store_true", help="No progress bar.")


def run(args: argparse.Namespace) -> int:
    storage.check_access(args.uri)
    bar = Progress("validate", unit="shards", enabled=not args.quiet)
    report = validate_dataset(
        args.uri,
        full_hash=args.full_hash,
        workers=args.workers,
        sample_records=args.sample_records,
        progress=bar.update,
    )
    bar.close()
    print(report.render())
    return 0 if report.ok else 1
