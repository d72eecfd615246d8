"""Command line: python -m job {demo,synth,prepare,validate,train,evaluate,analyze,export,predict}.

Every command exits 0 on success and 1 on a user error, printing what is wrong and what to
do, without a traceback. `--verbose` turns Ray's and TensorFlow's own logging back up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from job.errors import UserError

log = logging.getLogger("job")


# ---------------------------------------------------------------------------- logging


def setup_logging(verbose: bool) -> None:
    """One readable line per event; framework noise down unless --verbose."""
    if not verbose:
        # Must be set before TensorFlow is imported anywhere in this process (and its children).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # A local Ray runs without a dashboard, so Ray Train's placement-group cleaner cannot
        # reach the State API and warns about it once a second (~100 lines per demo, burying
        # the epoch lines). The driver drops those lines; they stay in Ray's log files.
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", "Failed to query Ray Train Controller actor state")
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    os.environ.setdefault("JOB_VERBOSE", "1" if verbose else "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout,
                        force=True)
    for noisy in ("absl", "tensorflow", "ray", "botocore", "boto3", "urllib3", "werkzeug", "moto", "filelock",
                  "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


# ---------------------------------------------------------------------------- commands


def cmd_synth(args: argparse.Namespace) -> int:
    from job.datasets import write_synthetic
    from job.synthetic import SceneSpec, parse_pair

    spec_kwargs = {"image_size": args.image_size, "pairs": tuple(parse_pair(p) for p in args.pair)}
    if args.label_probability is not None:
        spec_kwargs["label_probability"] = tuple(args.label_probability)
    spec = SceneSpec(**spec_kwargs)
    start = time.perf_counter()
    manifest = write_synthetic(args.out, spec, num_images=args.num_images, seed=args.seed, fmt=args.format,
                               num_shards=args.num_shards, val_fraction=args.val_fraction,
                               test_fraction=args.test_fraction, progress=not args.quiet)
    seconds = time.perf_counter() - start
    sizes = ", ".join(f"{s} {manifest.num_examples(s)}" for s in manifest.splits)
    print(f"wrote {args.num_images} synthetic images ({sizes}) to {args.out} in {seconds:.1f} s "
          f"({args.num_images / max(seconds, 1e-9):.0f} images/s)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from job import storage
    from job.progress import Progress
    from job.validate import validate_dataset

    storage.check_access(args.uri)
    bar = Progress("validate", unit="shards", enabled=not args.quiet)
    report = validate_dataset(args.uri, full_hash=args.full_hash, workers=args.workers,
                              sample_records=args.sample_records, progress=bar.update)
    bar.close()
    print(report.render())
    return 0 if report.ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    from job.config import load_config

    cfg = load_config(args.config, args.set)
    if args.local:
        from job.runs import run_local

        run_local(cfg, args.data, args.output, run_name=args.run_name, dry_run=args.dry_run)
    else:
        from job.ray_driver import run_distributed

        run_distributed(cfg, args.data, args.output, run_name=args.run_name, dry_run=args.dry_run)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from job.evaluate import evaluate_run

    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    evaluate_run(args.run.rstrip("/"), data_uri=args.data, splits=splits, output_uri=args.output)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from job import records
    from job.labels import format_label_analysis

    manifest = records.load_manifest(args.data)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    import numpy as np

    y = np.concatenate([records.read_labels(args.data, manifest, s) for s in splits if s in manifest.splits])
    print(f"{args.data}: {len(y)} images from split(s) {', '.join(splits)}")
    print(format_label_analysis(y, manifest.class_names, threshold=args.threshold))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from job.demo import run_demo

    run_demo(bucket=args.bucket, num_images=args.num_images, workers=args.workers, out_dir=args.out,
             local=args.local, overrides=args.set)
    return 0


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--verbose", action="store_true", help="Show Ray's and TensorFlow's own logs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="Embedded S3 -> synthetic shards -> distributed training -> evaluation.")
    d.add_argument("--bucket", default="multilabel", help="Bucket for data and runs (default: multilabel).")
    d.add_argument("--num-images", type=int, default=2000, help="Synthetic images to generate (default 2000).")
    d.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: configs/demo.yaml, 2).")
    d.add_argument("--out", default="runs/demo", help="Local folder that receives a copy of the outputs.")
    d.add_argument("--local", action="store_true", help="Train in this process instead of on Ray.")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override, repeatable.")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="Generate a synthetic multi-label data set (local path or s3://).")
    s.add_argument("--out", required=True, help="Data set root: a local folder or s3://bucket/prefix.")
    s.add_argument("--num-images", type=int, default=2000, help="Images in all splits together (default 2000).")
    s.add_argument("--image-size", type=int, default=64, help="Image width and height in pixels (default 64).")
    s.add_argument("--format", choices=("tfrecord", "parquet"), default="tfrecord", help="Shard format.")
    s.add_argument("--seed", type=int, default=0, help="Seed: same seed, same bytes.")
    s.add_argument("--num-shards", type=int, default=4, help="Train shards (val/test get proportionally fewer).")
    s.add_argument("--val-fraction", type=float, default=0.15, help="Share of images in val (default 0.15).")
    s.add_argument("--test-fraction", type=float, default=0.15, help="Share of images in test (default 0.15).")
    s.add_argument("--pair", action="append", default=[], metavar="A:B:P",
                   help="Tie labels A and B: when one is present the other is too with probability P "
                        "(1.0 = always together). Repeatable.")
    s.add_argument("--label-probability", type=float, nargs="+", default=None, metavar="P",
                   help="Probability of each label (desert mountains sea sunset trees), default 0.35 each.")
    s.add_argument("--quiet", action="store_true", help="No progress bar.")
    s.set_defaults(func=cmd_synth)

    v = sub.add_parser("validate", help="Pre-flight check of a data set; exit 0 if usable, 1 if not.")
    v.add_argument("uri", help="Data set root (local path or s3://).")
    v.add_argument("--full-hash", action="store_true", help="Read every shard whole: sha256 and every record.")
    v.add_argument("--workers", type=int, default=1, help="Workers the job will use (warns on too few shards).")
    v.add_argument("--sample-records", type=int, default=8, help="Images decoded per shard (default 8).")
    v.add_argument("--quiet", action="store_true", help="No progress bar.")
    v.set_defaults(func=cmd_validate)

    t = sub.add_parser("train", help="Train on Ray Train (or --local in this process), then evaluate.")
    t.add_argument("--config", required=True, help="YAML preset, e.g. configs/demo.yaml.")
    t.add_argument("--data", required=True, help="Data set root (local path or s3://).")
    t.add_argument("--output", required=True,
                   help="The run: a local folder or s3://bucket/runs/NAME. Re-running the same command resumes it.")
    t.add_argument("--run-name", default=None, help="Run name (default: the last part of --output).")
    t.add_argument("--local", action="store_true", help="Train in this process, without Ray.")
    t.add_argument("--dry-run", action="store_true", help="Print the plan (workers, batches, steps, paths) and stop.")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Config override like training.epochs=5; repeatable. Unknown keys are errors.")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="Evaluate a run's best checkpoint; write metrics.json and thresholds.")
    e.add_argument("--run", required=True, help="The run (train's --output).")
    e.add_argument("--data", default=None, help="Data set (default: the one the run was trained on).")
    e.add_argument("--output", default=None, help="Where to write the results (default: the run).")
    e.add_argument("--splits", default="train,val,test", help="Comma-separated splits (default train,val,test).")
    e.set_defaults(func=cmd_evaluate)

    a = sub.add_parser("analyze", help="Label frequencies, co-occurrence, P(j|i), phi; flags inseparable pairs.")
    a.add_argument("--data", required=True, help="Data set root (local path or s3://).")
    a.add_argument("--splits", default="train,val,test", help="Splits to include (default all).")
    a.add_argument("--threshold", type=float, default=0.95, help="Flag pairs whose P(j|i) and P(i|j) reach this.")
    a.set_defaults(func=cmd_analyze)

    for extra in ("prepare", "export", "predict"):
        _add_optional_command(sub, extra)
    return p


def _add_optional_command(sub, name: str) -> None:
    """Commands whose module provides `add_arguments(parser)` and `main(args) -> int`."""
    import importlib

    try:
        module = importlib.import_module(f"job.{name}_cli")
    except ModuleNotFoundError as exc:
        if exc.name != f"job.{name}_cli":
            raise
        return
    parser = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(func=module.main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
