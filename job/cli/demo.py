"""`demo`: the whole product on one machine, with no setup.

Embedded S3 server (unless S3_ENDPOINT_URL points at MinIO or another server) -> synthetic
shards on s3:// -> distributed training on a local Ray with 2 workers -> checkpoints on
s3:// -> evaluation -> a local copy of the outputs.

Example:
  python -m job demo
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from job import storage
from job.config import find_preset, load_config
from job.data.splits import write_synthetic
from job.data.synthetic import SceneSpec
from job.storage.embedded import use_embedded_s3

log = logging.getLogger(__name__)

HELP = "Embedded S3 -> synthetic shards -> distributed training -> evaluation."
DEMO_PRESET = "demo"


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("--bucket", default="multilabel", help="Bucket for data and runs (default: multilabel).")
    d.add_argument("--num-images", type=int, default=2000, help="Synthetic images to generate (default 2000).")
    d.add_argument("--workers", type=int, default=None, help="Ray Train workers (default: configs/demo.yaml, 2).")
    d.add_argument("--out", default="runs/demo", help="Local folder that receives a copy of the outputs.")
    d.add_argument("--local", action="store_true", help="Train in this process instead of on Ray.")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override, repeatable.")


def run(args: argparse.Namespace) -> int:
    run_demo(
        bucket=args.bucket,
        num_images=args.num_images,
        workers=args.workers,
        out_dir=args.out,
        local=args.local,
        overrides=args.set,
    )
    return 0


def run_demo(
    bucket: str = "multilabel",
    num_images: int = 2000,
    workers: int | None = None,
    out_dir: str = "runs/demo",
    local: bool = False,
    overrides: list[str] | None = None,
) -> dict:
    """Run the demo end to end and copy its outputs to `out_dir`. Returns metrics.json's content."""
    overrides = list(overrides or [])
    if workers is not None:
        overrides.append(f"scaling.num_workers={workers}")
    # The CPU-sized preset, never the built-in defaults (those are sized for GPUs): a missing
    # preset is an error that says where it was looked for.
    cfg = load_config(DEMO_PRESET, overrides)
    log.info("demo config: %s", find_preset(DEMO_PRESET))
    start = time.perf_counter()
    server = None
    if not os.environ.get("S3_ENDPOINT_URL"):
        server = use_embedded_s3(bucket)
        log.info(
            "embedded S3 server at %s (bucket %s; data lives as long as this command)", server.endpoint_url, bucket
        )
    else:
        log.info("using the S3 endpoint in S3_ENDPOINT_URL: %s", os.environ["S3_ENDPOINT_URL"])
        storage.ensure_bucket(f"s3://{bucket}")
    try:
        data_uri = f"s3://{bucket}/datasets/demo-{num_images}-{cfg.data.image_size}px"
        run_uri = f"s3://{bucket}/runs/demo"
        if not storage.exists(storage.join(data_uri, "dataset.json")):
            log.info("generating %d synthetic images at %d px into %s", num_images, cfg.data.image_size, data_uri)
            write_synthetic(
                data_uri,
                SceneSpec(image_size=cfg.data.image_size),
                num_images=num_images,
                seed=cfg.training.seed,
                num_shards=max(4, cfg.scaling.num_workers),
                progress=False,
            )
        if local:
            # Imported here, not at the top: it loads TensorFlow, and `--help` must stay instant.
            from job.launch.local import run_local

            metrics = run_local(cfg, data_uri, run_uri)
        else:
            # Imported here, not at the top: it loads Ray, and `--help` must stay instant.
            from job.cluster.driver import run_distributed

            metrics = run_distributed(cfg, data_uri, run_uri)
        _copy_outputs(run_uri, out_dir)
    finally:
        if server is not None:
            server.stop()
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    test = metrics.get("test", {})
    log.info(
        "demo finished in %dm%02ds: test macro-F1 %.4f at 0.5, %.4f with tuned thresholds. The whole run "
        "(metrics.json, report.md, per_label.csv, *.png plots, history.json, config.json, thresholds.json, "
        "checkpoints, tensorboard/) is copied to %s",
        minutes,
        seconds,
        test.get("macro_f1", float("nan")),
        test.get("tuned", {}).get("macro_f1", float("nan")),
        os.path.abspath(out_dir),
    )
    return metrics


def _copy_outputs(run_uri: str, out_dir: str) -> None:
    """The embedded server keeps data in memory: copy the run somewhere that outlives it."""
    os.makedirs(out_dir, exist_ok=True)
    storage.download_dir(run_uri, out_dir)
