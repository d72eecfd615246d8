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
from job.storage.run_store import RunStore, checkpoint_dir_name
from job.training import checkpoints
from job.training.schedules import current_learning_rate
from job.training.transfer import UnfreezeBackbone, backbone_of

if TYPE_CHECKING:  # the telemetry object is passed in; training never imports prometheus_client
    from job.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)

# Set to "RANK:EPOCH:STEP:MARKER" to make one worker kill itself (fault-tolerance drills).
FAULT_KILL_ENV = "JOB_FAULT_KILL"


class Reporter(Protocol):
    """Where a worker sends its metrics and (rank 0) its checkpoint folder.

    Every rank calls `report` at the same points (Ray Train's report is a barrier). The
    reporter writes the checkpoint's manifest before publishing it; `sync=False` allows the
    upload to run in the background, after `report` returns.
    """

    def report(self, metrics: dict, checkpoint_dir: str | None, name: str, sync: bool) -> None: ...


class PreemptionNotices(Protocol):
    """How a worker learns that a node of its group is about to be taken away.

    Both methods are collectives: every rank calls them equally often, in the same order.
    """

    def poll(self) -> float | None:
        """The deadline (Unix seconds; inf when the notice has none) of a pending preemption, else None."""
        ...

    def agree(self, decision: bool) -> bool:
        """Rank 0's `decision`, on every rank."""
        ...


class TrainingPosition(tf_keras.callbacks.Callback):
    """Where training is: whole epochs done, and steps done of the current epoch.

    A run resumed from a mid-epoch checkpoint first fits the rest of that epoch, whose
    batches Keras numbers from 0: `offset` is the steps the checkpoint had already done.
    """

    def __init__(self, epoch: int = 0, step: int = 0):
        super().__init__()
        self.epoch, self.step, self._offset = epoch, step, step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self.step = epoch, self._offset

    def on_train_batch_end(self, batch, logs=None):
        self.step = self._offset + batch + 1

    def on_epoch_end(self, epoch, logs=None):
        self.epoch, self.step, self._offset = epoch + 1, 0, 0


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

    def on_train_end(self, logs=None):
        super().on_train_end(logs)
        # A resumed run fits twice (the rest of the interrupted epoch, then the others):
        # the second fit's on_train_begin must start from here, not from the checkpoint.
        self._resume = self.snapshot()

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

    def __init__(self, rank: int, spec: str, position: TrainingPosition):
        super().__init__()
        rank_s, epoch_s, step_s, self.marker = spec.split(":", 3)
        self.active = int(rank_s) == rank
        self.epoch, self.step = int(epoch_s), int(step_s)
        self.position = position

    def on_train_batch_begin(self, batch, logs=None):
        at = (self.position.epoch + 1, self.position.step)
        if self.active and at == (self.epoch, self.step) and not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write(f"killed at epoch {self.epoch} step {self.step}\n")
            log.warning(
                "fault injection: killing this worker (pid %d) at epoch %d step %d", os.getpid(), self.epoch, self.step
            )
            os.kill(os.getpid(), signal.SIGKILL)


class CheckpointAndReport(tf_keras.callbacks.Callback):
    """Checkpoints (every rank saves, rank 0 keeps) and reports: at epoch ends, and mid-epoch
    when `save_mid_epoch` is called (step interval, preemption notice).

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
        position: TrainingPosition,
        reduce_lr: ResumableReduceLR | None,
        early_stop: ResumableEarlyStopping | None,
        history: list[dict],
        best: dict,
        unfreeze: UnfreezeBackbone | None = None,
    ):
        super().__init__()
        self.unfreeze = unfreeze
        self.cfg, self.plan, self.info, self.reporter, self.telemetry = cfg, plan, info, reporter, telemetry
        self.position = position
        self.reduce_lr, self.early_stop = reduce_lr, early_stop
        self.history, self.best = history, best
        self.slowest_save_seconds = 0.0
        self._epoch_start = time.perf_counter()
        self._epoch_start_time = time.time()
        self._s3_retries = storage.retry_count()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_start_time = time.time()

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        seconds = time.perf_counter() - self._epoch_start
        row = {"epoch": done, **{k: float(v) for k, v in (logs or {}).items() if np.isscalar(v)}}
        # Wall clock at the epoch's start: the gaps between rows include each epoch's checkpoint
        # (epoch_seconds covers training and validation only).
        row["epoch_start_time"] = self._epoch_start_time
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
        ckpt_dir = self._save(done, 0, val_loss=row.get("val_loss"), learning_rate=next_lr) if save else None
        metrics = {k: v for k, v in row.items() if isinstance(v, float) and not math.isnan(v)} | {"epoch": done}
        # The last checkpoint is the run's result: the driver reads it as soon as fit() returns.
        self._report(metrics, ckpt_dir, done, 0, sync=last or self.cfg.checkpoint.upload == "sync")
        if self.info.rank == 0:
            self._log_line(done, row, seconds)

    def save_mid_epoch(self, sync: bool) -> tuple[int, int]:
        """Checkpoint and report the current step (every rank calls it at the same step).

        Returns the (epochs done, steps of the next epoch done) the checkpoint holds.
        """
        epoch, step = self.position.epoch, self.position.step
        lr = current_learning_rate(self.model.optimizer)
        ckpt_dir = self._save(epoch, step, val_loss=None, learning_rate=lr)
        # No validation mid-epoch: an infinite val_loss ranks the checkpoint last among those
        # Ray Train keeps by val_loss, so it lives only while it is the latest.
        metrics = {"epoch": epoch, "step_in_epoch": step, "val_loss": float("inf")}
        self._report(metrics, ckpt_dir, epoch, step, sync=sync or self.cfg.checkpoint.upload == "sync")
        if self.info.rank == 0:
            log.info("checkpoint at epoch %d step %d/%d", epoch + 1, step, self.plan.steps_per_epoch)
        return epoch, step

    def _report(self, metrics: dict, ckpt_dir: str | None, epoch: int, step: int, sync: bool) -> None:
        self.reporter.report(
            metrics, ckpt_dir if self.info.rank == 0 else None, checkpoint_dir_name(epoch, step), sync=sync
        )
        if ckpt_dir and self.info.rank != 0:
            shutil.rmtree(ckpt_dir, ignore_errors=True)

    def _save(self, epoch: int, step: int, val_loss: float | None, learning_rate: float) -> str:
        """Write this rank's checkpoint to a local folder (the manifest is the reporter's job)."""
        start = time.perf_counter()
        local = scratch.make_dir(f"ckpt-r{self.info.rank}-")
        try:
            tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer).write(
                os.path.join(local, checkpoints.WEIGHTS_PREFIX)
            )
            if self.info.rank == 0:
                state = {
                    "epoch": epoch,
                    "step_in_epoch": step,
                    "val_loss": val_loss,
                    "learning_rate": learning_rate,  # what the next step uses, after ReduceLR
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
            seconds = time.perf_counter() - start
            self.slowest_save_seconds = max(self.slowest_save_seconds, seconds)
            self.telemetry.record_checkpoint(seconds, ok=True)
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


class StepCheckpoints(tf_keras.callbacks.Callback):
    """A mid-epoch checkpoint every `every_steps` steps of an epoch (not at its end: the
    epoch-end checkpoint follows there)."""

    def __init__(self, checkpoint: CheckpointAndReport, position: TrainingPosition, every_steps: int, steps: int):
        super().__init__()
        self.checkpoint, self.position, self.every_steps, self.steps = checkpoint, position, every_steps, steps

    def on_train_batch_end(self, batch, logs=None):
        step = self.position.step
        if step % self.every_steps == 0 and step < self.steps:
            self.checkpoint.save_mid_epoch(sync=False)


class PreemptionGuard(tf_keras.callbacks.Callback):
    """Turns a preemption notice into a just-in-time checkpoint, then waits to be restarted.

    Every `check_steps` steps all ranks ask `notices.poll()`. Once a notice is out, they keep
    training while the deadline is far, and save when rank 0 judges it near: `margin_seconds`,
    or 3 x the slowest save so far if that is longer, plus one check interval of steps. After the
    save the workers train no further (a step after it would be lost) and wait for Ray Train
    to restart the group on the remaining nodes, which it does at the deadline. If no restart
    comes by the deadline + `hold_seconds`, the notice is treated as withdrawn and training
    goes on.
    """

    HOLD_SECONDS = 120.0

    def __init__(
        self,
        notices: PreemptionNotices,
        checkpoint: CheckpointAndReport,
        position: TrainingPosition,
        steps: int,
        check_steps: int,
        margin_seconds: float,
        on_notice: Callable[[float, tuple[int, int]], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__()
        self.notices, self.checkpoint, self.position = notices, checkpoint, position
        self.steps, self.check_steps, self.margin_seconds = steps, check_steps, margin_seconds
        self.on_notice, self.sleep, self.clock = on_notice, sleep, clock
        self._calls = 0
        self._last_check = clock()
        self._check_interval = 0.0
        self._handled_deadline: float | None = None
        self.saved_at: tuple[int, int] | None = None

    def on_train_batch_end(self, batch, logs=None):
        # The epoch's last step is followed by its epoch-end checkpoint; a mid-epoch one at
        # the same step could not be resumed (no steps would be left to fit).
        if self.position.step >= self.steps:
            return
        self._calls += 1
        if self._calls % self.check_steps:
            return
        now = self.clock()
        self._check_interval, self._last_check = max(0.0, now - self._last_check), now
        deadline = self.notices.poll()
        if deadline is None or deadline == self._handled_deadline:
            return
        if self.saved_at is None and self._handled_deadline is None and self.on_notice is not None:
            self.on_notice(deadline, (self.position.epoch, self.position.step))
            self.on_notice = None
        if not self.notices.agree(self._time_to_save(deadline)):
            return
        self.saved_at = self.checkpoint.save_mid_epoch(sync=True)
        log.warning(
            "preemption: checkpoint at epoch %d step %d saved %s before the deadline; waiting for the restart",
            self.saved_at[0] + 1,
            self.saved_at[1],
            "unknown" if math.isinf(deadline) else f"{deadline - self.clock():.1f} s",
        )
        self._hold(deadline)

    def _time_to_save(self, deadline: float) -> bool:
        if math.isinf(deadline):  # no deadline given: Ray Train restarts within 120 s, save now
            return True
        margin = max(self.margin_seconds, 3 * self.checkpoint.slowest_save_seconds) + self._check_interval
        return self.clock() >= deadline - margin

    def _hold(self, deadline: float) -> None:
        end = (self.clock() if math.isinf(deadline) else deadline) + self.HOLD_SECONDS
        while self.clock() < end:
            self.sleep(min(1.0, max(0.0, end - self.clock())))
        log.warning("preemption: no restart came %.0f s after the deadline; training on", self.HOLD_SECONDS)
        self._handled_deadline = deadline
        self.saved_at = None
        self._last_check = self.clock()


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
    position: TrainingPosition,
    history: list[dict],
    best: dict,
    notices: PreemptionNotices | None = None,
    on_preemption_notice: Callable[[float, tuple[int, int]], None] | None = None,
) -> list[tf_keras.callbacks.Callback]:
    """The worker's callbacks, in the order Keras must call them.

    Args:
        state: the restored checkpoint's state.json ({} for a fresh run).
        position: where training is (shared with the caller, which created it at the resume point).
        history, best: filled in epoch by epoch (shared with the caller).
        notices: preemption notices (Ray runs); None where nothing can be preempted.
        on_preemption_notice: called once, on the first notice, with (deadline, position).
    """
    tcfg = cfg.training
    # 0. The position first: every callback after it reads this step's position.
    callbacks: list[tf_keras.callbacks.Callback] = [position]
    # 1. The transfer recipe's unfreeze, at an epoch's start, before anything of that epoch runs.
    unfreeze = None
    if cfg.transfer.frozen_epochs:
        unfreeze = UnfreezeBackbone(cfg.transfer, bool(state.get("backbone_unfrozen")), info.rank)
        callbacks.append(unfreeze)
    # 2. LearningRateLog first: it records the rate this epoch used, before ReduceLR changes it.
    callbacks.append(LearningRateLog())
    # 3. Step timing and input wait for Prometheus; independent of the rest.
    callbacks.append(StepTelemetry(telemetry, clock, plan.batch_size_per_worker))
    # 4. A drill's kill happens at a step boundary, before any epoch-end work.
    if os.environ.get(FAULT_KILL_ENV):
        callbacks.append(FaultInjection(info.rank, os.environ[FAULT_KILL_ENV], position))
    if tcfg.terminate_on_nan:
        callbacks.append(tf_keras.callbacks.TerminateOnNaN())
    # 5. ReduceLR and EarlyStopping decide on this epoch's val_loss ...
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
    # 6. TensorBoard after LearningRateLog, so the logs it writes include the learning rate.
    if tcfg.tensorboard and info.rank == 0:
        tb_dir = scratch.make_dir("tensorboard-")
        callbacks.append(tf_keras.callbacks.TensorBoard(tb_dir, write_graph=False, profile_batch=0))
        callbacks.append(TensorBoardSync(tb_dir, RunStore(plan.run_uri).tensorboard_uri))
    # 7. ... and the checkpoint comes after them, so the state it saves includes their decisions.
    checkpoint = CheckpointAndReport(
        cfg, plan, info, reporter, telemetry, position, reduce_lr, early_stop, history, best, unfreeze
    )
    callbacks.append(checkpoint)
    # 8. Mid-epoch saves after the step's other work; the preemption guard last, since it may
    # wait there for the end of this worker.
    if cfg.checkpoint.every_steps:
        callbacks.append(StepCheckpoints(checkpoint, position, cfg.checkpoint.every_steps, plan.steps_per_epoch))
    if notices is not None:
        callbacks.append(
            PreemptionGuard(
                notices,
                checkpoint,
                position,
                plan.steps_per_epoch,
                cfg.checkpoint.preemption_check_steps,
                cfg.checkpoint.preemption_margin_seconds,
                on_notice=on_preemption_notice,
            )
        )
    return callbacks
