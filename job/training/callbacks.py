"""The Keras callbacks of a training worker, and the one function that orders them.

Keras passes one logs dict down the callback list in order, so the order matters; it is
decided in one place, `build_callbacks`, with the reason for each position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import tensorflow as tf
import tf_keras

from job import storage
from job.config import Config, config_to_dict
from job.data.pipeline import InputClock
from job.storage import scratch
from job.storage.run_store import RunStore
from job.training import checkpoints
from job.training.schedules import current_learning_rate
from job.training.transfer import UnfreezeBackbone, backbone_of

if TYPE_CHECKING:  # the telemetry object is passed in; training never imports prometheus_client
    from job.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)

# Set to "RANK:EPOCH:STEP:MARKER" to make one worker kill itself (fault-tolerance drills).
FAULT_KILL_ENV = "JOB_FAULT_KILL"


class Reporter(Protocol):
    """Where a worker sends its per-epoch metrics and (rank 0) its checkpoint folder."""

    def report(self, metrics: dict, checkpoint_dir: str | None, epoch: int) -> None: ...


class ResumableMixin:
    """Keeps a Keras callback's counters across a restart (Keras resets them in on_train_begin).

    A subclass names its counters in `STATE_KEYS`; `snapshot()` goes into the checkpoint's
    state.json and comes back as `state` when the run resumes.
    """

    STATE_KEYS: tuple[str, ...] = ()

    def __init__(self, state: dict | None, **kwargs):
        super().__init__(**kwargs)
        self._resume = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in self.STATE_KEYS:
            if key in self._resume:
                setattr(self, key, self._resume[key])

    def snapshot(self) -> dict:
        return {key: _plain(getattr(self, key)) for key in self.STATE_KEYS}


def _plain(value):
    """A counter as JSON: ints stay ints, everything else (best losses) becomes float."""
    return int(value) if isinstance(value, (int, np.integer)) else float(value)


class ResumableReduceLR(ResumableMixin, tf_keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart."""

    STATE_KEYS = ("wait", "cooldown_counter", "best")


class ResumableEarlyStopping(ResumableMixin, tf_keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a restart."""

    STATE_KEYS = ("wait", "best", "best_epoch")


class StepTelemetry(tf_keras.callbacks.Callback):
    """Feeds step time, examples and input wait to Prometheus."""

    def __init__(self, telemetry: WorkerTelemetry, clock: InputClock, batch_size: int):
        super().__init__()
        self.telemetry, self.clock, self.batch_size = telemetry, clock, batch_size
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        end = time.perf_counter()
        wait = min(max(0.0, self.clock.last_ready - self._start), end - self._start)
        self.telemetry.record_step(end - self._start, self.batch_size, wait)


class LearningRateLog(tf_keras.callbacks.Callback):
    """Puts the current learning rate into the epoch logs, so TensorBoard and history get it.

    Keras passes one logs dict down the callback list, so this must come before TensorBoard.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = current_learning_rate(self.model.optimizer)


class FaultInjection(tf_keras.callbacks.Callback):
    """Kills this worker process once, for fault-tolerance tests and drills.

    Set JOB_FAULT_KILL="RANK:EPOCH:STEP:MARKER": the worker of that rank SIGKILLs itself at
    that step of that (1-based) epoch, unless MARKER exists; it creates MARKER first, so a
    restarted worker group does not die again.
    """

    def __init__(self, rank: int, spec: str):
        super().__init__()
        rank_s, epoch_s, step_s, self.marker = spec.split(":", 3)
        self.active = int(rank_s) == rank
        self.epoch, self.step = int(epoch_s), int(step_s)
        self._current_epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch + 1

    def on_train_batch_begin(self, batch, logs=None):
        if self.active and self._current_epoch == self.epoch and batch == self.step and not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write(f"killed at epoch {self.epoch} step {self.step}\n")
            log.warning(
                "fault injection: killing this worker (pid %d) at epoch %d step %d", os.getpid(), self.epoch, self.step
            )
            os.kill(os.getpid(), signal.SIGKILL)


class CheckpointAndReport(tf_keras.callbacks.Callback):
    """At the end of each epoch: checkpoint (every rank saves, rank 0 keeps), report, log.

    It must come after ReduceLR and EarlyStopping in the callback list, so the state it
    saves includes their decisions for this epoch.
    """

    def __init__(
        self,
        cfg: Config,
        plan,
        info,
        reporter: Reporter,
        telemetry: WorkerTelemetry,
        reduce_lr: ResumableReduceLR | None,
        early_stop: ResumableEarlyStopping | None,
        history: list[dict],
        best: dict,
        unfreeze: UnfreezeBackbone | None = None,
    ):
        super().__init__()
        self.unfreeze = unfreeze
        self.cfg, self.plan, self.info, self.reporter, self.telemetry = cfg, plan, info, reporter, telemetry
        self.reduce_lr, self.early_stop = reduce_lr, early_stop
        self.history, self.best = history, best
        self._epoch_start = time.perf_counter()
        self._s3_retries = storage.retry_count()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        seconds = time.perf_counter() - self._epoch_start
        row = {"epoch": done, **{k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}}
        next_lr = current_learning_rate(self.model.optimizer)
        row.setdefault("learning_rate", next_lr)
        row.pop("lr", None)
        row["epoch_seconds"] = seconds
        if self.unfreeze is not None:
            # Read from the model itself, not the recipe's flag: what actually trained.
            row["backbone_frozen"] = not backbone_of(self.model).trainable_variables
        self.history.append(row)
        val_loss = row.get("val_loss", float("nan"))
        if not math.isnan(val_loss) and val_loss < self.best.get("val_loss", float("inf")):
            self.best.update(val_loss=val_loss, epoch=done)
        self.telemetry.record_epoch(done, row)
        retries = storage.retry_count()
        self.telemetry.add_s3_retries(retries - self._s3_retries)
        self._s3_retries = retries

        last = done >= self.cfg.training.epochs or bool(self.model.stop_training)
        save = last or done % self.cfg.checkpoint.every_epochs == 0
        ckpt_dir = self._save(done, row, next_lr) if save else None
        metrics = {k: v for k, v in row.items() if isinstance(v, float) and not math.isnan(v)} | {"epoch": done}
        self.reporter.report(metrics, ckpt_dir if self.info.rank == 0 else None, done)
        if ckpt_dir and self.info.rank != 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)
        if self.info.rank == 0:
            self._log_line(done, row, seconds)

    def _save(self, epoch: int, row: dict, next_lr: float) -> str:
        start = time.perf_counter()
        local = scratch.make_dir(f"ckpt-r{self.info.rank}-")
        try:
            tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer).write(
                os.path.join(local, checkpoints.WEIGHTS_PREFIX)
            )
            if self.info.rank == 0:
                state = {
                    "epoch": epoch,
                    "val_loss": row.get("val_loss"),
                    "learning_rate": next_lr,  # what the next epoch uses, after ReduceLR
                    "best": dict(self.best),
                    "reduce_lr": self.reduce_lr.snapshot() if self.reduce_lr else None,
                    "early_stopping": self.early_stop.snapshot() if self.early_stop else None,
                    "backbone_unfrozen": bool(self.unfreeze and self.unfreeze.unfrozen),
                    "history": self.history,
                    "class_names": list(self.plan.class_names),
                    "config": config_to_dict(self.cfg),
                }
                with open(os.path.join(local, checkpoints.STATE), "w") as fh:
                    json.dump(state, fh, indent=2, default=float)
                checkpoints.write_manifest(local)
            self.telemetry.record_checkpoint(time.perf_counter() - start, ok=True)
            return local
        except Exception:
            self.telemetry.record_checkpoint(time.perf_counter() - start, ok=False)
            raise

    def _log_line(self, epoch: int, row: dict, seconds: float) -> None:
        total = self.cfg.training.epochs
        images = self.plan.steps_per_epoch * self.plan.batch_size_per_worker * self.info.world_size
        eta = seconds * (total - epoch)
        parts = [f"epoch {epoch}/{total}"]
        for key in ("loss", "val_loss", "val_binary_accuracy", "val_macro_f1", "val_mean_average_precision"):
            if key in row:
                parts.append(f"{key} {row[key]:.4f}")
        parts.append(f"lr {row['learning_rate']:.2g}")
        parts.append(f"{images / max(seconds, 1e-9):.0f} img/s")
        parts.append(f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        log.info("  ".join(parts))


class TensorBoardSync(tf_keras.callbacks.Callback):
    """Copies rank 0's local event files to RUN/tensorboard/ after every epoch."""

    def __init__(self, local_dir: str, uri: str):
        super().__init__()
        self.local_dir, self.uri = local_dir, uri

    def on_epoch_end(self, epoch, logs=None):
        try:
            storage.upload_dir(self.local_dir, self.uri)
        except Exception as exc:  # TensorBoard is a convenience; never fail a run for it
            log.warning("could not sync TensorBoard files to %s: %s", self.uri, exc)


def build_callbacks(
    cfg: Config,
    plan,
    info,
    *,
    state: dict,
    reporter: Reporter,
    telemetry: WorkerTelemetry,
    clock: InputClock,
    history: list[dict],
    best: dict,
    release_inputs: Callable[[], None] | None,
) -> list[tf_keras.callbacks.Callback]:
    """The worker's callbacks, in the order Keras must call them.

    Args:
        state: the restored checkpoint's state.json ({} for a fresh run).
        history, best: filled in epoch by epoch (shared with the caller).
    """
    tcfg = cfg.training
    callbacks: list[tf_keras.callbacks.Callback] = []
    # 0. The transfer recipe's unfreeze, at an epoch's start, before anything of that epoch runs.
    unfreeze = None
    if cfg.transfer.frozen_epochs:
        unfreeze = UnfreezeBackbone(cfg.transfer, bool(state.get("backbone_unfrozen")), info.rank)
        callbacks.append(unfreeze)
    # 1. LearningRateLog first: it records the rate this epoch used, before ReduceLR changes it.
    callbacks.append(LearningRateLog())
    # 2. Step timing and input wait for Prometheus; independent of the rest.
    callbacks.append(StepTelemetry(telemetry, clock, plan.batch_size_per_worker))
    # 3. A drill's kill happens at a step boundary, before any epoch-end work.
    if os.environ.get(FAULT_KILL_ENV):
        callbacks.append(FaultInjection(info.rank, os.environ[FAULT_KILL_ENV]))
    if tcfg.terminate_on_nan:
        callbacks.append(tf_keras.callbacks.TerminateOnNaN())
    # 4. ReduceLR and EarlyStopping decide on this epoch's val_loss ...
    reduce_lr = early_stop = None
    if tcfg.schedule == "plateau" and tcfg.reduce_lr_patience_epochs:
        reduce_lr = ResumableReduceLR(
            state.get("reduce_lr"),
            monitor="val_loss",
            patience=tcfg.reduce_lr_patience_epochs,
            factor=tcfg.reduce_lr_factor,
            min_lr=tcfg.min_learning_rate,
            verbose=0,
        )
        callbacks.append(reduce_lr)
    if tcfg.early_stopping_patience_epochs:
        early_stop = ResumableEarlyStopping(
            state.get("early_stopping"), monitor="val_loss", patience=tcfg.early_stopping_patience_epochs, verbose=0
        )
        callbacks.append(early_stop)
    # 5. TensorBoard after LearningRateLog, so the logs it writes include the learning rate.
    if tcfg.tensorboard and info.rank == 0:
        tb_dir = scratch.make_dir("tensorboard-")
        callbacks.append(tf_keras.callbacks.TensorBoard(tb_dir, write_graph=False, profile_batch=0))
        callbacks.append(TensorBoardSync(tb_dir, RunStore(plan.run_uri).tensorboard_uri))
    # 6. ... and the checkpoint comes after them, so the state it saves includes their decisions.
    callbacks.append(
        CheckpointAndReport(cfg, plan, info, reporter, telemetry, reduce_lr, early_stop, history, best, unfreeze)
    )
    # 7. Last: stop the input sources once no rank will read them again.
    if release_inputs is not None:
        callbacks.append(tf_keras.callbacks.LambdaCallback(on_train_end=lambda logs: release_inputs()))
    return callbacks
