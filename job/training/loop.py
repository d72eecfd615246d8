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

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import tensorflow as tf
import tf_keras

from job import storage
from job.config import Config
from job.data.pipeline import InputClock, ShardFiles, make_pipeline
from job.errors import UserError
from job.storage import scratch
from job.training import checkpoints, transfer
from job.training.callbacks import PreemptionNotices, Reporter, TrainingPosition, build_callbacks
from job.training.losses import loss_for
from job.training.model import build_model, compile_model, set_precision_policy
from job.training.schedules import has_schedule, learning_rate_for

if TYPE_CHECKING:  # the telemetry object is passed in; training never imports prometheus_client
    from job.telemetry import WorkerTelemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerInfo:
    """This worker's place in the group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


@dataclass(frozen=True)
class WorkerPlan:
    """What the driver decided from the manifest and config; identical on every rank."""

    run_uri: str
    run_name: str
    class_names: tuple[str, ...]
    steps_per_epoch: int
    validation_steps: int
    batch_size_per_worker: int
    # The run's global batch and val split size; with them a worker group of another size
    # (an elastic run) keeps the global batch (`plan_for_group`).
    global_batch_size: int = 0
    val_examples: int = 0


def plan_for_group(plan: WorkerPlan, world_size: int) -> WorkerPlan:
    """The plan for a worker group of `world_size`: the same global batch, split over the group.

    An elastic run keeps its global batch, steps per epoch and LR schedule whatever the group's
    size, so an optimizer step means the same thing before and after a resize and a mid-epoch
    checkpoint resumes at the same step. Each worker's batch is the global batch / world size,
    rounded up (the global batch then grows by less than one example per worker).
    """
    if not plan.global_batch_size:
        return plan
    batch = -(-plan.global_batch_size // world_size)
    if batch == plan.batch_size_per_worker:
        return plan
    return dataclasses.replace(
        plan,
        batch_size_per_worker=batch,
        validation_steps=max(1, -(-plan.val_examples // batch)) if plan.val_examples else plan.validation_steps,
    )


def shard_files(data_uri: str, manifest, cfg: Config, plan: WorkerPlan, info: WorkerInfo) -> ShardFiles:
    """This worker's examples read straight from the data set's shard files (the direct ingest path).

    Each pass is one epoch: this rank's steps per epoch x batch examples of the part drawn for
    that epoch from the run's seed (the same on every rank, so parts never overlap).
    """
    return ShardFiles(
        data_uri,
        manifest,
        seed=cfg.training.seed,
        rank=info.rank,
        world_size=info.world_size,
        examples_per_epoch=plan.steps_per_epoch * plan.batch_size_per_worker,
    )


def make_strategy(world_size: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy for a group; the default strategy for one worker.

    One worker gains nothing from the collective machinery and pays for it in step time.
    """
    if world_size > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def train_worker(
    cfg: Config,
    plan: WorkerPlan,
    info: WorkerInfo,
    train_examples: Callable[[int], tf.data.Dataset],
    val_examples: Callable[[], tf.data.Dataset],
    reporter: Reporter,
    telemetry: WorkerTelemetry,
    release_inputs: Callable[[], None] | None = None,
    notices: PreemptionNotices | None = None,
    on_preemption_notice: Callable[[float, tuple[int, int]], None] | None = None,
) -> list[dict]:
    """Train (or resume) one worker's part of a run.

    Args:
        cfg: the resolved run config.
        plan: decisions shared by every rank (steps per epoch, run location).
        info: this worker's rank and group size.
        train_examples / val_examples: factories of (image bytes, labels) datasets; train is
            this worker's part of the split (called with the epoch its first pass is, so a
            source that assigns data by epoch resumes with the right one), val is the whole split.
        reporter: receives metrics and rank 0's checkpoint folders.
        telemetry: Prometheus metrics of this worker.
        release_inputs: called once training ends (last epoch, early stop or error), before
            Keras drops its iterators; lets sources stop reads no rank will consume.
        notices: preemption notices (Ray runs); None where nothing can be preempted.
        on_preemption_notice: called once on the first notice, with (deadline, position).
    Returns:
        The run's history (one dict per epoch, including epochs before a resume).
    """
    tf_keras.utils.set_random_seed(cfg.training.seed)
    set_precision_policy(cfg.training.precision)
    strategy = make_strategy(info.world_size)
    restored = checkpoints.restore_latest(plan.run_uri)
    state = restored.state if restored else {}
    start_epoch = restored.epoch if restored else 0
    start_step = restored.step_in_epoch if restored else 0
    if start_step >= plan.steps_per_epoch:
        raise UserError(
            f"The latest checkpoint {restored.uri} is at step {start_step} of an epoch, but this run has "
            f"{plan.steps_per_epoch} steps per epoch: the data set, batch size or worker count changed. "
            "Resume with the same settings, or train into a new --output."
        )
    if restored and info.rank == 0:
        log.info(
            "resuming from %s (epoch %d done%s, best val_loss %s)",
            restored.uri,
            start_epoch,
            f" and {start_step} steps of the next" if start_step else "",
            state.get("best", {}).get("val_loss"),
        )
    if start_epoch >= cfg.training.epochs:
        if info.rank == 0:
            log.info("run already finished %d/%d epochs; nothing to train", start_epoch, cfg.training.epochs)
        return list(state.get("history", []))

    model = build_or_restore_model(cfg, len(plan.class_names), strategy, restored, plan.steps_per_epoch)
    clock = InputClock()
    # A resumed run draws a fresh order: the seed moves with the position (see docs/spot.md,
    # "The data order of a resumed epoch", for what this means for the examples of an interrupted epoch).
    train_ds, val_ds = make_datasets(
        cfg,
        plan,
        info,
        strategy,
        clock,
        train_examples,
        val_examples,
        seed=cfg.training.seed + 1000 * info.rank + start_epoch + 7919 * start_step,
        first_epoch=start_epoch,
    )
    history: list[dict] = list(state.get("history", []))
    best = dict(state.get("best", {}))
    position = TrainingPosition(start_epoch, start_step)
    callbacks = build_callbacks(
        cfg,
        plan,
        info,
        state=state,
        reporter=reporter,
        telemetry=telemetry,
        clock=clock,
        position=position,
        history=history,
        best=best,
        notices=notices,
        on_preemption_notice=on_preemption_notice,
    )
    fit = functools.partial(
        model.fit, train_ds, validation_data=val_ds, validation_steps=plan.validation_steps, verbose=0
    )
    try:
        if start_step:
            # The rest of the interrupted epoch: Keras cannot start an epoch at a step, so this
            # epoch is a fit of its own with the steps that were left.
            fit(
                epochs=start_epoch + 1,
                initial_epoch=start_epoch,
                steps_per_epoch=plan.steps_per_epoch - start_step,
                callbacks=callbacks,
            )
            start_epoch += 1
        if start_epoch < cfg.training.epochs and not model.stop_training:
            final = callbacks
            if release_inputs is not None:
                # Last: stop the input sources once no rank will read them again.
                final = callbacks + [tf_keras.callbacks.LambdaCallback(on_train_end=lambda logs: release_inputs())]
            fit(
                epochs=cfg.training.epochs,
                initial_epoch=start_epoch,
                steps_per_epoch=plan.steps_per_epoch,
                callbacks=final,
            )
    finally:
        # On an error Keras skips on_train_end; the traceback still holds its iterators here.
        if release_inputs is not None:
            release_inputs()
    return history


def build_or_restore_model(
    cfg: Config,
    num_classes: int,
    strategy: tf.distribute.Strategy,
    restored: checkpoints.RestoredCheckpoint | None,
    steps_per_epoch: int,
) -> tf_keras.Model:
    """Build and compile the model under the strategy; load weights, optimizer and LR when resuming.

    With the transfer recipe on, the model is built frozen until the checkpoint says the
    backbone was unfrozen, and the optimizer gets slots for every variable that will train.
    """
    weights = local_weights(cfg.model.weights)
    recipe = cfg.transfer.frozen_epochs > 0
    unfrozen = bool(restored and restored.state.get("backbone_unfrozen"))
    with strategy.scope():
        model = build_model(
            cfg.model.backbone,
            num_classes,
            cfg.data.image_size,
            weights=weights,
            freeze_backbone=cfg.model.freeze_backbone or (recipe and not unfrozen),
            backbone_inference=recipe,
            width=cfg.model.width,
            dropout_rate=cfg.model.dropout_rate,
            precision=cfg.training.precision,
            seed=cfg.training.seed,
        )
        if recipe and unfrozen:
            transfer.set_unfrozen(model, cfg.transfer)
        learning_rate = learning_rate_for(
            cfg.training,
            steps_per_epoch,
            unfreeze_epoch=cfg.transfer.frozen_epochs if recipe else None,
            unfreeze_factor=cfg.transfer.learning_rate_factor,
        )
        compile_model(
            model,
            learning_rate=learning_rate,
            loss=loss_for(cfg.training),
            weight_decay=cfg.training.weight_decay,
            jit_compile=cfg.training.jit_compile,
        )
        # Slots for every variable that will ever train, so checkpoints before and after the
        # unfreeze hold the same optimizer variables (and resume into either phase).
        model.optimizer.build(
            transfer.variables_that_will_train(model, cfg.transfer) if recipe else model.trainable_variables
        )
        if restored:
            tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(restored.weights_prefix).expect_partial()
            # A schedule is a function of the restored step counter; a plain LR is state.
            if not has_schedule(model.optimizer):
                model.optimizer.learning_rate.assign(float(restored.state["learning_rate"]))
    if restored:
        checkpoints.remove_local(restored.local_dir)
    return model


def make_datasets(
    cfg: Config,
    plan: WorkerPlan,
    info: WorkerInfo,
    strategy: tf.distribute.Strategy,
    clock: InputClock,
    train_examples: Callable[[int], tf.data.Dataset],
    val_examples: Callable[[], tf.data.Dataset],
    seed: int,
    first_epoch: int = 0,
):
    """(train, val) input pipelines of this worker, distributed when the group has several."""
    batch = plan.batch_size_per_worker

    def train_fn(_ctx=None):
        ds = make_pipeline(
            train_examples(first_epoch),
            cfg.data,
            training=True,
            batch_size=batch,
            seed=seed,
            repeat=True,
            drop_remainder=True,
        )
        return clock.stamp(ds)

    def val_fn(_ctx=None):
        examples = val_examples()
        if cfg.data.cache_validation:
            # Every rank reads the whole val split each epoch; keep its encoded bytes after
            # the first pass instead of streaming them again.
            examples = examples.cache()
        return make_pipeline(examples, cfg.data, training=False, batch_size=batch)

    if info.world_size == 1:
        return train_fn(), val_fn()
    # Each worker already holds its own shard; distribute_datasets_from_function stops
    # TensorFlow from sharding or re-batching it again.
    return strategy.distribute_datasets_from_function(train_fn), strategy.distribute_datasets_from_function(val_fn)


def local_weights(weights: str) -> str:
    """model.weights as a local path: an s3:// weights file is fetched to a temp folder first."""
    if not storage.is_s3(weights):
        return weights
    local = os.path.join(scratch.make_dir("weights-"), storage.basename(weights))
    storage.copy_file(weights, local)
    return local
