"""tf.data input pipeline: decode, augment, batch/shuffle/repeat, and both example sources.

Image ops are checked twice, eagerly and inside `tf.data.Dataset.map` (graph mode), since
the train loop only ever runs them in the latter. Shards are tiny and written to tmp_path.
"""

from __future__ import annotations

import io
import json
import threading
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from job.config import DEFAULT_AUGMENT, DataConfig
from job.data import pipeline, shards
from job.data.shards import DatasetError, Example

SIZE = 16
K = 3


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def _solid(h: int, w: int, rgb, fmt: str) -> bytes:
    return _encode(np.full((h, w, 3), rgb, dtype=np.uint8), fmt)


def _noise(i: int, fmt: str = "JPEG", h: int = 12, w: int = 10) -> bytes:
    return _encode(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8), fmt)


def _bits(i: int, k: int = K) -> list[int]:
    return [(i >> b) & 1 for b in range(k)]


def _examples(n: int, k: int = K) -> list[Example]:
    return [Example(id=f"ex-{i:03d}", image=_noise(i), labels=np.array(_bits(i, k))) for i in range(n)]


def _write(
    root: str, fmt: str, split_sizes: dict[str, tuple[int, int]], k: int = K, class_names=None
) -> tuple[shards.Manifest, dict[str, list[Example]]]:
    written, data = {}, {}
    offset = 0
    for split, (n, num_shards) in split_sizes.items():
        data[split] = [
            Example(id=f"{split}-{i}", image=_noise(offset + i), labels=np.array(_bits(offset + i, k)))
            for i in range(n)
        ]
        offset += n
        written[split] = shards.write_split(root, split, iter(data[split]), n, num_shards, fmt, k)
    names = class_names if class_names is not None else [f"c{j}" for j in range(k)]
    manifest = shards.Manifest(format=fmt, class_names=names, splits=written)
    shards.write_manifest(root, manifest)
    return manifest, data


def _pairs(ds: tf.data.Dataset) -> list[tuple[bytes, tuple[float, ...]]]:
    return [(img, tuple(lab.tolist())) for img, lab in ds.as_numpy_iterator()]


# ---------------------------------------------------------------------------- decode


@pytest.mark.parametrize("fmt, h, w", [("JPEG", 40, 24), ("PNG", 30, 50)])
def test_decode_image_eager_and_in_dataset_map_agree(fmt, h, w):
    data = _solid(h, w, (200, 40, 10), fmt)
    eager = pipeline.decode_image(tf.constant(data), SIZE).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(data).map(lambda b: pipeline.decode_image(b, SIZE)))).numpy()
    for image in (eager, mapped):
        assert image.shape == (SIZE, SIZE, 3)
        assert image.dtype == np.float32
        assert image.min() >= 0.0 and image.max() <= 255.0
        # A solid colour stays that colour after resizing (JPEG may shift it a little).
        np.testing.assert_allclose(image.mean(axis=(0, 1)), [200, 40, 10], atol=6)
    np.testing.assert_allclose(eager, mapped, atol=1e-3)


def test_decode_image_of_grey_and_rgba_png_gives_three_channels():
    grey = io.BytesIO()
    Image.fromarray(np.full((20, 20), 90, np.uint8), mode="L").save(grey, format="PNG")
    rgba = io.BytesIO()
    Image.fromarray(np.full((20, 20, 4), (10, 20, 30, 128), np.uint8), mode="RGBA").save(rgba, format="PNG")
    for data, colour in ((grey.getvalue(), [90, 90, 90]), (rgba.getvalue(), [10, 20, 30])):
        image = pipeline.decode_image(tf.constant(data), SIZE).numpy()
        assert image.shape == (SIZE, SIZE, 3)
        np.testing.assert_allclose(image.mean(axis=(0, 1)), colour, atol=1)


# ---------------------------------------------------------------------------- make_pipeline


def _indexed_examples(n: int, bits: int = 5) -> tf.data.Dataset:
    """(image bytes, labels) where the labels spell the example's index in binary."""
    images = [_noise(i) for i in range(n)]
    labels = np.array([_bits(i, bits) for i in range(n)], dtype=np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels))


def _indices(labels: np.ndarray) -> list[int]:
    return [int(sum(int(v) << b for b, v in enumerate(row))) for row in labels]


def _cfg(**kw) -> DataConfig:
    base = dict(image_size=SIZE, shuffle_buffer_examples=0, prefetch_batches=1, parallel_calls=1, augment=())
    base.update(kw)
    return DataConfig(**base)


def test_pipeline_batches_with_and_without_drop_remainder():
    ds = pipeline.make_pipeline(_indexed_examples(10), _cfg(), training=False, batch_size=4)
    batches = list(ds.as_numpy_iterator())
    assert [b[0].shape for b in batches] == [(4, SIZE, SIZE, 3), (4, SIZE, SIZE, 3), (2, SIZE, SIZE, 3)]
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.float32 for b in batches)
    # Evaluation keeps the input order.
    assert _indices(np.concatenate([b[1] for b in batches])) == list(range(10))

    dropped = pipeline.make_pipeline(_indexed_examples(10), _cfg(), training=False, batch_size=4, drop_remainder=True)
    shapes = [b[1].shape for b in dropped.as_numpy_iterator()]
    assert shapes == [(4, 5), (4, 5)]
    # The batch dimension is static, so every rank runs the same step shape.
    assert dropped.element_spec[0].shape.as_list() == [4, SIZE, SIZE, 3]


def test_training_shuffle_is_a_bounded_permutation():
    n, buffer = 24, 3
    orders = []
    for seed in range(4):
        ds = pipeline.make_pipeline(
            _indexed_examples(n), _cfg(shuffle_buffer_examples=buffer), training=True, batch_size=n, seed=seed
        )
        order = _indices(next(iter(ds))[1].numpy())
        assert sorted(order) == list(range(n))  # every example once
        # A buffer of B examples can only emit one of the next B inputs at each position.
        assert all(index <= position + buffer - 1 for position, index in enumerate(order)), order
        orders.append(order)
    assert any(order != list(range(n)) for order in orders)
    # The same seed gives the same order.
    again = pipeline.make_pipeline(
        _indexed_examples(n), _cfg(shuffle_buffer_examples=buffer), training=True, batch_size=n, seed=2
    )
    assert _indices(next(iter(again))[1].numpy()) == orders[2]


def test_training_without_shuffle_buffer_keeps_order():
    ds = pipeline.make_pipeline(_indexed_examples(8), _cfg(shuffle_buffer_examples=0), training=True, batch_size=8)
    assert _indices(next(iter(ds))[1].numpy()) == list(range(8))


def test_pipeline_repeat_loops_over_the_data():
    n = 5
    ds = pipeline.make_pipeline(
        _indexed_examples(n),
        _cfg(shuffle_buffer_examples=n),
        training=True,
        batch_size=4,
        repeat=True,
        drop_remainder=True,
        seed=1,
    )
    seen = _indices(np.concatenate([labels for _, labels in ds.take(5).as_numpy_iterator()]))
    assert len(seen) == 20
    # Shuffling happens before repeat: every epoch shows each example exactly once ...
    epochs = [seen[i : i + n] for i in range(0, 20, n)]
    assert all(sorted(epoch) == list(range(n)) for epoch in epochs), epochs
    # ... in a new order each epoch.
    assert len({tuple(epoch) for epoch in epochs}) > 1, epochs


def test_training_pipeline_with_augment_keeps_shape_range_and_labels():
    ds = pipeline.make_pipeline(
        _indexed_examples(6),
        _cfg(augment=DEFAULT_AUGMENT, shuffle_buffer_examples=2),
        training=True,
        batch_size=3,
        seed=5,
        drop_remainder=True,
    )
    images, labels = [], []
    for x, y in ds.as_numpy_iterator():
        assert x.shape == (3, SIZE, SIZE, 3) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 255.0
        assert y.dtype == np.float32
        images.append(x)
        labels.append(y)
    assert sorted(_indices(np.concatenate(labels))) == list(range(6))
    # Augmentation changed the pixels relative to plain decoding.
    plain = pipeline.make_pipeline(_indexed_examples(6), _cfg(), training=False, batch_size=6)
    plain_x, plain_y = next(iter(plain))
    by_index = dict(zip(_indices(plain_y.numpy()), plain_x.numpy()))
    aug = dict(zip(_indices(np.concatenate(labels)), np.concatenate(images)))
    assert any(not np.allclose(aug[i], by_index[i], atol=1.0) for i in range(6))


# ---------------------------------------------------------------------------- sources: shards


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_examples_from_shards_yields_every_example_once(tmp_path, fmt):
    root = str(tmp_path / "ds")
    manifest, data = _write(root, fmt, {"train": (7, 3), "val": (3, 1)})
    for split in ("train", "val"):
        ds = pipeline.examples_from_shards(root, manifest, split)
        assert ds.element_spec[1].dtype == tf.float32
        got = Counter(_pairs(ds))
        want = Counter((e.image, tuple(float(v) for v in e.labels)) for e in data[split])
        assert got == want
        assert sum(got.values()) == manifest.num_examples(split)


def test_examples_from_shards_with_shuffled_shards_still_reads_each_once(tmp_path):
    root = str(tmp_path / "ds")
    manifest, data = _write(root, "tfrecord", {"train": (9, 4)})
    ds = pipeline.examples_from_shards(root, manifest, "train", shuffle_shards=True, seed=3)
    assert Counter(img for img, _ in _pairs(ds)) == Counter(e.image for e in data["train"])


def test_examples_from_shards_into_pipeline_gives_float_label_batches(tmp_path):
    root = str(tmp_path / "ds")
    manifest, _ = _write(root, "parquet", {"train": (6, 2)})
    ds = pipeline.make_pipeline(
        pipeline.examples_from_shards(root, manifest, "train"), _cfg(), training=False, batch_size=4
    )
    x, y = next(iter(ds))
    assert x.shape == (4, SIZE, SIZE, 3) and x.dtype == tf.float32
    assert y.shape == (4, K) and y.dtype == tf.float32


def test_examples_from_shards_without_the_split_names_it(tmp_path):
    root = str(tmp_path / "ds")
    manifest, _ = _write(root, "parquet", {"train": (3, 1)})
    with pytest.raises(DatasetError, match="no 'test' shards"):
        pipeline.examples_from_shards(root, manifest, "test")


def _narrow_manifest(tmp_path, fmt) -> tuple[str, shards.Manifest]:
    """Shards holding 4 labels under a dataset.json edited consistently to list 3 class names.

    (An edit that leaves the label counts 4 wide is refused by load_manifest itself; this one
    can only be caught when the shard is read.)
    """
    root = str(tmp_path / "ds")
    _write(root, fmt, {"train": (4, 1)}, k=4)
    path = tmp_path / "ds" / "dataset.json"
    obj = json.loads(path.read_text())
    obj["class_names"] = ["a", "b", "c"]
    for body in obj["splits"].values():
        body["label_counts"] = body["label_counts"][:3]
        for shard in body["shards"]:
            shard["label_counts"] = shard["label_counts"][:3]
    path.write_text(json.dumps(obj))
    return root, shards.load_manifest(root)


@pytest.mark.parametrize("fmt", shards.FORMATS)
def test_shard_wider_than_class_names_names_the_width(tmp_path, fmt):
    root, manifest = _narrow_manifest(tmp_path, fmt)
    uri = manifest.shard_uris(root, "train")[0]
    with pytest.raises(DatasetError) as info:
        pipeline.load_shard_arrays(uri, fmt, len(manifest.class_names))
    message = str(info.value)
    assert "width 4" in message and "3 class names" in message
    assert uri in message


def test_shard_wider_than_class_names_fails_the_pipeline_with_the_message(tmp_path):
    # Inside tf.data the DatasetError becomes a TensorFlow error; its text must survive.
    root, manifest = _narrow_manifest(tmp_path, "tfrecord")
    ds = pipeline.examples_from_shards(root, manifest, "train")
    with pytest.raises(tf.errors.OpError, match="labels of width 4, but dataset.json lists 3 class names"):
        list(ds.as_numpy_iterator())


def test_load_shard_arrays_returns_bytes_and_int_labels(tmp_path):
    root = str(tmp_path / "ds")
    manifest, data = _write(root, "tfrecord", {"train": (5, 1)})
    images, labels = pipeline.load_shard_arrays(manifest.shard_uris(root, "train")[0], "tfrecord", K)
    assert list(images) == [e.image for e in data["train"]]
    assert labels.dtype == np.int64 and labels.tolist() == [e.labels.tolist() for e in data["train"]]


# ---------------------------------------------------------------------------- sources: Ray Data batches


def _batches_image_layout(examples, batch_size):
    def make():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            # Ray Data gives list columns as an object array of arrays.
            labels = np.empty(len(chunk), dtype=object)
            labels[:] = [np.asarray(e.labels, np.int64) for e in chunk]
            yield {
                "image": np.array([e.image for e in chunk], dtype=object),
                "labels": labels,
                "id": np.array([e.id for e in chunk], dtype=object),
            }

    return make


def _batches_record_layout(examples, batch_size):
    def make():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            yield {"record": np.array([shards.tfrecord_example(e) for e in chunk], dtype=object)}

    return make


def test_examples_from_batches_accepts_both_layouts_identically():
    examples = _examples(7)
    expected = [(e.image, tuple(float(v) for v in e.labels)) for e in examples]
    from_images = pipeline.examples_from_batches(_batches_image_layout(examples, 3), K)
    from_records = pipeline.examples_from_batches(_batches_record_layout(examples, 3), K)
    for ds in (from_images, from_records):
        assert ds.element_spec[0].dtype == tf.string
        assert ds.element_spec[1].dtype == tf.float32 and ds.element_spec[1].shape.as_list() == [K]
    assert _pairs(from_images) == expected
    assert _pairs(from_records) == expected


def test_examples_from_batches_calls_the_factory_every_pass():
    examples = _examples(4)
    calls = []

    def make():
        calls.append(1)
        return _batches_record_layout(examples, 2)()

    ds = pipeline.examples_from_batches(make, K).repeat(2)
    assert len(_pairs(ds)) == 8
    assert len(calls) == 2


def test_examples_from_batches_feeds_the_pipeline():
    examples = _examples(6)
    ds = pipeline.make_pipeline(
        pipeline.examples_from_batches(_batches_record_layout(examples, 4), K), _cfg(), training=False, batch_size=3
    )
    shapes = [(x.shape, y.shape) for x, y in ds.as_numpy_iterator()]
    assert shapes == [((3, SIZE, SIZE, 3), (3, K))] * 2


def test_releasable_batches_pass_every_batch_through_on_every_pass():
    examples = _examples(5)
    source = pipeline.ReleasableBatches(_batches_image_layout(examples, 2))
    ds = pipeline.examples_from_batches(source, K).repeat(2)
    expected = [(e.image, tuple(float(v) for v in e.labels)) for e in examples]
    assert _pairs(ds) == expected * 2


def test_releasable_batches_raise_the_source_error_in_the_consumer():
    def make():
        yield from _batches_image_layout(_examples(2), 2)()
        raise ConnectionError("object store went away")

    source = pipeline.ReleasableBatches(make)
    with pytest.raises(ConnectionError, match="object store went away"):
        list(source())


def test_release_frees_a_pipeline_whose_source_waits_forever():
    # Like a Ray split iterator waiting for ranks that have finished: one batch, then nothing.
    gate = threading.Event()

    def make():
        yield from _batches_image_layout(_examples(2), 2)()
        gate.wait()

    source = pipeline.ReleasableBatches(make)
    iterator = iter(pipeline.examples_from_batches(source, K).repeat().prefetch(4))
    assert len([next(iterator) for _ in range(2)]) == 2
    # Filled by the thread, asserted here: an assert (or an exception) in a thread fails nothing.
    drained: list[int] = []
    errors: list[BaseException] = []

    def finish():
        # After release the pass ends, the pipeline runs dry and the iterator can be destroyed;
        # without it both would wait on the source for good.
        try:
            drained.append(sum(1 for _ in iterator))
        except BaseException as exc:
            errors.append(exc)

    source.release()
    worker = threading.Thread(target=finish, daemon=True)
    worker.start()
    worker.join(timeout=30)
    gate.set()  # let the abandoned reader thread end
    assert not errors, f"draining the pipeline after release() raised {errors[0]!r}"
    assert drained, "the pipeline still waits on its source after release()"
    assert drained[0] <= 2, f"{drained[0]} more examples came after release()"


# ---------------------------------------------------------------------------- InputClock


def test_input_clock_stamps_when_a_batch_is_taken():
    clock = pipeline.InputClock()
    ds = clock.stamp(tf.data.Dataset.from_tensors((tf.zeros([2, 2]), tf.ones([2]))))
    assert clock.last_ready == 0.0
    x, y = next(iter(ds))
    assert clock.last_ready > 0.0
    assert x.shape == (2, 2) and y.numpy().tolist() == [1.0, 1.0]


# ---------------------------------------------------------------------------- decode at size


def _photo(side: int, seed: int = 0) -> bytes:
    """A smooth side x side JPEG (a blown-up 16 x 16 noise pattern), like a photo's content."""
    small = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((side, side), Image.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize(("side", "size", "scale"), [(512, 224, 2), (512, 64, 8), (300, 224, 1), (1000, 120, 8)])
def test_a_large_jpeg_is_decoded_at_the_smallest_dct_scale_that_keeps_the_target_size(side, size, scale):
    decoded = pipeline.decode_jpeg_at_least(tf.constant(_photo(side)), size)
    assert decoded.shape[0] == -(-side // scale) and decoded.shape[0] >= size


def test_dct_scaled_decode_gives_nearly_the_pixels_of_a_full_decode():
    blob = tf.constant(_photo(512))
    full = pipeline.resize_to(tf.io.decode_jpeg(blob, channels=3), 224)
    scaled = pipeline.decode_image(blob, 224)
    assert scaled.shape == (224, 224, 3)
    assert float(tf.reduce_mean(tf.abs(full - scaled))) < 2.0  # of 255


def test_an_image_already_at_the_target_size_is_only_cast():
    pixels = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = pipeline.resize_to(tf.constant(pixels), 32)
    assert out.dtype == tf.float32 and np.array_equal(out.numpy(), pixels.astype(np.float32))
