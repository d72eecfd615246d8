"""The single-process run (`train --local`): the same plan, checks, worker function and outputs
as a Ray run, in this process and without Ray."""

from __future__ import annotations

import logging

from job.config import Config
from job.launch.plan import check_lease, finish_run, started_run
from job.storage.run_store import RunStore
from job.telemetry import WorkerTelemetry
from job.training import checkpoints, loop

log = logging.getLogger(__name__)


class LocalReporter:
    """Single-process runs: publish rank 0's checkpoints under the run and apply retention."""

    def __init__(self, run_uri: str, keep_best: int):
        self.run_uri, self.keep_best = run_uri, keep_best

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str, sync: bool) -> None:
        if checkpoint_dir is None:
            return
        checkpoints.write_manifest(checkpoint_dir)
        checkpoints.publish(checkpoint_dir, RunStore(self.run_uri).path(name))
        checkpoints.remove_local(checkpoint_dir)
        checkpoints.prune(self.run_uri, self.keep_best)


def run_local(
    cfg: Config, data_uri: str, output_uri: str, run_name: str | None = None, dry_run: bool = False
) -> dict | None:
    """Train in this process (no Ray), then evaluate. Returns metrics.json's content."""
    with started_run(cfg, data_uri, output_uri, run_name, 1, dry_run) as plan:
        if plan is None:
            return None
        worker_plan = plan.for_workers()
        telemetry = WorkerTelemetry(
            plan.run_name,
            0,
            cfg.telemetry.worker_port_base,
            enabled=cfg.telemetry.enabled,
            bind_address=cfg.telemetry.bind_address,
        )
        source = loop.shard_files(data_uri, plan.manifest, cfg, worker_plan, loop.WorkerInfo())
        try:
            history = loop.train_worker(
                cfg,
                worker_plan,
                loop.WorkerInfo(),
                train_examples=source.train,
                val_examples=source.val,
                reporter=LocalReporter(plan.run_uri, cfg.checkpoint.keep_best),
                telemetry=telemetry,
            )
        finally:
            telemetry.close()
        check_lease(plan)
        return finish_run(cfg, plan, history)
