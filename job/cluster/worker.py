"""The worker side of a Ray run: the function every Ray Train worker runs.

A thin shim: read rank and world size from Ray Train, wire this worker's Ray Data shard into
tf.data, and call `training.loop.train_worker` with a reporter that hands metrics and rank
0's checkpoint to `ray.train.report`.
"""

from __future__ import annotations

import logging
from typing import Any

import ray.train
from ray.data import DataContext

from job.config import config_from_dict
from job.console import is_verbose, setup_worker_logging
from job.storage import scratch
from job.storage.run_store import RunStore, checkpoint_dir_name
from job.telemetry import WorkerTelemetry, worker_port
from job.training import checkpoints

log = logging.getLogger(__name__)

# Rows per Ray Data batch handed to tf.data: large enough to amortise the hand-over,
# small enough to keep a worker's memory bounded.
HANDOVER_BATCH_ROWS = 256


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-execution notices off, unless --verbose."""
    ctx = DataContext.get_current()
    if not is_verbose():
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False


class RayReporter:
    """Sends per-epoch metrics (every rank) and rank 0's checkpoint folder to Ray Train."""

    def report(self, metrics: dict, checkpoint_dir: str | None, epoch: int) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(epoch))
        if checkpoint_dir:
            checkpoints.remove_local(checkpoint_dir)


def worker_entry(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: unpack, wire Ray Data into tf.data, train."""
    # Imported here, in the worker: Ray Train's controller unpickles this function, and it
    # must not load TensorFlow for nothing.
    from job.data import pipeline
    from job.training import loop

    ctx = ray.train.get_context()
    info = loop.WorkerInfo(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank())
    setup_worker_logging(info.rank)
    quiet_ray_data()
    cfg = config_from_dict(config["config"])
    plan = loop.WorkerPlan(**config["plan"])
    num_classes = len(plan.class_names)
    if info.rank == 0:
        RunStore(plan.run_uri).record_attempt()

    sources = []

    def from_shard(name: str):
        shard = ray.train.get_dataset_shard(name)
        source = pipeline.ReleasableBatches(
            lambda: shard.iter_batches(batch_size=HANDOVER_BATCH_ROWS, batch_format="numpy", prefetch_batches=2)
        )
        sources.append(source)
        return lambda: pipeline.examples_from_batches(source, num_classes)

    def release_inputs() -> None:
        for source in sources:
            source.release()

    telemetry = WorkerTelemetry(
        plan.run_name,
        info.rank,
        worker_port(cfg.telemetry.worker_port_base, info.local_rank),
        enabled=cfg.telemetry.enabled,
        bind_address=cfg.telemetry.bind_address,
    )
    try:
        loop.train_worker(
            cfg,
            plan,
            info,
            from_shard("train"),
            from_shard("val"),
            RayReporter(),
            telemetry,
            release_inputs=release_inputs,
        )
    finally:
        telemetry.close()
        # Ray may end this process without running atexit handlers.
        scratch.cleanup()
