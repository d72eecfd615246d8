"""Batch inference on Ray Data: `python -m job predict --data URI --output URI`.

Flow (the input is listed and cut into parts before Ray starts, `evaluation.batch_sources`):

    parts (one row each) -> read + decode + resize, CPU tasks, streamed in batches
        -> the model, in a fixed pool of actors (one GPU each when the cluster has GPUs)
        -> this driver: a part's rows are collected until the part is complete, then
           written as one Parquet file (`evaluation.batch_outputs`) and dropped

Only probabilities travel back to the driver, so its memory holds the incomplete parts'
scores, never pixels; Ray Data's streaming executor bounds what is in flight. A rerun into
the same output skips the parts already written. An image that cannot be read, is not an
image, or is above the model's pixel limit becomes a row with an `error`, not a failed job
(unless `fail_on_bad_image`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import ray

from job import storage
from job.cluster.runtime import join_cluster_in_env, quiet_ray_data
from job.console import is_verbose, quiet_libraries
from job.errors import UserError
from job.evaluation import batch_outputs
from job.evaluation.batch_sources import KIND_SHARD, Inputs, Part

log = logging.getLogger(__name__)

PROGRESS_EVERY_SECONDS = 10.0
# What a decode task holds: its TensorFlow, a batch of encoded images and their pixels.
DECODE_TASK_MEMORY_BYTES = 2**30  # 449 MiB measured at 224 px, batch 64 (Ray Data reports the peak)


@dataclass(frozen=True)
class PoolSettings:
    """The model's actor pool and the batches it is fed."""

    actors: int | None = None  # None: one per GPU when the cluster has GPUs, else 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    batch_size: int = 64  # images per model call


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs of the model to write the outputs (read once, before Ray work)."""

    uri: str
    class_names: list[str]
    thresholds: np.ndarray
    image_size: int
    max_pixels: int | None
    identity: str = ""  # the checkpoint (and export time): a rerun must use the same model


# ---------------------------------------------------------------------------- cluster


def connect(pool: PoolSettings) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray with room for the pool and decode tasks."""
    if ray.is_initialized():
        return
    level = logging.INFO if is_verbose() else logging.WARNING
    if not join_cluster_in_env(level):
        _start_local(pool, level)
    quiet_libraries(is_verbose())  # Ray set its own loggers up as it started


def _start_local(pool: PoolSettings, level: int) -> None:
    # The actors' CPUs plus at least one for the decode tasks, or they are never scheduled.
    actors = pool.actors or 1
    num_cpus = max(os.cpu_count() or 1, int(np.ceil(actors * pool.cpus_per_actor)) + 1)
    log.info("starting a local Ray with %d logical CPUs (%d model actor(s) + decode tasks)", num_cpus, actors)
    ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=level, log_to_driver=True)


def resolve_pool(pool: PoolSettings) -> PoolSettings:
    """Fill in the defaults from the cluster (one actor per GPU when there are GPUs), and check
    that the pool fits: Ray Data would wait for actors that can never start, silently."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    gpus_per_actor = pool.gpus_per_actor if pool.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    actors = pool.actors or (max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1)
    pool = dataclasses.replace(pool, actors=actors, gpus_per_actor=gpus_per_actor)
    problem = pool_shortfall(pool, resources)
    if problem and not os.environ.get("RAY_ADDRESS"):
        raise UserError(f"The model pool does not fit on this machine: {problem}. Ask for fewer with --actors.")
    if problem:  # an autoscaling cluster may still add the nodes
        log.warning("the model pool does not fit the cluster as it is now (%s): waiting for nodes to join", problem)
    return pool


def pool_shortfall(pool: PoolSettings, resources: dict) -> str | None:
    """What the pool's actors need beyond `resources` (a cluster's totals), or None."""
    need_gpus, have_gpus = pool.actors * (pool.gpus_per_actor or 0), resources.get("GPU", 0)
    if need_gpus > have_gpus:
        return (
            f"{pool.actors} actor(s) x {pool.gpus_per_actor:g} GPU need {need_gpus:g} GPU(s), there are {have_gpus:g}"
        )
    need_cpus, have_cpus = pool.actors * pool.cpus_per_actor, resources.get("CPU", 0)
    if need_cpus >= have_cpus:  # at least one CPU must stay for the decode tasks
        return (
            f"{pool.actors} actor(s) x {pool.cpus_per_actor:g} CPU need {need_cpus:g} CPU(s) and the decode tasks "
            f"one more, there are {have_cpus:g}"
        )
    return None


# ---------------------------------------------------------------------------- the job


def predict_dataset(
    model: ModelInfo,
    inputs: Inputs,
    output_uri: str,
    pool: PoolSettings,
    fail_on_bad_image: bool = False,
) -> dict:
    """Predict every part of `inputs` not yet under `output_uri`; returns _SUCCESS's content.

    Raises:
        UserError: the output holds another job; a bad image with `fail_on_bad_image`.
    """
    started = time.monotonic()
    batch_outputs.start_or_resume(
        output_uri,
        {
            "model": model.uri,
            "model_identity": model.identity,
            "inputs_fingerprint": inputs.fingerprint,
            "inputs": inputs.description,
            "key_column": inputs.key_column,
            "class_names": model.class_names,
            "thresholds": [float(t) for t in model.thresholds],
            "parts": len(inputs.parts),
        },
    )
    done = batch_outputs.completed_parts(output_uri)
    todo = [p for p in inputs.parts if p.name not in done]
    if done:
        log.info(
            "resuming: %d of %d part(s) already written under %s",
            len(inputs.parts) - len(todo),
            len(inputs.parts),
            output_uri,
        )
    log.info(
        "predicting %s: %d image(s) in %d part(s) to do", inputs.description, sum(p.count for p in todo), len(todo)
    )
    images_now = 0
    if todo:
        connect(pool)
        pool = resolve_pool(pool)
        log.info(
            "model pool: %d actor(s), %g CPU and %g GPU each, %d images per call",
            pool.actors,
            pool.cpus_per_actor,
            pool.gpus_per_actor,
            pool.batch_size,
        )
        images_now = _run(model, inputs.key_column, todo, output_uri, pool, fail_on_bad_image)
    seconds = time.monotonic() - started
    totals = batch_outputs.count_outputs(output_uri, inputs.key_column)
    missing = {p.name for p in inputs.parts} - batch_outputs.completed_parts(output_uri)
    if missing:
        raise UserError(
            f"{len(missing)} part(s) were not written (e.g. {sorted(missing)[0]}); run the same command again to "
            "finish them."
        )
    if totals.images and not totals.predicted:
        raise UserError(
            f"None of the {totals.images} image(s) could be predicted; the first: {totals.bad[0][0]}: "
            f"{totals.bad[0][1]}. On a cluster, --data must be readable from every node (s3://, not a local path)."
        )
    record = batch_outputs.write_success(
        output_uri,
        totals,
        {
            "model": model.uri,
            "inputs": inputs.description,
            "class_names": model.class_names,
            "thresholds": [float(t) for t in model.thresholds],
            "images_this_run": images_now,
            "seconds_this_run": round(seconds, 1),
            "images_per_second_this_run": round(images_now / seconds, 1) if seconds > 0 else None,
        },
    )
    if totals.bad:
        log.warning(
            "%d image(s) could not be predicted (listed in %s and in each part's `error` column), e.g. %s: %s",
            len(totals.bad),
            storage.join(output_uri, batch_outputs.SUCCESS_FILE),
            totals.bad[0][0],
            totals.bad[0][1],
        )
    log.info(
        "predicted %d of %d image(s) into %d part(s) under %s",
        totals.predicted,
        totals.images,
        totals.parts,
        output_uri,
    )
    return record


def _run(model: ModelInfo, key_column: str, todo: list[Part], output_uri: str, pool: PoolSettings, strict: bool) -> int:
    """Stream the parts through decode tasks and the actor pool; write each part once complete."""
    quiet_ray_data()
    parts = ray.data.from_items([{"part": json.dumps(dataclasses.asdict(p))} for p in todo])
    # One part per decode task: parallel across parts, streamed in batches within one.
    decoded = parts.repartition(len(todo)).map_batches(
        functools.partial(decode_parts, image_size=model.image_size, max_pixels=model.max_pixels, rows=pool.batch_size),
        batch_size=1,
        batch_format="numpy",
        num_cpus=1,
        # A scheduling hint, and remote args unlike the actors', which keeps Ray Data from
        # fusing decode into the model actors: decode runs in tasks of its own, beside the
        # actors, on whichever nodes have CPUs. (Fused, the actor pool took all parts in one
        # task and wrote nothing until the end; on CPU it was no faster: docs/performance.md.)
        memory=DECODE_TASK_MEMORY_BYTES,
    )
    scored = decoded.map_batches(
        ModelActor,
        fn_constructor_args=(model.uri,),
        batch_size=pool.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool.actors),
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor,
    )
    pending: dict[str, dict[int, tuple[str, np.ndarray, str | None]]] = {}
    total = sum(p.count for p in todo)
    written = images = bad = 0
    start = last = time.monotonic()
    for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
        for name, index, key, scores, error, part_total in zip(
            batch["part"], batch["index"], batch["key"], batch["scores"], batch["error"], batch["part_total"]
        ):
            error = str(error) or None
            if error is not None:
                bad += 1
                if strict:
                    raise UserError(
                        f"{key}: {error} (--fail-on-bad-image). Remove or fix it, then run again to resume."
                    )
            rows = pending.setdefault(str(name), {})
            rows[int(index)] = (str(key), scores, error)
            images += 1
            if len(rows) == int(part_total):
                _write(output_uri, str(name), pending.pop(str(name)), key_column, model)
                written += 1
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_SECONDS:
            last = now
            log.info(
                "predicted %d/%d images (%.0f img/s), %d/%d parts written, %d bad",
                images,
                total,
                images / (now - start),
                written,
                len(todo),
                bad,
            )
    return images


def _write(output_uri: str, name: str, rows: dict, key_column: str, model: ModelInfo) -> None:
    ordered = [rows[i] for i in sorted(rows)]
    table = batch_outputs.part_table(
        key_column,
        [r[0] for r in ordered],
        np.stack([r[1] for r in ordered]),
        [r[2] for r in ordered],
        model.class_names,
        model.thresholds,
    )
    batch_outputs.write_part(output_uri, name, table)


# ---------------------------------------------------------------------------- decode tasks


def decode_parts(batch: dict, image_size: int, max_pixels: int | None, rows: int) -> Iterator[dict]:
    """Ray Data task: read each part's images and decode them at the model's size, `rows` at a time.

    Image files are read a chunk at a time, so a task holds `rows` encoded images, whatever
    the part size; a shard is one file, read whole (its size is the data set's choice).
    """
    decode = _decoder(image_size, max_pixels)
    for spec in batch["part"]:
        fields = json.loads(spec)
        part = Part(**{**fields, "uris": tuple(fields["uris"])})
        for start, total, chunk in _read_part(part, rows, max_pixels):
            pixels = np.zeros((len(chunk), image_size, image_size, 3), np.float32)
            errors = []
            for i, (_, data, problem) in enumerate(chunk):
                if problem is None:
                    try:
                        pixels[i] = decode(data)
                    except Exception as exc:  # noqa: BLE001 - TensorFlow's decode errors: one bad image
                        from job.evaluation.export import tf_error_reason

                        problem = f"not an image TensorFlow can decode ({tf_error_reason(exc)})"
                errors.append(problem or "")
            yield {
                "part": np.array([part.name] * len(chunk), dtype=object),
                "index": np.arange(start, start + len(chunk), dtype=np.int64),
                "key": np.array([key for key, _, _ in chunk], dtype=object),
                "pixels": pixels,
                "error": np.array(errors, dtype=object),
                "part_total": np.full(len(chunk), total, dtype=np.int64),
            }


def _read_part(part: Part, rows: int, max_pixels: int | None) -> Iterator[tuple[int, int, list]]:
    """(first index, images in the part, [(key, bytes, problem)]) per chunk of `rows` images;
    problem is None for an image to decode."""
    from job.data import shards
    from job.data.image_limits import check_pixel_limit

    def checked(items: list) -> list:
        if not max_pixels:
            return items
        limit = "the model's data.max_pixels"
        return [(key, data, problem or check_pixel_limit(data, max_pixels, limit)) for key, data, problem in items]

    if part.kind == KIND_SHARD:
        # A corrupt shard fails the job with the shard's name: it is the data set that is broken.
        examples = list(shards.read_shard(storage.read_bytes(part.uris[0]), part.format, part.uris[0]))
        for start in range(0, len(examples), rows):
            yield start, len(examples), checked([(e.id, e.image, None) for e in examples[start : start + rows]])
        return
    for start in range(0, len(part.uris), rows):
        yield start, len(part.uris), checked([(uri, *_read_image(uri)) for uri in part.uris[start : start + rows]])


def _read_image(uri: str) -> tuple[bytes, str | None]:
    try:
        return storage.read_bytes(uri), None
    except storage.StorageError:
        # A missing file is a bad input line; an endpoint or credential problem is not.
        if storage.exists(uri):
            raise
        return b"", "does not exist"


@functools.lru_cache(maxsize=4)
def _decoder(image_size: int, max_pixels: int | None):
    """The training decode (`pipeline.decode_image`) as one traced function per process."""
    import tensorflow as tf

    from job.data.pipeline import decode_image

    # Decode is CPU work: a decode task asks Ray for no GPU, and its TensorFlow must not take
    # the memory of a GPU that a model actor on the same node was given.
    hide_gpus_from_tensorflow()
    traced = tf.function(
        lambda data: decode_image(data, image_size, max_pixels),
        input_signature=[tf.TensorSpec([], tf.string)],
    )
    return lambda data: traced(tf.constant(data)).numpy()


def hide_gpus_from_tensorflow() -> None:
    """Keep this process's TensorFlow off the GPUs (it would reserve most of their memory)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow is initialised already: it stays as it is
        log.debug("TensorFlow's devices were initialised before the GPUs could be hidden")


# ---------------------------------------------------------------------------- model actors


class ModelActor:
    """Ray Data actor: the model loaded once, scoring batches of decoded pixels."""

    def __init__(self, model_uri: str):
        from job.evaluation.export import load_predictor

        self.predictor = load_predictor(model_uri)

    def __call__(self, batch: dict) -> dict:
        ok = batch["error"] == ""
        scores = np.full((len(ok), len(self.predictor.class_names)), np.nan, np.float32)
        if ok.any():
            scores[ok] = self.predictor.predict_pixels(batch["pixels"][ok])
        return {
            "part": batch["part"],
            "index": batch["index"],
            "key": batch["key"],
            "scores": scores,
            "error": batch["error"],
            "part_total": batch["part_total"],
        }
