"""tf.data input pipelines: shard reading, decode, resize, augment, batch, prefetch.

Two sources feed the same chain:
- `examples_from_shards` (`ShardFiles`): a data set's shard files on a local path or s3://,
  this rank's part of them (`assignment.rank_segments`), the next file read ahead: single-
  process runs, evaluation, and Ray workers on the direct ingest path (`data.ingest: direct`);
- `examples_from_batches`: column batches handed over by Ray Data (`get_dataset_shard`), on
  the `ray_data` ingest path.
Both yield (encoded image bytes, float32 multi-hot labels); `make_pipeline` does the rest.
Evaluation reads the shards `with_ids`: (bytes, (labels, id)), which the same chain carries
through to batches of (images, (labels, ids)).

An image above `data.max_pixels` (width x height, read from its header in the graph by
`encoded_image_shape`) is never decoded: `make_pipeline` skips it, counts it
(`skipped_over_pixel_limit`) and logs a warning; `decode_image(..., max_pixels=)` (the
exported model, predict) refuses it with an InvalidArgumentError instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from job import storage
from job.config import DataConfig
from job.data import assignment, shards
from job.data.augment import augment_image
from job.data.image_limits import format_pixels
from job.storage import scratch

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Shard files fetched and parsed ahead of the one being decoded (each held whole in memory
# while in flight: prepare's shards are tens of MB at most).
READ_AHEAD_SHARDS = 2


# ---------------------------------------------------------------------------- sources


def load_shard_arrays(uri: str, fmt: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One shard as (object array of image bytes, int64 labels (n, num_classes)).

    The whole shard is parsed in a few vectorised calls (TensorFlow's CRC-checked reader and
    `parse_example` for TFRecord, Arrow column conversions for Parquet) rather than record
    by record in Python: a training pipeline calls this once per shard per epoch, inside
    tf.data, so its cost is paid by every step. Any problem falls back to the record-by-
    record reader, which names the shard and the bad record.
    """
    images, labels, _ = _load_shard(uri, fmt, num_classes, with_ids=False)
    return images, labels


def load_shard_arrays_with_ids(uri: str, fmt: str, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One shard as (image bytes, int64 labels (n, num_classes), object array of id bytes).

    `load_shard_arrays` plus the examples' ids (TFRecord feature `id`, Parquet column `id`;
    b"" for a shard written without them), for evaluation, which names the examples it
    scores. Training never reads the ids, so its parse stays as it was.
    """
    images, labels, ids = _load_shard(uri, fmt, num_classes, with_ids=True)
    return images, labels, ids


def _load_shard(
    uri: str, fmt: str, num_classes: int, with_ids: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    data = storage.read_bytes(uri)
    try:
        images, labels, ids = _parse_shard_fast(data, uri, fmt, num_classes, with_ids=with_ids)
    except Exception:  # noqa: BLE001 - the careful reader below says what is wrong
        images, labels, ids = _parse_shard_careful(data, uri, fmt, num_classes, with_ids=with_ids)
    if labels.shape[1] != num_classes:
        raise shards.DatasetError(
            f"Shard {uri} has labels of width {labels.shape[1]}, but dataset.json lists "
            f"{num_classes} class names. Re-create the data set so both agree."
        )
    return images, labels, ids


def _parse_shard_careful(
    data: bytes, uri: str, fmt: str, num_classes: int, with_ids: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    examples = list(shards.read_shard(data, fmt, uri))
    images = np.array([e.image for e in examples], dtype=object)
    labels = (
        np.stack([e.labels for e in examples]).astype(np.int64) if examples else np.zeros((0, num_classes), np.int64)
    )
    ids = np.array([e.id.encode() for e in examples], dtype=object) if with_ids else None
    return images, labels, ids


def _quiet_deprecation():
    """tf_record_iterator is deprecated in favour of TFRecordDataset, which is far slower here."""
    try:
        from tensorflow.python.util import deprecation

        return deprecation.silence()
    except (ImportError, AttributeError):  # a TensorFlow without it: the warning shows once
        return contextlib.nullcontext()


def _parse_shard_fast(
    data: bytes, uri: str, fmt: str, num_classes: int, with_ids: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Vectorised parse; raises on anything unusual (the caller then takes the careful path).

    The ids (third item, else None) are parsed only `with_ids`: training does not pay for them.
    """
    if fmt == "tfrecord":
        # The framing check catches a file cut inside a record header, which TensorFlow's
        # reader would take for a clean end of file.
        count = len(shards.split_tfrecord(data, uri))
        with tempfile.TemporaryDirectory(dir=scratch.root()) as tmp:
            path = os.path.join(tmp, "shard.tfrecord")
            with open(path, "wb") as fh:
                fh.write(data)
            # TensorFlow's C++ record reader checks every CRC. (Not a TFRecordDataset: building
            # and iterating one eagerly costs ~11 ms per shard, 20 times this reader.)
            with _quiet_deprecation():
                records = list(tf.compat.v1.io.tf_record_iterator(path))
        raw = tf.constant(records, tf.string) if records else tf.zeros([0], tf.string)
        if int(raw.shape[0]) != count:
            raise ValueError("record count differs from the framing")
        features = {
            "image": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.FixedLenFeature([num_classes], tf.int64),
        }
        if with_ids:
            features["id"] = tf.io.FixedLenFeature([], tf.string, default_value="")
        parsed = tf.io.parse_example(raw, features)
        ids = parsed["id"].numpy().astype(object) if with_ids else None
        return parsed["image"].numpy().astype(object), parsed["labels"].numpy().astype(np.int64), ids
    table = shards.parquet_table(data, columns=["image", "labels", "id"] if with_ids else ["image", "labels"])
    images = np.array(table.column("image").to_pylist(), dtype=object)
    labels_col = table.column("labels").combine_chunks()
    flat = labels_col.flatten().to_numpy(zero_copy_only=False)
    if labels_col.null_count or len(flat) != table.num_rows * num_classes or not np.isin(flat, (0, 1)).all():
        raise ValueError("labels are not a full 0/1 matrix of the expected width")
    ids = None
    if with_ids:
        id_col = table.column("id")
        if id_col.null_count:
            raise ValueError("null ids")
        ids = np.array(id_col.cast("binary").to_pylist(), dtype=object)
    return images, flat.astype(np.int64).reshape(table.num_rows, num_classes), ids


def examples_from_shards(
    root: str,
    manifest: shards.Manifest,
    split: str,
    *,
    shuffle_shards: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    first_epoch: int = 0,
    examples_per_pass: int | None = None,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """(image bytes, labels) of `split`, read straight from its shard files (local or s3://).

    One pass of the dataset is one epoch of this rank's part (`assignment.rank_segments`):
    every example once for a single worker, `total // world_size` examples for each rank of
    a group. With `shuffle_shards` the file order, and so each rank's part, is drawn anew at
    every pass (from `seed` and the epoch, `first_epoch` for the first pass), so `.repeat()`
    gives a new assignment each epoch. This is the direct ingest path of a Ray run, and the
    only path of single-process runs and evaluation.

    `examples_per_pass` (training: steps per epoch x batch) ends each pass there, so pass k is
    exactly training epoch k and a run resumed at epoch k reads epoch k's part again.

    Read-ahead: the next shard file is fetched and parsed while the examples of the current
    one are decoded (READ_AHEAD_SHARDS files in flight), so the decode threads never wait for
    a whole GET + parse at a shard boundary.

    `with_ids` (evaluation) gives (image bytes, (labels, id bytes)) instead: the id rides in
    the label slot, so `make_pipeline(training=False)` carries it through the pixel-limit
    filter, decode and batching unchanged, and batches come out as (images, (labels, ids)),
    an example the filter drops taking its id with it.
    """
    listed = manifest.splits.get(split, [])
    if not listed:
        raise shards.DatasetError(f"The data set at {root} has no {split!r} shards.")
    files = [(uri, s.num_examples) for uri, s in zip(manifest.shard_uris(root, split), listed)]
    listed_counts = dict(files)
    num_classes = len(manifest.class_names)
    fmt = manifest.format
    passes = itertools.count(first_epoch)

    def segments():
        epoch = next(passes)
        for seg in assignment.rank_segments(files, rank, world_size, seed=seed, epoch=epoch, shuffle=shuffle_shards):
            yield seg.uri, seg.start, seg.stop

    def check_count(name: str, count: int) -> None:
        expected = listed_counts[name]
        if count != expected:
            raise shards.DatasetError(
                f"Shard {name} holds {count} examples but dataset.json lists {expected}. "
                "Re-create the data set, or restore the shard."
            )

    def load_segment(uri: bytes, start: np.int64, stop: np.int64):
        name = uri.decode()
        images, labels = load_shard_arrays(name, fmt, num_classes)
        check_count(name, len(images))
        return images[start:stop], labels[start:stop]

    def load_segment_with_ids(uri: bytes, start: np.int64, stop: np.int64):
        name = uri.decode()
        images, labels, ids = load_shard_arrays_with_ids(name, fmt, num_classes)
        check_count(name, len(images))
        return images[start:stop], labels[start:stop], ids[start:stop]

    def load(uri: tf.Tensor, start: tf.Tensor, stop: tf.Tensor):
        images, labels = tf.numpy_function(load_segment, [uri, start, stop], [tf.string, tf.int64], stateful=False)
        images.set_shape([None])
        labels.set_shape([None, num_classes])
        return images, tf.cast(labels, tf.float32)

    def load_with_ids(uri: tf.Tensor, start: tf.Tensor, stop: tf.Tensor):
        images, labels, ids = tf.numpy_function(
            load_segment_with_ids, [uri, start, stop], [tf.string, tf.int64, tf.string], stateful=False
        )
        images.set_shape([None])
        labels.set_shape([None, num_classes])
        ids.set_shape([None])
        return images, (tf.cast(labels, tf.float32), ids)

    parts = tf.data.Dataset.from_generator(
        segments,
        output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)),
    )
    # A parallel map computes up to READ_AHEAD_SHARDS segments ahead of the one being
    # consumed; deterministic keeps the drawn order.
    arrays = parts.map(load_with_ids if with_ids else load, num_parallel_calls=READ_AHEAD_SHARDS, deterministic=True)
    examples = arrays.flat_map(lambda images, labels: tf.data.Dataset.from_tensor_slices((images, labels)))
    return examples.take(examples_per_pass) if examples_per_pass else examples


@dataclass(frozen=True)
class ShardFiles:
    """A run's train and val examples read straight from the data set's shard files.

    What `train --local`, the direct ingest path of every Ray worker and the benchmarks
    hand to `loop.train_worker`: train is this rank's part, drawn anew each epoch from the
    run's seed (the same on every rank, so the parts never overlap); val is the whole split.
    """

    root: str
    manifest: shards.Manifest
    seed: int
    rank: int = 0
    world_size: int = 1
    examples_per_epoch: int | None = None  # this rank's steps per epoch x batch

    def train(self, first_epoch: int = 0) -> tf.data.Dataset:
        return examples_from_shards(
            self.root,
            self.manifest,
            "train",
            shuffle_shards=True,
            seed=self.seed,
            rank=self.rank,
            world_size=self.world_size,
            first_epoch=first_epoch,
            examples_per_pass=self.examples_per_epoch,
        )

    def val(self) -> tf.data.Dataset:
        return examples_from_shards(self.root, self.manifest, "val")


class ReleasableBatches:
    """An iterator factory whose iterators a consumer can walk away from, even mid-wait.

    Ray Data's split iterators make every rank start each pass together: a rank whose
    tf.data read-ahead starts one more pass than the other ranks waits in
    `iter_batches` for them, forever if they have finished training. TensorFlow cannot
    destroy an iterator while its generator is inside such a call, so the worker never
    returns and the run hangs after its last epoch (one 60-image run in nine did, with
    Ray's "blocked waiting on other clients" as its last line).
    The batches are therefore read on a daemon thread and handed over through a short
    queue; after `release()` every pass ends at once, and a thread still waiting in Ray
    is simply abandoned (it dies with the worker process).
    """

    _END = object()

    def __init__(self, make_batches: Callable[[], Iterator[Mapping[str, np.ndarray]]], poll_seconds: float = 0.2):
        self._make_batches = make_batches
        self._poll = poll_seconds
        self._released = threading.Event()

    def release(self) -> None:
        """End the current pass and every later one (called when training is over)."""
        self._released.set()

    def _put(self, handover: queue.Queue, item) -> bool:
        while not self._released.is_set():
            try:
                handover.put(item, timeout=self._poll)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self, handover: queue.Queue) -> None:
        try:
            for batch in self._make_batches():
                if not self._put(handover, batch):
                    return
            self._put(handover, self._END)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._put(handover, exc)

    def __call__(self) -> Iterator[Mapping[str, np.ndarray]]:
        if self._released.is_set():
            return
        handover: queue.Queue = queue.Queue(maxsize=2)
        threading.Thread(target=self._feed, args=(handover,), name="ray-batches", daemon=True).start()
        while True:
            try:
                item = handover.get(timeout=self._poll)
            except queue.Empty:
                if self._released.is_set():
                    return
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def examples_from_batches(
    make_batches: Callable[[], Iterator[Mapping[str, np.ndarray]]], num_classes: int
) -> tf.data.Dataset:
    """(image bytes, labels) from an iterator factory of column batches (Ray Data's iter_batches).

    A batch holds either "image" (encoded bytes) and "labels" (0/1 lists of `num_classes`),
    as Parquet shards give, or "record" (serialised tf.train.Example), as TFRecord shards
    give; records are parsed here a whole batch at a time. The factory is called again at
    every pass, so each epoch streams the shard anew.
    """

    def generate():
        for batch in make_batches():
            if "record" in batch:
                yield np.asarray(batch["record"], dtype=object), np.zeros((0, num_classes), np.float32)
            else:
                labels = np.asarray([np.asarray(v, dtype=np.float32) for v in batch["labels"]], dtype=np.float32)
                yield np.asarray(batch["image"], dtype=object), labels.reshape(-1, num_classes)

    batches = tf.data.Dataset.from_generator(
        generate,
        output_signature=(tf.TensorSpec([None], tf.string), tf.TensorSpec([None, num_classes], tf.float32)),
    )
    features = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.FixedLenFeature([num_classes], tf.int64),
    }

    def to_examples(blobs, labels):
        # No labels column means the blobs are serialised tf.train.Example shards.
        def parse():
            parsed = tf.io.parse_example(blobs, features)
            return parsed["image"], tf.cast(parsed["labels"], tf.float32)

        return tf.cond(tf.shape(labels)[0] > 0, lambda: (blobs, labels), parse)

    return batches.map(to_examples).unbatch()


# ---------------------------------------------------------------------------- transforms


# Messages of over-limit images, as tests and callers look for them.
PIXEL_LIMIT_MESSAGE = "is above the pixel limit"


def _uint(raw: tf.Tensor, offsets: tuple[int, ...]) -> tf.Tensor:
    """The unsigned integer made of raw[offsets] (most significant byte first), as int64."""
    value = tf.constant(0, tf.int64)
    for offset in offsets:
        value = value * 256 + raw[offset]
    return value


def encoded_image_shape(image_bytes: tf.Tensor) -> tf.Tensor:
    """int64 [height, width] of an encoded image read from its header, in the graph; [-1, -1] if unknown.

    Reads what `tf.io.decode_image` would allocate, without decoding: JPEG through
    `tf.io.extract_jpeg_shape` (libjpeg's header reader), PNG from IHDR, GIF from the logical
    screen (every frame is that size), BMP from the DIB header as TensorFlow reads it. The
    encoding is told from the leading bytes as decode_image tells it. Unknown encodings and
    headers cut short give [-1, -1]: the decoder then says what is wrong.
    `job.data.image_limits.read_image_size` is the same reading in plain Python.
    """
    head = tf.strings.substr(image_bytes, 0, 26)
    length = tf.strings.length(head)
    # Always 26 bytes, zero-padded, so the lookups below need no bounds checks (substr
    # past the end of a string is an error).
    padded = tf.strings.substr(tf.strings.join([head, b"\0" * 26]), 0, 26)
    raw = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)

    def starts(magic: bytes, offset: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(padded, offset, len(magic)), magic)

    png = starts(b"\x89PN") & starts(b"IHDR", 12) & (length >= 24)
    gif = starts(b"GIF") & (length >= 10)
    bmp = starts(b"BM") & (length >= 26)

    def int32_le(offset: int) -> tf.Tensor:
        value = _uint(raw, (offset + 3, offset + 2, offset + 1, offset))
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))  # negative BMP height: top-down rows

    unknown = tf.constant([-1, -1], tf.int64)
    shape = tf.where(
        png,
        tf.stack([_uint(raw, (20, 21, 22, 23)), _uint(raw, (16, 17, 18, 19))]),
        tf.where(
            gif,
            tf.stack([_uint(raw, (9, 8)), _uint(raw, (7, 6))]),
            tf.where(bmp, tf.stack([int32_le(22), int32_le(18)]), unknown),
        ),
    )
    return tf.cond(
        starts(b"\xff\xd8\xff"), lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64), lambda: shape
    )


def encoded_image_pixels(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(int64 [height, width] from the header, int64 pixel count; 0 when the header is unreadable)."""
    shape = encoded_image_shape(image_bytes)
    return shape, tf.where(shape[0] >= 0, shape[0] * shape[1], tf.constant(0, tf.int64))


_skips_lock = threading.Lock()
_skips = 0
# Warnings for the first skips of a process, then one per SKIP_WARN_EVERY.
SKIP_WARN_FIRST = 20
SKIP_WARN_EVERY = 1000


def skipped_over_pixel_limit() -> int:
    """Examples this process's input pipelines skipped for being above the pixel limit."""
    return _skips


def _note_skip(shape: np.ndarray, size: np.int64, max_pixels: np.int64) -> np.bool_:
    """Count and log one skipped example (runs only for an over-limit image); returns False."""
    global _skips
    with _skips_lock:
        _skips += 1
        count = _skips
    if count <= SKIP_WARN_FIRST or count % SKIP_WARN_EVERY == 0:
        height, width = int(shape[0]), int(shape[1])
        log.warning(
            "skipped an example whose image is %dx%d = %s (%s bytes encoded), above the pixel limit of %s "
            "(data.max_pixels); it is not decoded. %d example(s) skipped so far in this process. "
            "`python -m job prepare --max-pixels` refuses such images when the data set is made.",
            width,
            height,
            format_pixels(width * height),
            f"{int(size):,}",
            format_pixels(int(max_pixels)),
            count,
        )
    return np.bool_(False)


def within_pixel_limit(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """A scalar bool for `Dataset.filter`: True if the image is at most `max_pixels` (or unreadable).

    An image above the limit gives False and is counted and logged (`skipped_over_pixel_limit`);
    only its header is read.
    """
    shape, pixels = encoded_image_pixels(image_bytes)
    limit = tf.constant(max_pixels, tf.int64)

    def skip():
        kept = tf.numpy_function(
            _note_skip, [shape, tf.strings.length(image_bytes, unit="BYTE"), limit], tf.bool, stateful=True
        )
        return tf.reshape(kept, [])

    return tf.cond(pixels <= limit, lambda: tf.constant(True), skip)


def assert_within_pixel_limit(image_bytes: tf.Tensor, max_pixels: int | tf.Tensor) -> tf.Operation:
    """An assertion op: InvalidArgumentError naming the size if the image is above `max_pixels`."""
    shape, pixels = encoded_image_pixels(image_bytes)
    limit = tf.cast(max_pixels, tf.int64)
    message = tf.strings.format(
        "image of {}x{} = {} pixels " + PIXEL_LIMIT_MESSAGE + " of {} pixels (data.max_pixels); it was not decoded",
        [shape[1], shape[0], pixels, limit],
    )
    return tf.debugging.Assert(pixels <= limit, [message])


def decode_image(image_bytes: tf.Tensor, image_size: int, max_pixels: int | tf.Tensor | None = None) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> float32 pixels in [0, 255], shape (size, size, 3).

    With `max_pixels`, an image above that many pixels (read from its header) raises
    InvalidArgumentError before anything is decoded.
    """
    if max_pixels is not None:
        with tf.control_dependencies([assert_within_pixel_limit(image_bytes, max_pixels)]):
            image_bytes = tf.identity(image_bytes)
    is_jpeg = tf.equal(tf.strings.substr(image_bytes, 0, 3), b"\xff\xd8\xff")
    image = tf.cond(
        is_jpeg,
        lambda: decode_jpeg_at_least(image_bytes, image_size),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False),
    )
    return resize_to(image, image_size)


def resize_to(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 (h, w, 3) -> float32 (size, size, 3) in [0, 255]; an image already that size is only cast.

    Antialiased resizing to the same size is not free (at 224 px it costs three times the
    JPEG decode), and data sets are often written at the training size.
    """
    shape = tf.shape(image)

    def resize():
        return tf.clip_by_value(tf.image.resize(image, [size, size], antialias=True), 0.0, 255.0)

    same = tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size))
    out = tf.cond(same, lambda: tf.cast(image, tf.float32), resize)
    out.set_shape([size, size, 3])  # both branches give this; the batch shape stays static
    return out


# libjpeg's DCT-domain scale factors (decode_jpeg's `ratio`).
JPEG_SCALES = (1, 2, 4, 8)


def decode_jpeg_at_least(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 (h, w, 3) of a JPEG, decoded at the smallest DCT scale whose shorter side is >= `size`.

    libjpeg can decode at 1/2, 1/4 or 1/8 scale by dropping DCT coefficients, which skips
    most of the inverse-DCT and colour-conversion work: a 512-px photo trained at 224 px is
    decoded at 256 px, then resized as before. The scale is picked from the header (read
    without decoding), so an image never becomes smaller than `size` before the resize.
    """
    shape = tf.io.extract_jpeg_shape(image_bytes)
    shorter = tf.minimum(shape[0], shape[1])
    # The number of halvings that keep the shorter side at least `size`: 0 to 3.
    index = tf.add_n([tf.cast(shorter >= scale * size, tf.int32) for scale in JPEG_SCALES[1:]])
    branches = [(lambda r=ratio: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r)) for ratio in JPEG_SCALES]
    return tf.switch_case(index, branches)


def make_pipeline(
    examples: tf.data.Dataset,
    cfg: DataConfig,
    *,
    training: bool,
    batch_size: int,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """The one chain every run uses, from (bytes, labels) to batches of (images, labels).

    Args:
        examples: (encoded image, float32 labels) pairs; with training=False the labels may be
            any structure, such as `examples_from_shards(with_ids=True)`'s (labels, id), which
            is carried through to the batches as it is.
        cfg: the data section of the run config.
        training: shuffle, and augment with `cfg.augment`'s policy, when True.
        batch_size: examples per batch on this worker.
        seed: drives shuffling and augmentation.
        repeat: loop forever (training with a fixed steps_per_epoch).
        drop_remainder: keep every batch the same size (equal steps on every rank).
    """
    parallel = cfg.parallel_calls or AUTOTUNE
    # Read each image's size from its header and skip (count, log) those above the limit
    # before anything decodes them: a few KB of PNG can hold a 20000 x 20000 image.
    ds = examples.filter(lambda img, _y: within_pixel_limit(img, cfg.max_pixels))
    if training and cfg.shuffle_buffer_examples > 1:
        # Shuffle encoded bytes, not decoded pixels: the buffer costs ~KB per example, and
        # its size is bounded by config, not by the data set.
        ds = ds.shuffle(cfg.shuffle_buffer_examples, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if training and cfg.augment:
        policy = tuple(cfg.augment)
        # Pair each example with its own seed so augmentation does not depend on thread timing.
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
        ds = ds.map(
            lambda ex, s: (augment_image(decode_image(ex[0], cfg.image_size), s, policy), ex[1]),
            num_parallel_calls=parallel,
            deterministic=False,
        )
    else:
        ds = ds.map(
            lambda img, y: (decode_image(img, cfg.image_size), y),
            num_parallel_calls=parallel,
            deterministic=not training,
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    # Bounded prefetch: enough to overlap input with the step, without unbounded memory.
    return ds.prefetch(cfg.prefetch_batches) if cfg.prefetch_batches else ds


class InputClock:
    """Marks when each batch leaves the pipeline, to measure how long steps wait for input.

    `stamp` is applied as the last (synchronous) map, so it runs when the model asks for the
    batch; the train loop compares the time it returns with the step's start.
    """

    def __init__(self) -> None:
        self.last_ready = 0.0

    def _mark(self) -> np.float64:
        self.last_ready = time.perf_counter()
        return np.float64(self.last_ready)

    def stamp(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        def mark(images, labels):
            t = tf.numpy_function(self._mark, [], tf.float64, stateful=True)
            with tf.control_dependencies([t]):
                return tf.identity(images), labels

        return ds.map(mark)
