"""`train`: train on Ray Train (or --local in this process), then evaluate the best checkpoint.

Example:
  python -m job train --config demo --data s3://multilabel/datasets/demo --output s3://multilabel/runs/demo
"""

from __future__ import annotations

import argparse

from job.config import load_config

HELP = "Train on Ray Train (or --local in this process), then evaluate."


def add_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--config", required=True, help="YAML preset file or preset name, e.g. demo.")
    t.add_argument("--data", required=True, help="Data set root (local path or s3://).")
    t.add_argument(
        "--output",
        required=True,
        help="The run: a local folder or s3://bucket/runs/NAME. Re-running the same command resumes it.",
    )
    t.add_argument(
        "--run-name",
        default=None,
        help="Name shown in metrics and logs (default: the last part of --output). The run's files "
        "always go to --output itself.",
    )
    t.add_argument("--local", action="store_true", help="Train in this process, without Ray.")
    t.add_argument("--dry-run", action="store_true", help="Print the plan (workers, batches, steps, paths) and stop.")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config override like training.epochs=5; repeatable. Unknown keys are errors.",
    )


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    if args.local:
        # Imported here, not at the top: it loads TensorFlow, and `--help` must stay instant.
        from job.launch.local import run_local

        run_local(cfg, args.data, args.output, run_name=args.run_name, dry_run=args.dry_run)
    else:
        # Imported here, not at the top: it loads Ray, and `--help` must stay instant.
        from job.cluster.driver import run_distributed

        run_distributed(cfg, args.data, args.output, run_name=args.run_name, dry_run=args.dry_run)
    return 0
