"""The ONLY module that imports Ray: cluster connection, Ray Data reads, TensorflowTrainer.

Flow: plan and pre-flight checks (no Ray yet) -> connect or start Ray -> read the train and
val shards with Ray Data through storage.py's filesystem -> TensorflowTrainer with one
worker function (a thin shim around `train_loop.train_worker`) -> evaluate the best
checkpoint and write the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Any

from job import checkpoints, records, runs, storage
from job.config import Config, config_from_dict, config_to_dict, describe
from job.errors import UserError

log = logging.getLogger("job.ray")

# Rows per Ray Data batch handed to tf.data: large enough to amortise the hand-over,
# small enough to keep a worker's memory bounded.
HANDOVER_BATCH_ROWS = 256
ATTEMPTS_DIR = "attempts"


# ---------------------------------------------------------------------------- cluster


def connect(cfg: Config) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray sized for workers + data tasks.

    Ray Data's read tasks need CPUs of their own: with exactly workers x cpus_per_worker
    logical CPUs the read is never scheduled and the run hangs, so a local Ray gets
    `scaling.data_cpus` more.
    """
    import ray

    if ray.is_initialized():
        return
    verbose = os.environ.get("JOB_VERBOSE") == "1"
    logging_level = logging.INFO if verbose else logging.WARNING
    if os.environ.get("RAY_ADDRESS"):
        log.info("connecting to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(logging_level=logging_level, log_to_driver=True)
        return
    s = cfg.scaling
    num_cpus = s.num_workers * s.cpus_per_worker + s.data_cpus
    log.info("starting a local Ray with %g logical CPUs (%d workers x %g + %g for data)", num_cpus,
             s.num_workers, s.cpus_per_worker, s.data_cpus)
    ray.init(num_cpus=max(1, int(round(num_cpus + 0.499))), num_gpus=(s.num_workers * s.gpus_per_worker) if s.use_gpu else 0,
             include_dashboard=False, logging_level=logging_level, log_to_driver=True)


def _quiet_ray_data() -> None:
    from ray.data import DataContext

    ctx = DataContext.get_current()
    if os.environ.get("JOB_VERBOSE") != "1":
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False


def read_split(data_uri: str, manifest: records.Manifest, split: str):
    """A Ray Dataset of one split's shards, read through storage.py's filesystem."""
    import ray

    fs, root = storage.arrow_filesystem(data_uri)
    paths = [f"{root.rstrip('/')}/{s.path}" for s in manifest.splits[split]]
    if manifest.format == "parquet":
        return ray.data.read_parquet(paths, filesystem=fs, columns=["image", "labels"])
    # Not ray.data.read_tfrecords: it imports TensorFlow in every read task and parses each
    # Example in Python. Splitting the framing is cheap; the worker parses whole batches.
    files = ray.data.read_binary_files(paths, filesystem=fs, include_paths=True)
    return files.flat_map(_tfrecord_rows)


def _tfrecord_rows(row: dict) -> list[dict]:
    return [{"record": r} for r in records.split_tfrecord(row["bytes"], row["path"])]


# ---------------------------------------------------------------------------- worker side


class RayReporter:
    """Sends per-epoch metrics (every rank) and rank 0's checkpoint folder to Ray Train."""

    def report(self, metrics: dict, checkpoint_dir: str | None, epoch: int) -> None:
        import ray.train

        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name_for(epoch))
        if checkpoint_dir:
            checkpoints.remove_local(checkpoint_dir)


def checkpoint_dir_name_for(epoch: int) -> str:
    return checkpoints.dir_name(epoch)


def worker_entry(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: unpack, wire Ray Data into tf.data, train."""
    import ray.train

    from job import inputs, train_loop
    from job.telemetry import WorkerTelemetry, worker_port

    ctx = ray.train.get_context()
    info = train_loop.WorkerInfo(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(),
                                 local_rank=ctx.get_local_rank())
    _setup_worker_logging(info.rank)
    cfg = config_from_dict(config["config"])
    plan = train_loop.TrainPlan(**config["plan"])
    num_classes = len(plan.class_names)
    if info.rank == 0:
        _record_attempt(plan.run_uri)

    sources = []

    def from_shard(name: str):
        shard = ray.train.get_dataset_shard(name)
        source = inputs.ReleasableBatches(
            lambda: shard.iter_batches(batch_size=HANDOVER_BATCH_ROWS, batch_format="numpy", prefetch_batches=2))
        sources.append(source)
        return lambda: inputs.examples_from_batches(source, num_classes)

    def release_inputs() -> None:
        for source in sources:
            source.release()

    telemetry = WorkerTelemetry(plan.run_name, info.rank,
                                worker_port(cfg.telemetry.worker_port_base, info.local_rank),
                                enabled=cfg.telemetry.enabled)
    try:
        train_loop.train_worker(cfg, plan, info, from_shard("train"), from_shard("val"), RayReporter(), telemetry,
                                release_inputs=release_inputs)
    finally:
        telemetry.close()


def _setup_worker_logging(rank: int) -> None:
    """Rank 0 logs one line per event; other ranks only warnings and errors."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("job").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    if os.environ.get("JOB_VERBOSE") != "1":
        _quiet_ray_data()
        # Some Ray modules name their logger after their file path, not their module.
        names = [n for n in logging.root.manager.loggerDict
                 if n.split(".")[0] in ("ray", "absl", "tensorflow") or "/ray/" in n]
        for noisy in names + ["ray", "absl", "tensorflow", "botocore", "urllib3"]:
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _record_attempt(run_uri: str) -> None:
    """One marker per worker-group start, so the driver can count restarts."""
    import uuid

    storage.write_text(storage.join(run_uri, ATTEMPTS_DIR, uuid.uuid4().hex), "")


class _RestartWatcher:
    """Counts worker-group starts beyond the first while the trainer runs (for Prometheus)."""

    def __init__(self, run_uri: str, telemetry, interval_seconds: float = 5.0):
        self.uri, self.telemetry, self.interval = storage.join(run_uri, ATTEMPTS_DIR), telemetry, interval_seconds
        self.baseline = len(self._markers())
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restart-watcher", daemon=True)

    def _markers(self) -> list[str]:
        try:
            return storage.list_files(self.uri)
        except Exception:  # a transient listing error must not disturb training
            return []

    def poll(self) -> None:
        # The first new marker is this run's own start; every later one is a restart.
        restarts = max(0, len(self._markers()) - self.baseline - 1)
        if restarts > self.restarts:
            self.telemetry.add_worker_restarts(restarts - self.restarts)
            self.restarts = restarts
            log.warning("the worker group restarted (%d restart(s) so far); resuming from the latest checkpoint",
                        restarts)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()


# ---------------------------------------------------------------------------- driver


def run_distributed(cfg: Config, data_uri: str, output_uri: str, run_name: str | None = None,
                    dry_run: bool = False) -> dict | None:
    """Plan, check, train on Ray Train, evaluate. Returns metrics.json's content."""
    from job.telemetry import DriverTelemetry

    s = cfg.scaling
    plan = runs.plan_run(cfg, data_uri, output_uri, run_name, num_workers=s.num_workers)
    log.info("plan:\n%s", plan.describe())
    if dry_run:
        return None
    runs.verify_data(cfg, plan)
    runs.warn_correlated_labels(cfg, plan)
    log.info("config:\n%s", describe(cfg))
    runs.write_config(cfg, plan)

    telemetry = DriverTelemetry(plan.run_name, cfg.telemetry.driver_port, enabled=cfg.telemetry.enabled)
    telemetry.set_state("running")
    try:
        history = _fit(cfg, plan, telemetry)
        metrics = runs.finish_run(cfg, plan, history)
    except BaseException:
        telemetry.set_state("failed")
        _linger(cfg, telemetry)
        raise
    telemetry.add_s3_retries(storage.retry_count())
    telemetry.set_state("succeeded")
    _linger(cfg, telemetry)
    return metrics


def _linger(cfg: Config, telemetry) -> None:
    """Keep /metrics up briefly after the end so Prometheus sees the final state."""
    import time

    if cfg.telemetry.enabled and cfg.telemetry.final_scrape_wait_seconds > 0:
        time.sleep(cfg.telemetry.final_scrape_wait_seconds)
    telemetry.close()


def _fit(cfg: Config, plan: runs.RunPlan, telemetry) -> list[dict]:
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    s = cfg.scaling
    connect(cfg)
    _quiet_ray_data()
    datasets = {split: read_split(plan.data_uri, plan.manifest, split) for split in ("train", "val")}
    fs, runs_root = storage.arrow_filesystem(storage.parent(plan.run_uri))
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    trainer = TensorflowTrainer(
        train_loop_per_worker=worker_entry,
        train_loop_config={
            "config": config_to_dict(cfg),
            "plan": dataclasses.asdict(plan.train_plan()),
        },
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=plan.run_name,
            storage_path=runs_root,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.keep_best,
                                               checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min"),
        ),
        datasets=datasets,
        # Only train is split across workers; every worker validates on the whole val split,
        # so validation metrics are exact and identical on every rank.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    log.info("training %s with %d worker(s), global batch %d", plan.run_name, s.num_workers, plan.global_batch_size)
    try:
        with _RestartWatcher(plan.run_uri, telemetry):
            result = trainer.fit()
    except Exception as exc:  # Ray wraps worker failures; surface the cause in one paragraph
        raise UserError(describe_failure(exc, s.max_failures)) from None
    finally:
        if not os.environ.get("RAY_ADDRESS"):
            ray.shutdown()
    if getattr(result, "error", None):
        raise UserError(describe_failure(result.error, s.max_failures))
    latest = checkpoints.restore_latest(plan.run_uri)
    if latest is None:
        raise UserError(f"Training finished but no intact checkpoint is under {plan.run_uri}.")
    history = list(latest.state.get("history", []))
    checkpoints.remove_local(latest.local_dir)
    return history


def describe_failure(exc: BaseException, max_failures: int) -> str:
    """A one-paragraph account of why the worker group failed, naming the rank when Ray says it."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    rank = None
    for ln in lines:
        for marker in ("rank=", "world_rank=", "Worker rank ", "rank "):
            if marker in ln:
                tail = ln.split(marker, 1)[1]
                digits = "".join(ch for ch in tail[:6] if ch.isdigit())
                if digits:
                    rank = int(digits)
                    break
        if rank is not None:
            break
    cause = next((ln for ln in reversed(lines) if "Error" in ln or "died" in ln or "exit" in ln.lower()),
                 lines[-1] if lines else type(exc).__name__)
    cause = cause.split(" Some common causes")[0]
    who = f"worker rank {rank}" if rank is not None else "a training worker"
    return (f"Training failed: {who} failed ({cause[:400]}). Ray Train was allowed {max_failures} restart(s) "
            f"(scaling.max_failures). Re-run the same command to resume from the latest checkpoint; raise "
            f"scaling.max_failures to survive more worker losses. Use --verbose for Ray's full log.")
