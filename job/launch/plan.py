"""What every run does around training: pre-flight checks, the plan, and the outputs.

Both paths use it: the single-process run (`launch/local.py`) and the Ray run
(`cluster/driver.py`).
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import platform
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata

from job import storage
from job.config import Config, describe, describe_changes
from job.console import is_verbose
from job.data import shards
from job.data.labels import find_correlated_pairs
from job.data.validate import validate_dataset
from job.errors import UserError
from job.evaluation.evaluate import evaluate_run
from job.storage.lease import RunLease
from job.storage.run_store import CONFIG_FILE, RunStore
from job.training.loop import WorkerPlan
from job.training.model import backbone_layer_names, check_model_options
from job.training.transfer import check_transfer_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before any worker starts; printed by --dry-run."""

    data_uri: str
    run_uri: str
    run_name: str
    manifest: shards.Manifest
    num_workers: int
    batch_size_per_worker: int
    global_batch_size: int
    steps_per_epoch: int
    validation_steps: int
    examples_per_worker: int

    def for_workers(self) -> WorkerPlan:
        """The part of the plan every worker needs."""
        return WorkerPlan(
            run_uri=self.run_uri,
            run_name=self.run_name,
            class_names=tuple(self.manifest.class_names),
            steps_per_epoch=self.steps_per_epoch,
            validation_steps=self.validation_steps,
            batch_size_per_worker=self.batch_size_per_worker,
            global_batch_size=self.global_batch_size,
            val_examples=self.manifest.num_examples("val"),
        )

    def describe(self) -> str:
        m = self.manifest
        sizes = ", ".join(f"{s} {m.num_examples(s)}" for s in shards.SPLITS if s in m.splits)
        return "\n".join(
            [
                f"run name          {self.run_name}",
                f"run location      {self.run_uri}",
                f"data              {self.data_uri} "
                f"({m.format}, {len(m.class_names)} labels: {', '.join(m.class_names)})",
                f"examples          {sizes}",
                f"workers           {self.num_workers}",
                f"batch             {self.batch_size_per_worker} per worker, {self.global_batch_size} global",
                f"steps per epoch   {self.steps_per_epoch} ({self.examples_per_worker} train examples per worker), "
                f"{self.validation_steps} validation steps (whole val split on every worker)",
            ]
        )


# A run name ends up in Prometheus labels, log lines and file names: keep it plain.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def resolve_run(output_uri: str, run_name: str | None, cfg: Config) -> tuple[str, str]:
    """(run URI, run name). `--output` is the run folder, always: files go directly under it.

    The name (`--run-name`, else the config's `run_name`, else the folder's last part) only
    labels the run in logs and metrics. A stable folder is what lets the same command resume.
    """
    output_uri = output_uri.rstrip("/")
    for given in (run_name, cfg.run_name):
        if given and not RUN_NAME.fullmatch(given):
            raise UserError(
                f"Run name {given!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', starting "
                "with a letter or digit. The name labels the run in logs and metrics; --output is its folder."
            )
    name = run_name or cfg.run_name or storage.basename(output_uri)
    if not name or not storage.basename(output_uri):
        raise UserError(f"--output {output_uri!r} names no run folder; pass a folder such as s3://BUCKET/runs/NAME.")
    return output_uri, name


def check_apart(data_uri: str, output_uri: str) -> None:
    """Refuse a run folder that is the data set, inside it, or holds it: one would overwrite the other."""
    if storage.is_within(output_uri, data_uri) or storage.is_within(data_uri, output_uri):
        raise UserError(
            f"--output {output_uri} and --data {data_uri} overlap: the run's checkpoints and reports would be "
            "written among the data set's shards. Give the run its own folder, e.g. --output runs/NAME."
        )


def plan_run(cfg: Config, data_uri: str, output_uri: str, run_name: str | None, num_workers: int) -> RunPlan:
    """Check the data and the run location up front and decide the step counts.

    Raises:
        UserError for anything that would otherwise fail after expensive work started:
        missing data set, empty split, too little data for the workers, bad model options,
        unreachable storage.
    """
    check_apart(data_uri, output_uri)
    check_model_options(cfg.model.backbone, cfg.model.weights, cfg.data.image_size)
    layer_names = (
        backbone_layer_names(cfg.model.backbone, cfg.data.image_size, cfg.model.width)
        if cfg.transfer.frozen_epochs and cfg.transfer.unfreeze_from
        else None
    )
    check_transfer_options(cfg, layer_names)
    if storage.is_s3(cfg.model.weights) and not storage.exists(cfg.model.weights):
        raise UserError(f"model.weights {cfg.model.weights} does not exist. Pass an existing weights file, or 'none'.")
    storage.check_access(data_uri)
    manifest = shards.load_manifest(data_uri)
    for split in ("train", "val"):
        if manifest.num_examples(split) == 0:
            raise shards.DatasetError(
                f"The {split!r} split of {data_uri} is empty. Re-create the data set with a larger "
                f"{'--val-fraction' if split == 'val' else 'image count'}."
            )
    run_uri, name = resolve_run(output_uri, run_name, cfg)
    storage.check_access(run_uri, write=True)
    batch = cfg.data.batch_size_per_worker
    per_worker = manifest.num_examples("train") // num_workers
    steps = per_worker // batch
    if steps < 1:
        raise UserError(
            f"The train split has {manifest.num_examples('train')} examples: {per_worker} per worker for "
            f"{num_workers} worker(s), fewer than one batch of {batch}. Use fewer workers "
            f"(--set scaling.num_workers=N), a smaller data.batch_size_per_worker, or more data."
        )
    train_shards = len(manifest.splits.get("train", []))
    if train_shards < num_workers:
        log.warning(
            "the train split has %d shard(s) for %d workers; Ray Data splits within shards, but reads "
            "are less parallel. Re-shard with more shards (synth/prepare --num-shards) for large sets.",
            train_shards,
            num_workers,
        )
    return RunPlan(
        data_uri=data_uri,
        run_uri=run_uri,
        run_name=name,
        manifest=manifest,
        num_workers=num_workers,
        batch_size_per_worker=batch,
        global_batch_size=batch * num_workers,
        steps_per_epoch=steps,
        validation_steps=-(-manifest.num_examples("val") // batch),
        examples_per_worker=per_worker,
    )


def verify_data(cfg: Config, plan: RunPlan) -> None:
    """Refuse to train on shards that do not match dataset.json (size, sha256)."""
    report = validate_dataset(
        plan.data_uri, full_hash=cfg.data.verify_checksums, workers=plan.num_workers, sample_records=4
    )
    if not report.ok:
        raise shards.DatasetError(
            f"The data set at {plan.data_uri} failed its pre-flight check:\n  - "
            + "\n  - ".join(report.errors)
            + f"\nRun `python -m job validate {plan.data_uri}` for the full report; re-create or restore the shards."
        )


def warn_correlated_labels(cfg: Config, plan: RunPlan, limit: int = 5000) -> None:
    """Warn at start when two labels (nearly) always appear together in the train split."""
    y = shards.read_labels(plan.data_uri, plan.manifest, "train", limit=limit)
    for pair in find_correlated_pairs(y, plan.manifest.class_names, cfg.evaluation.correlated_pair_threshold):
        log.warning(
            "labels %r and %r appear together in %.0f%% / %.0f%% of their train images: the model cannot learn "
            "to tell them apart, and high accuracy on them says nothing about whether it can. "
            "See `python -m job analyze --data %s`.",
            pair.first,
            pair.second,
            100 * pair.p_second_given_first,
            100 * pair.p_first_given_second,
            plan.data_uri,
        )


def environment_info() -> dict:
    """Versions and machine facts saved with every run, for reproducibility."""
    versions = {}
    for pkg in ("tensorflow", "tf-keras", "ray", "pyarrow", "boto3", "prometheus-client", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def write_config(cfg: Config, plan: RunPlan) -> None:
    """Save the resolved config, the seed, the data set and the package versions with the run."""
    RunStore(plan.run_uri).write_config(
        cfg,
        run_name=plan.run_name,
        data_uri=plan.data_uri,
        class_names=list(plan.manifest.class_names),
        facts={
            "num_workers": plan.num_workers,
            "global_batch_size": plan.global_batch_size,
            "steps_per_epoch": plan.steps_per_epoch,
            "data_generation": plan.manifest.generation,
            "environment": environment_info(),
        },
    )


@contextlib.contextmanager
def started_run(
    cfg: Config, data_uri: str, output_uri: str, run_name: str | None, num_workers: int, dry_run: bool
) -> Iterator[RunPlan | None]:
    """Plan and print the plan; unless it is a dry run, hold the run's lease, check the data
    and save config.json, and keep the lease until the `with` block ends.

    Yields:
        The plan, or None for a dry run.

    Raises:
        LeaseHeld (a UserError) at once when another live run holds --output; UserError when
        another run takes the lease over while this one runs (this one then stops), or when
        the data set was re-written since the run started.
    """
    plan = plan_run(cfg, data_uri, output_uri, run_name, num_workers=num_workers)
    log.info("plan:\n%s", plan.describe())
    if dry_run:
        yield None
        return
    # Losing the lease stops training: the heartbeat interrupts the main thread (Ray Train's
    # own SIGINT handler may turn that into its own abort or exit), and whatever the training
    # call then raises or returns, the run ends here with the reason.
    lease = RunLease(plan.run_uri, cfg.lease_timeout_seconds, on_lost=lambda holder: _thread.interrupt_main())
    with lease:
        _HELD[plan.run_uri] = lease
        try:
            # Leftovers of a killed earlier attempt: no other writer can be active under the lease.
            removed = storage.delete_partial_files(plan.run_uri)
            if removed:
                log.info("removed %d unfinished file(s) a killed earlier attempt left in %s", removed, plan.run_uri)
            check_same_data(plan)
            verify_data(cfg, plan)
            warn_correlated_labels(cfg, plan)
            if is_verbose():
                log.info("config:\n%s", describe(cfg))
            log.info("config (changes from the defaults): %s", describe_changes(cfg))
            write_config(cfg, plan)
            yield plan
        except BaseException:
            check_lease(plan)
            raise
        finally:
            _HELD.pop(plan.run_uri, None)
        check_lease(plan, lease)


# The leases this process holds, by run URI (see `check_lease`).
_HELD: dict[str, RunLease] = {}


def check_lease(plan: RunPlan, lease: RunLease | None = None) -> None:
    """Raise UserError if this process lost the run's lease; call it before writing results."""
    lease = lease or _HELD.get(plan.run_uri)
    if lease is not None and lease.lost:
        raise UserError(
            f"This run lost the lease of {plan.run_uri} ({lease.lost}) and stopped, so that two runs do not "
            "mix their checkpoints and results. Give each run its own --output."
        ) from None


def check_same_data(plan: RunPlan) -> None:
    """Refuse to resume a run on a different generation of its data set (re-prepared meanwhile)."""
    store = RunStore(plan.run_uri)
    if not store.is_run():
        return
    before = storage.read_json(store.path(CONFIG_FILE)).get("data_generation")
    now = plan.manifest.generation
    if before and before != now:
        raise UserError(
            f"The data set {plan.data_uri} was re-written since this run started (generation {before}, now "
            f"{now or 'none'}): resuming would train one run on two data sets. Start a new run with another "
            "--output, or restore the earlier data set."
        )


def finish_run(cfg: Config, plan: RunPlan, history: list[dict]) -> dict:
    """Evaluate the best checkpoint on every split and write history.json and metrics.json."""
    RunStore(plan.run_uri).write_history(history)
    metrics = evaluate_run(plan.run_uri, data_uri=plan.data_uri, cfg=cfg)
    log.info("run %s finished; its checkpoints, metrics, report and plots are in %s", plan.run_name, plan.run_uri)
    return metrics
