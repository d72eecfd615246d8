"""Per-worker training: build, resume, fit, checkpoint, report. No Ray import.

The same function runs in a single process (`train --local`) and inside every Ray Train
worker. It talks to the outside through a `Reporter` (where checkpoints and per-epoch
metrics go) and a `WorkerTelemetry` (Prometheus).

Distributed invariants this module keeps:
- every rank runs the same number of steps per epoch (fixed `steps_per_epoch`, fixed-size
  batches), so no collective or report barrier can deadlock;
- every rank sees the whole validation split, so validation metrics (and therefore the
  LR-on-plateau and early-stopping decisions) are identical on every rank;
- every rank takes part in saving (reading BatchNorm's synced variables is a collective);
  only rank 0's copy is reported.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import tensorflow as tf
import tf_keras

from job import checkpoints, storage
from job.config import Config, config_to_dict
from job.inputs import InputClock, make_pipeline
from job.model import build_model, compile_model, set_precision_policy
from job.telemetry import WorkerTelemetry

log = logging.getLogger("job.train")

# Keys of the per-epoch log that go to history.json, reports and Prometheus.
EPOCH_KEYS = ("loss", "binary_accuracy", "cosine_similarity", "macro_f1", "mean_average_precision")


class Reporter(Protocol):
    """Where a worker sends its per-epoch metrics and (rank 0) its checkpoint folder."""

    def report(self, metrics: dict, checkpoint_dir: str | None, epoch: int) -> None: ...


@dataclass(frozen=True)
class WorkerInfo:
    """This worker's place in the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


@dataclass(frozen=True)
class TrainPlan:
    """What the driver decided from the manifest and config; identical on every rank."""

    run_uri: str
    run_name: str
    class_names: tuple[str, ...]
    steps_per_epoch: int
    validation_steps: int
    batch_size_per_worker: int


def make_strategy(world_size: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy for a group; the default strategy for one worker.

    One worker gains nothing from the collective machinery and pays for it in step time.
    """
    if world_size > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


# ---------------------------------------------------------------------------- callbacks


class ResumableReduceLR(tf_keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a restart (Keras resets them in on_train_begin)."""

    def __init__(self, state: dict | None, **kwargs):
        super().__init__(**kwargs)
        self._resume = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in ("wait", "cooldown_counter", "best"):
            if key in self._resume:
                setattr(self, key, self._resume[key])

    def snapshot(self) -> dict:
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter), "best": float(self.best)}


class ResumableEarlyStopping(tf_keras.callbacks.EarlyStopping):
    """EarlyStopping whose counters survive a restart."""

    def __init__(self, state: dict | None, **kwargs):
        super().__init__(**kwargs)
        self._resume = state or {}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key in ("wait", "best", "best_epoch"):
            if key in self._resume:
                setattr(self, key, self._resume[key])

    def snapshot(self) -> dict:
        return {"wait": int(self.wait), "best": float(self.best), "best_epoch": int(self.best_epoch)}


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
            logs["learning_rate"] = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))


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
            import signal

            with open(self.marker, "w") as fh:
                fh.write(f"killed at epoch {self.epoch} step {self.step}\n")
            log.warning("fault injection: killing this worker (pid %d) at epoch %d step %d",
                        os.getpid(), self.epoch, self.step)
            os.kill(os.getpid(), signal.SIGKILL)


class EpochEnd(tf_keras.callbacks.Callback):
    """At the end of each epoch: checkpoint (every rank saves, rank 0 keeps), report, log.

    It must come after ReduceLR and EarlyStopping in the callback list, so the state it
    saves includes their decisions for this epoch.
    """

    def __init__(self, cfg: Config, plan: TrainPlan, info: WorkerInfo, reporter: Reporter,
                 telemetry: WorkerTelemetry, reduce_lr: ResumableReduceLR | None,
                 early_stop: ResumableEarlyStopping | None, history: list[dict], best: dict):
        super().__init__()
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
        next_lr = float(tf_keras.backend.get_value(self.model.optimizer.learning_rate))
        row.setdefault("learning_rate", next_lr)
        row.pop("lr", None)
        row["epoch_seconds"] = seconds
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
        local = tempfile.mkdtemp(prefix=f"ckpt-r{self.info.rank}-")
        try:
            tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer).write(
                os.path.join(local, checkpoints.WEIGHTS_PREFIX))
            if self.info.rank == 0:
                state = {
                    "epoch": epoch,
                    "val_loss": row.get("val_loss"),
                    "learning_rate": next_lr,  # what the next epoch uses, after ReduceLR
                    "best": dict(self.best),
                    "reduce_lr": self.reduce_lr.snapshot() if self.reduce_lr else None,
                    "early_stopping": self.early_stop.snapshot() if self.early_stop else None,
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


# ---------------------------------------------------------------------------- the loop


def train_worker(cfg: Config, plan: TrainPlan, info: WorkerInfo,
                 train_examples: Callable[[], tf.data.Dataset], val_examples: Callable[[], tf.data.Dataset],
                 reporter: Reporter, telemetry: WorkerTelemetry,
                 release_inputs: Callable[[], None] | None = None) -> list[dict]:
    """Train (or resume) one worker's part of a run.

    Args:
        cfg: the resolved run config.
        plan: decisions shared by every rank (steps per epoch, run location).
        info: this worker's rank and group size.
        train_examples / val_examples: factories of (image bytes, labels) datasets; train is
            this worker's shard, val is the whole split.
        reporter: receives per-epoch metrics and rank 0's checkpoint folders.
        telemetry: Prometheus metrics of this worker.
        release_inputs: called once training ends (last epoch, early stop or error), before
            Keras drops its iterators; lets sources stop reads no rank will consume.
    Returns:
        The run's history (one dict per epoch, including epochs before a resume).
    """
    seed = cfg.training.seed
    tf_keras.utils.set_random_seed(seed)
    set_precision_policy(cfg.training.precision)
    strategy = make_strategy(info.world_size)
    restored = checkpoints.restore_latest(plan.run_uri)
    state = restored.state if restored else {}
    start_epoch = int(state.get("epoch", 0))
    if restored:
        if info.rank == 0:
            log.info("resuming from %s (epoch %d done, best val_loss %s)", restored.uri, start_epoch,
                     state.get("best", {}).get("val_loss"))
    if start_epoch >= cfg.training.epochs:
        if info.rank == 0:
            log.info("run already finished %d/%d epochs; nothing to train", start_epoch, cfg.training.epochs)
        return list(state.get("history", []))

    weights = local_weights(cfg.model.weights)
    with strategy.scope():
        model = build_model(cfg.model.backbone, len(plan.class_names), cfg.data.image_size,
                            weights=weights, freeze_backbone=cfg.model.freeze_backbone,
                            width=cfg.model.width, dropout_rate=cfg.model.dropout_rate,
                            precision=cfg.training.precision, seed=seed)
        compile_model(model, learning_rate=cfg.training.learning_rate, jit_compile=cfg.training.jit_compile)
        if restored:
            model.optimizer.build(model.trainable_variables)
            tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(restored.weights_prefix).expect_partial()
            model.optimizer.learning_rate.assign(float(state["learning_rate"]))
    if restored:
        checkpoints.remove_local(restored.local_dir)

    clock = InputClock()
    batch = plan.batch_size_per_worker
    # Each worker already holds its own shard; distribute_datasets_from_function stops
    # TensorFlow from sharding or re-batching it again.
    worker_seed = seed + 1000 * info.rank + start_epoch

    def train_fn(_ctx=None):
        ds = make_pipeline(train_examples(), cfg.data, training=True, batch_size=batch, seed=worker_seed,
                           repeat=True, drop_remainder=True)
        return clock.stamp(ds)

    def val_fn(_ctx=None):
        examples = val_examples()
        if cfg.data.cache_validation:
            # Every rank reads the whole val split each epoch; keep its encoded bytes after
            # the first pass instead of streaming them again.
            examples = examples.cache()
        return make_pipeline(examples, cfg.data, training=False, batch_size=batch)

    if info.world_size > 1:
        train_ds = strategy.distribute_datasets_from_function(train_fn)
        val_ds = strategy.distribute_datasets_from_function(val_fn)
    else:
        train_ds, val_ds = train_fn(), val_fn()

    history: list[dict] = list(state.get("history", []))
    best = dict(state.get("best", {}))
    tcfg = cfg.training
    # LearningRateLog first: it records the rate this epoch used, before ReduceLR changes it.
    callbacks: list[tf_keras.callbacks.Callback] = [LearningRateLog(), StepTelemetry(telemetry, clock, batch)]
    if os.environ.get("JOB_FAULT_KILL"):
        callbacks.append(FaultInjection(info.rank, os.environ["JOB_FAULT_KILL"]))
    if tcfg.terminate_on_nan:
        callbacks.append(tf_keras.callbacks.TerminateOnNaN())
    reduce_lr = early_stop = None
    if tcfg.reduce_lr_patience_epochs:
        reduce_lr = ResumableReduceLR(state.get("reduce_lr"), monitor="val_loss", patience=tcfg.reduce_lr_patience_epochs,
                                      factor=tcfg.reduce_lr_factor, min_lr=tcfg.min_learning_rate, verbose=0)
        callbacks.append(reduce_lr)
    if tcfg.early_stopping_patience_epochs:
        early_stop = ResumableEarlyStopping(state.get("early_stopping"), monitor="val_loss",
                                            patience=tcfg.early_stopping_patience_epochs, verbose=0)
        callbacks.append(early_stop)
    tb_dir = None
    if tcfg.tensorboard and info.rank == 0:
        tb_dir = tempfile.mkdtemp(prefix="tensorboard-")
        callbacks.append(tf_keras.callbacks.TensorBoard(tb_dir, write_graph=False, profile_batch=0))
        callbacks.append(TensorBoardSync(tb_dir, storage.join(plan.run_uri, "tensorboard")))
    callbacks.append(EpochEnd(cfg, plan, info, reporter, telemetry, reduce_lr, early_stop, history, best))

    if release_inputs is not None:
        callbacks.append(tf_keras.callbacks.LambdaCallback(on_train_end=lambda logs: release_inputs()))
    try:
        model.fit(train_ds, epochs=tcfg.epochs, initial_epoch=start_epoch, steps_per_epoch=plan.steps_per_epoch,
                  validation_data=val_ds, validation_steps=plan.validation_steps, callbacks=callbacks, verbose=0)
    finally:
        # On an error Keras skips on_train_end; the traceback still holds its iterators here.
        if release_inputs is not None:
            release_inputs()
    return history


def local_weights(weights: str) -> str:
    """model.weights as a local path: an s3:// weights file is fetched to a temp folder first."""
    if not storage.is_s3(weights):
        return weights
    local = os.path.join(tempfile.mkdtemp(prefix="weights-"), storage.basename(weights))
    storage.copy_file(weights, local)
    return local


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
