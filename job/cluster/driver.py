"""The ONLY module that imports Ray: cluster connection, Ray Data reads, TensorflowTrainer.

Flow: plan and pre-flight checks (no Ray yet) -> connect or start Ray -> read the train and
val shards with Ray Data through the storage wing's filesystem -> TensorflowTrainer with one
worker function (a thin shim around `loop.train_worker`) -> evaluate the best
checkpoint and write the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import ray
from ray.train import (
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.tensorflow import TensorflowTrainer

from job import storage
from job.cluster.capacity import (
    DATA_CPUS_ON_A_CLUSTER,
    HEAD_NODE_RESOURCE,
    wait_until_workers_fit,
    worker_resources,
)
from job.cluster.datasets import ray_dataset
from job.cluster.failures import describe_failure
from job.cluster.runtime import join_cluster_in_env, quiet_ray_data
from job.cluster.worker import worker_entry
from job.config import Config, config_to_dict
from job.console import is_verbose, setup_worker_logging
from job.errors import UserError
from job.launch.plan import RunPlan, check_lease, finish_run, started_run
from job.storage import scratch
from job.storage.run_store import RunStore
from job.telemetry import DriverTelemetry, resolve_bind_address
from job.training import checkpoints

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- cluster


def connect(cfg: Config) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray sized for workers + data tasks.

    Ray Data's read tasks need CPUs of their own: with exactly workers x cpus_per_worker
    logical CPUs the read is never scheduled and the run hangs, so a local Ray gets
    `scaling.data_cpus` more.
    """
    if ray.is_initialized():
        return
    logging_level = logging.INFO if is_verbose() else logging.WARNING
    if join_cluster_in_env(logging_level):
        _warn_unless_on_head()
        # An elastic run starts once its minimum fits.
        needed = dataclasses.replace(cfg.scaling, num_workers=cfg.scaling.min_workers or cfg.scaling.num_workers)
        data_cpus = DATA_CPUS_ON_A_CLUSTER if cfg.data.ingest == "ray_data" else 0.0
        wait_until_workers_fit(needed, _alive_node_resources, _request_resources, data_cpus=data_cpus)
        return
    s = cfg.scaling
    # The direct ingest path decodes in the training workers' own CPUs; only Ray Data needs more.
    data_cpus = s.data_cpus if cfg.data.ingest == "ray_data" else 0
    num_cpus = s.num_workers * s.cpus_per_worker + data_cpus
    log.info(
        "starting a local Ray with %g logical CPUs (%d workers x %g + %g for data)",
        num_cpus,
        s.num_workers,
        s.cpus_per_worker,
        data_cpus,
    )
    ray.init(
        num_cpus=max(1, int(round(num_cpus + 0.499))),
        num_gpus=(s.num_workers * s.gpus_per_worker) if s.use_gpu else 0,
        # One "node" here holds every worker: it offers one worker-node resource per worker.
        resources={s.worker_node_resource: s.num_workers} if s.worker_node_resource else None,
        include_dashboard=False,
        logging_level=logging_level,
        log_to_driver=True,
    )


def _warn_unless_on_head() -> None:
    """Ray Train's controller runs on the driver's node: a driver on a worker node (a spot node,
    say) ends the run when that node goes, whatever max_failures allows."""
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here and HEAD_NODE_RESOURCE not in node.get("Resources", {}):
            log.warning(
                "this driver runs on a worker node (%s), not the head: if that node is lost the run ends. "
                "Submit with `ray job submit` (it runs the driver on the head), as the RayJob does.",
                node.get("NodeManagerAddress"),
            )


def _alive_node_resources() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _request_resources(bundles: list[dict[str, float]]) -> None:
    """Ask the cluster's autoscaler, if it has one, for room for these bundles (no-op otherwise)."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=bundles)
    except Exception as exc:  # an autoscaler API problem must not stop a run that may fit later
        log.debug("could not ask the autoscaler for resources: %s", exc)


class _RestartWatcher:
    """Counts worker-group starts beyond the first, and preemption notices, while the trainer
    runs (for Prometheus).

    A restart is put down to a preemption while there are more recorded notices than
    restarts already put down to one; the others are failures.
    """

    def __init__(self, run_uri: str, telemetry, interval_seconds: float = 5.0):
        self.store, self.telemetry, self.interval = RunStore(run_uri), telemetry, interval_seconds
        self.baseline = self._count(self.store.count_attempts)
        self.baseline_preemptions = self._count(self.store.count_preemptions)
        self.restarts = self.preemption_restarts = self.preemptions = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restart-watcher", daemon=True)

    @staticmethod
    def _count(listing) -> int:
        try:
            return listing()
        except Exception:  # a transient listing error must not disturb training
            return 0

    def poll(self) -> None:
        preemptions = max(0, self._count(self.store.count_preemptions) - self.baseline_preemptions)
        if preemptions > self.preemptions:
            self.telemetry.add_preemptions(preemptions - self.preemptions)
            self.preemptions = preemptions
        # The first new marker is this run's own start; every later one is a restart.
        restarts = max(0, self._count(self.store.count_attempts) - self.baseline - 1)
        if restarts > self.restarts:
            by_preemption = min(restarts, self.preemptions) - self.preemption_restarts
            self.telemetry.add_worker_restarts(by_preemption, cause="preemption")
            self.telemetry.add_worker_restarts(restarts - self.restarts - by_preemption, cause="failure")
            self.preemption_restarts += by_preemption
            self.restarts = restarts
            log.warning(
                "the worker group restarted (%d restart(s) so far, %d after a preemption); resuming from the "
                "latest checkpoint",
                restarts,
                self.preemption_restarts,
            )

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


def run_distributed(
    cfg: Config, data_uri: str, output_uri: str, run_name: str | None = None, dry_run: bool = False
) -> dict | None:
    """Plan, check, train on Ray Train, evaluate. Returns metrics.json's content."""
    with started_run(cfg, data_uri, output_uri, run_name, cfg.scaling.num_workers, dry_run) as plan:
        if plan is None:
            return None
        telemetry = DriverTelemetry(
            plan.run_name,
            cfg.telemetry.driver_port,
            enabled=cfg.telemetry.enabled,
            bind_address=cfg.telemetry.bind_address,
        )
        telemetry.set_state("running")
        try:
            history = _fit(cfg, plan, telemetry)
            check_lease(plan)
            metrics = _finish(cfg, plan, history)
        except BaseException:
            telemetry.set_state("failed")
            _linger(cfg, telemetry)
            raise
        telemetry.add_s3_retries(storage.retry_count())
        telemetry.set_state("succeeded")
        _linger(cfg, telemetry)
        return metrics


def _finish(cfg: Config, plan: RunPlan, history: list[dict]) -> dict:
    """Evaluate the best checkpoint and write the outputs, where the training workers ran.

    On a cluster (RAY_ADDRESS) the driver runs on the head, which has no accelerator and,
    under KubeRay, no CPUs for Ray work (`num-cpus: 0`): evaluation is a Ray task with one
    training worker's resources, so it runs on a worker node, on its GPU when training used
    GPUs. A local run has already shut its Ray down and evaluates in this process.
    """
    if not ray.is_initialized():
        return finish_run(cfg, plan, history)
    s = cfg.scaling
    task = ray.remote(_finish_on_worker).options(
        name="evaluate",
        num_cpus=s.cpus_per_worker,
        num_gpus=s.gpus_per_worker if s.use_gpu else 0,
        # A lost node re-runs the evaluation elsewhere; a failed evaluation is an error.
        max_retries=2,
        retry_exceptions=False,
    )
    log.info("evaluating on a worker node (%g CPU%s)", s.cpus_per_worker, ", 1 GPU" if s.use_gpu else "")
    return ray.get(task.remote(cfg, plan, history))


def _finish_on_worker(cfg: Config, plan: RunPlan, history: list[dict]) -> dict:
    setup_worker_logging(rank=0)
    try:
        return finish_run(cfg, plan, history)
    finally:
        scratch.cleanup()  # Ray may end this worker process without running atexit handlers


def _linger(cfg: Config, telemetry) -> None:
    """Keep /metrics up briefly after the end so Prometheus sees the final state."""
    if cfg.telemetry.enabled and cfg.telemetry.final_scrape_wait_seconds > 0:
        time.sleep(cfg.telemetry.final_scrape_wait_seconds)
    telemetry.close()


def _fit(cfg: Config, plan: RunPlan, telemetry: DriverTelemetry) -> list[dict]:
    s = cfg.scaling
    connect(cfg)
    quiet_ray_data()
    ray_data = cfg.data.ingest == "ray_data"
    datasets = (
        {split: ray_dataset(plan.data_uri, plan.manifest, split) for split in ("train", "val")} if ray_data else None
    )
    fs, runs_root = storage.arrow_filesystem(storage.parent(plan.run_uri))
    # The workers' metrics address is decided here, where it is known whether Ray is this
    # machine's own (loopback) or a cluster joined through RAY_ADDRESS (all interfaces); a
    # worker process cannot tell the two apart from its environment.
    bind_address = resolve_bind_address(cfg.telemetry.bind_address)
    worker_cfg = dataclasses.replace(cfg, telemetry=dataclasses.replace(cfg.telemetry, bind_address=bind_address))
    trainer = TensorflowTrainer(
        train_loop_per_worker=worker_entry,
        train_loop_config={
            "config": config_to_dict(worker_cfg),
            "plan": dataclasses.asdict(plan.for_workers()),
            # The direct ingest path: each worker reads its part of these shards itself.
            "data_uri": plan.data_uri,
            "manifest": plan.manifest.to_json(),
        },
        scaling_config=ScalingConfig(
            # Elastic: Ray Train starts with what fits (at least min_workers) and grows the group
            # at its resize checks; every start is a new TensorFlow cluster spec.
            num_workers=(s.min_workers, s.num_workers) if s.min_workers else s.num_workers,
            elastic_resize_monitor_interval_s=s.resize_check_seconds,
            use_gpu=s.use_gpu,
            resources_per_worker=worker_resources(s),
            placement_strategy=s.placement_strategy,
        ),
        run_config=RunConfig(
            # Ray Train writes checkpoints to storage_path/name: that must be the run folder itself.
            name=storage.basename(plan.run_uri),
            storage_path=runs_root,
            storage_filesystem=fs,
            failure_config=FailureConfig(
                max_failures=s.max_failures,
                max_preemption_failures=s.max_preemption_failures,
                preemption_grace_s=s.preemption_grace_seconds,
            ),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoint.keep_best,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
        ),
        datasets=datasets,
        # Only train is split across workers; every worker validates on the whole val split,
        # so validation metrics are exact and identical on every rank (both ingest paths).
        dataset_config=DataConfig(datasets_to_split=["train"]) if ray_data else None,
    )
    workers = f"{s.min_workers} to {s.num_workers}" if s.min_workers else str(s.num_workers)
    log.info(
        "training %s with %s worker(s), global batch %d, ingest %s",
        plan.run_name,
        workers,
        plan.global_batch_size,
        cfg.data.ingest,
    )
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
