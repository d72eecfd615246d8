"""The worker side of a Ray run: the function every Ray Train worker runs.

A thin shim: read rank and world size from Ray Train, wire this worker's input into tf.data
(its own part of the shard files, or its Ray Data shard: `data.ingest`), and call
`training.loop.train_worker` with a reporter that hands metrics and rank 0's checkpoint to
`ray.train.report`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray.train
import ray.train.collective

from job.cluster.runtime import quiet_ray_data
from job.config import config_from_dict
from job.console import setup_worker_logging
from job.storage import scratch
from job.storage.run_store import RunStore
from job.telemetry import WorkerTelemetry, worker_port
from job.training import checkpoints

log = logging.getLogger(__name__)

# Rows per Ray Data batch handed to tf.data: large enough to amortise the hand-over,
# small enough to keep a worker's memory bounded.
HANDOVER_BATCH_ROWS = 256


# A failed checkpoint upload is retried this many times (with backoff) before it fails the
# worker group, which then restarts from the previous checkpoint (counted in max_failures).
UPLOAD_ATTEMPTS = 3


class RayReporter:
    """Sends metrics (every rank) and rank 0's checkpoint folder to Ray Train.

    An async report returns once Ray Train has the folder: the manifest (a sha256 of every
    file) and the upload run on Ray Train's upload thread, so a save blocks training only for
    the local write. Ray Train deletes the local folder after the upload.
    """

    def __init__(self, telemetry: WorkerTelemetry):
        self.telemetry = telemetry
        self.storage = ray.train.get_context().get_storage()

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str, sync: bool) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        if checkpoint is not None:
            self.telemetry.upload_started()
        mode = ray.train.CheckpointUploadMode.SYNC if sync else ray.train.CheckpointUploadMode.ASYNC
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=name,
            checkpoint_upload_mode=mode,
            delete_local_checkpoint_after_upload=True,
            checkpoint_upload_fn=self._upload,
        )

    def _upload(self, checkpoint: ray.train.Checkpoint, name: str) -> ray.train.Checkpoint:
        start = time.perf_counter()
        try:
            checkpoints.write_manifest(checkpoint.path)
            for attempt in range(1, UPLOAD_ATTEMPTS + 1):
                try:
                    persisted = self.storage.persist_current_checkpoint(checkpoint, name)
                    break
                except Exception as exc:
                    self.telemetry.add_upload_failure()
                    if attempt == UPLOAD_ATTEMPTS:
                        log.error("checkpoint %s could not be uploaded after %d attempts: %s", name, attempt, exc)
                        raise
                    log.warning("checkpoint %s upload failed (attempt %d): %s; retrying", name, attempt, exc)
                    time.sleep(2.0 * attempt)
        except BaseException:
            self.telemetry.upload_finished(None)
            raise
        self.telemetry.upload_finished(time.perf_counter() - start)
        return persisted


class RayPreemptionNotices:
    """Ray Train's preemption notices, as `training.callbacks.PreemptionNotices`."""

    def poll(self) -> float | None:
        info = ray.train.get_preemption_info()
        if info is None:
            return None
        return info.deadline_ms / 1000.0 if info.deadline_ms else float("inf")

    def agree(self, decision: bool) -> bool:
        return bool(ray.train.collective.broadcast_from_rank_zero(decision))


def ray_data_sources(num_classes: int):
    """(train factory, val factory, release) over this worker's Ray Data shards (`data.ingest: ray_data`)."""
    from job.data import pipeline

    sources = []

    def from_shard(name: str):
        shard = ray.train.get_dataset_shard(name)
        source = pipeline.ReleasableBatches(
            lambda: shard.iter_batches(batch_size=HANDOVER_BATCH_ROWS, batch_format="numpy", prefetch_batches=2)
        )
        sources.append(source)
        return source

    train, val = from_shard("train"), from_shard("val")

    def release() -> None:
        for source in sources:
            source.release()

    # Ray Data decides what each epoch holds; the first epoch's number is not needed.
    return (
        lambda _first_epoch: pipeline.examples_from_batches(train, num_classes),
        lambda: pipeline.examples_from_batches(val, num_classes),
        release,
    )


def worker_entry(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: unpack, wire the input (direct or Ray Data) into tf.data, train."""
    # Imported here, in the worker: Ray Train's controller unpickles this function, and it
    # must not load TensorFlow for nothing.
    from job.data import shards
    from job.training import loop

    ctx = ray.train.get_context()
    info = loop.WorkerInfo(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank())
    setup_worker_logging(info.rank)
    quiet_ray_data()
    cfg = config_from_dict(config["config"])
    planned = loop.WorkerPlan(**config["plan"])
    plan = loop.plan_for_group(planned, info.world_size)
    if info.rank == 0 and plan != planned:
        log.warning(
            "%d worker(s) instead of %d: %d examples per worker and step keep the global batch of %d "
            "(steps per epoch and learning rate unchanged)",
            info.world_size,
            cfg.scaling.num_workers,
            plan.batch_size_per_worker,
            planned.global_batch_size,
        )
    num_classes = len(plan.class_names)
    if info.rank == 0:
        RunStore(plan.run_uri).record_attempt()

    if cfg.data.ingest == "direct":
        # This worker streams its own part of the shard files from storage.
        manifest = shards.Manifest.from_json(config["manifest"], "the run's dataset.json")
        files = loop.shard_files(config["data_uri"], manifest, cfg, plan, info)
        train_examples, val_examples, release_inputs = files.train, files.val, None
    else:
        train_examples, val_examples, release_inputs = ray_data_sources(num_classes)

    telemetry = WorkerTelemetry(
        plan.run_name,
        info.rank,
        worker_port(cfg.telemetry.worker_port_base, info.local_rank),
        enabled=cfg.telemetry.enabled,
        bind_address=cfg.telemetry.bind_address,
    )
    telemetry.set_world_size(info.world_size)

    def record_notice(deadline: float, position: tuple[int, int]) -> None:
        if info.rank == 0:
            seconds = None if deadline == float("inf") else round(deadline - time.time(), 1)
            log.warning(
                "preemption notice: a node of this worker group is being taken away (deadline in %s s)", seconds
            )
            RunStore(plan.run_uri).record_preemption(
                {"time": time.time(), "deadline_in_seconds": seconds, "epoch": position[0], "step": position[1]}
            )

    try:
        loop.train_worker(
            cfg,
            plan,
            info,
            train_examples,
            val_examples,
            RayReporter(telemetry),
            telemetry,
            release_inputs=release_inputs,
            notices=RayPreemptionNotices(),
            on_preemption_notice=record_notice,
        )
    finally:
        telemetry.close()
        # Ray may end this process without running atexit handlers.
        scratch.cleanup()
