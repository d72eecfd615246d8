"""`evaluate`: evaluate a run's best checkpoint; write metrics.json, thresholds and the report.

Example:
  python -m job evaluate --run s3://multilabel/runs/demo
"""

from __future__ import annotations

import argparse
import contextlib

from job import storage
from job.config import DEFAULT_LEASE_TIMEOUT_SECONDS
from job.storage.lease import RunLease

HELP = "Evaluate a run's best checkpoint; write metrics.json and thresholds."


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--run", required=True, help="The run (train's --output).")
    e.add_argument("--data", default=None, help="Data set (default: the one the run was trained on).")
    e.add_argument("--output", default=None, help="Where to write the results (default: the run).")
    e.add_argument("--splits", default="train,val,test", help="Comma-separated splits (default train,val,test).")


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: it loads TensorFlow, and `--help` must stay instant.
    from job.evaluation.evaluate import evaluate_run

    # Before TensorFlow loads: a stalled or wrong endpoint fails here, in seconds.
    storage.check_access(args.run)
    if args.data:
        storage.check_access(args.data)
    if args.output:
        storage.check_access(args.output, write=True)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    run_uri = args.run.rstrip("/")
    # Results written into the run folder: take its lease, so a `train` still running there
    # (which evaluates at its end) is not overwritten, and is named instead.
    writes_into_run = args.output is None or args.output.rstrip("/") == run_uri
    # chain="": never a member of the training run's attempt chain, whatever the environment says.
    lease = RunLease(run_uri, DEFAULT_LEASE_TIMEOUT_SECONDS, chain="") if writes_into_run else contextlib.nullcontext()
    with lease:
        evaluate_run(run_uri, data_uri=args.data, splits=splits, output_uri=args.output)
    return 0
