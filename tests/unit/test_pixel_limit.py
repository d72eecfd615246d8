"""The pixel limit (data.max_pixels, prepare --max-pixels): a huge image is never decoded.

The adversary is BOMB: a 48 KB PNG of 20000 x 20000 pixels, a valid image that costs ~1.2 GB
per decode (and ~4.8 GB more when resized as float32). Each place that decodes an image a
user hands in must read its size from the header and stop there:

- the header readers (pure Python and in the TensorFlow graph) see its real size;
- prepare refuses it as a bad row, before PIL (whose own bomb check only comes at ~179 Mpx);
- the training/evaluation input pipeline skips it, counts it and logs it, and the other
  examples still come out;
- predict's reader refuses it without decoding it;
- an exported SavedModel's serving_default refuses it with InvalidArgumentError.

Every check is also exercised with a small image and a small limit, so that removing a
check makes a test fail by its outcome, not only by the memory it would then take; the
bomb tests also bound the process's peak RSS growth.
"""

from __future__ import annotations

import io
import logging
import resource
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from job.config import DEFAULT_MAX_PIXELS, ConfigError, DataConfig, load_config
from job.data import image_limits
from job.data.image_limits import check_pixel_limit, format_pixels, read_image_size, read_image_size_of_file
from job.data.prepare import PrepareOptions, check_image_file, prepare_dataset
from job.errors import UserError

BOMB_SIDE = 20000
BOMB_MESSAGE = "20000x20000 = 400 Mpx is above the pixel limit of 40 Mpx"
# A decode of BOMB costs >= 1.2 GB; a header read costs nothing measurable.
MAX_RSS_GROWTH_BYTES = 300 * 2**20


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid, all-black 1-bit greyscale PNG, built row by row so it never exists decoded here."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = bomb_png()
    assert len(data) < 100_000  # tiny on disk, 400 Mpx in memory
    return data


def encoded(fmt: str, width: int = 53, height: int = 37, seed: int = 0, **save) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **save)
    return out.getvalue()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# ---------------------------------------------------------------------------- header readers

FORMATS = {
    "jpeg": lambda: encoded("JPEG"),
    # Big APP segments before the frame header: the reader must walk past them.
    "jpeg-progressive-big-app": lambda: encoded(
        "JPEG", progressive=True, exif=b"Exif\0\0" + b"x" * 60000, icc_profile=b"y" * 90000
    ),
    "png": lambda: encoded("PNG"),
    "gif": lambda: encoded("GIF"),
    "bmp": lambda: encoded("BMP"),
    # Rows stored top-down: a negative height in the DIB header.
    "bmp-top-down": lambda: (lambda b: b[:22] + struct.pack("<i", -37) + b[26:])(encoded("BMP")),
}


@pytest.mark.parametrize("name", FORMATS)
def test_both_header_readers_agree_with_what_tensorflow_decodes(name):
    import tensorflow as tf

    from job.data.pipeline import encoded_image_shape

    data = FORMATS[name]()
    assert read_image_size(data) == (name.split("-")[0], 53, 37)
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    assert decoded.shape[:2] == (37, 53)
    assert encoded_image_shape(tf.constant(data)).numpy().tolist() == [37, 53]
    graph = tf.function(encoded_image_shape, input_signature=[tf.TensorSpec([], tf.string)])
    assert graph(tf.constant(data)).numpy().tolist() == [37, 53]


def test_both_header_readers_see_the_bomb_from_its_first_bytes(bomb, tmp_path):
    import tensorflow as tf

    from job.data.pipeline import encoded_image_shape

    assert read_image_size(bomb) == ("png", BOMB_SIDE, BOMB_SIDE)
    assert read_image_size(bomb[:24]) == ("png", BOMB_SIDE, BOMB_SIDE)  # the header is all it needs
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    assert read_image_size_of_file(str(path)) == ("png", BOMB_SIDE, BOMB_SIDE)
    assert encoded_image_shape(tf.constant(bomb)).numpy().tolist() == [BOMB_SIDE, BOMB_SIDE]
    assert check_pixel_limit(bomb, DEFAULT_MAX_PIXELS, "--max-pixels") == f"{BOMB_MESSAGE} (--max-pixels)"


@pytest.mark.parametrize(
    "data", [b"", b"\x89PNG\r\n", b"GIF8", b"BM\0\0", b"\xff\xd8\xff\xe0\0\x10JFIF", b"RIFF....WEBP"]
)
def test_unreadable_or_unknown_headers_are_left_to_the_decoder(data):
    import tensorflow as tf

    from job.data.pipeline import encoded_image_shape

    assert read_image_size(data) is None
    assert check_pixel_limit(data, 1, "x") is None
    if not data.startswith(b"\xff\xd8"):  # libjpeg's header reader raises on a cut JPEG, as decode would
        assert encoded_image_shape(tf.constant(data)).numpy().tolist() == [-1, -1]


def test_pixel_counts_read_as_people_say_them():
    assert format_pixels(400_000_000) == "400 Mpx"
    assert format_pixels(DEFAULT_MAX_PIXELS) == "40 Mpx"
    assert format_pixels(4096) == "4,096 px"
    assert image_limits.pixel_limit_problem(200, 200, 40_000, "s") is None
    assert (
        image_limits.pixel_limit_problem(201, 200, 40_000, "s")
        == "201x200 = 40,200 px is above the pixel limit of 40,000 px (s)"
    )


# ---------------------------------------------------------------------------- the config key


def test_one_config_key_with_a_40_mpx_default(tmp_path):
    assert DEFAULT_MAX_PIXELS == 40_000_000
    assert DataConfig().max_pixels == DEFAULT_MAX_PIXELS
    assert load_config(None, ["data.max_pixels=1000"]).data.max_pixels == 1000
    with pytest.raises(ConfigError, match="data.max_pixels"):
        load_config(None, ["data.max_pixels=0"])


# ---------------------------------------------------------------------------- prepare


def test_prepare_refuses_the_bomb_from_its_header_before_pil_opens_it(bomb, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    before = peak_rss_bytes()
    # Not PIL's DecompressionBombError ("could be decompression bomb DOS attack"): our message.
    assert check_image_file(str(path), pass_through=True) == f"{BOMB_MESSAGE} (--max-pixels)"
    assert check_image_file(str(path), pass_through=False) == f"{BOMB_MESSAGE} (--max-pixels)"
    assert peak_rss_bytes() - before < MAX_RSS_GROWTH_BYTES


def image_folder(tmp_path, images: dict[str, bytes]):
    """(images folder, labels CSV) holding `images` by name, labelled sky/sea in turn."""
    root = tmp_path / "images"
    root.mkdir()
    for name, data in images.items():
        (root / name).write_bytes(data)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,labels\n" + "".join(f"{name},{'sea' if i % 2 else 'sky'}\n" for i, name in enumerate(images)))
    return str(root), str(csv)


def test_prepare_lists_an_over_limit_image_as_a_bad_row_or_skips_it(tmp_path):
    images = {f"{i}.png": encoded("PNG", 20, 20, seed=i) for i in range(6)}
    images["big.png"] = encoded("PNG", 40, 30)  # 1,200 px, above a limit of 1,000
    images["big.tiff"] = encoded("TIFF", 40, 30)  # a format the header reader leaves to PIL
    root, csv = image_folder(tmp_path, images)
    with pytest.raises(UserError) as caught:
        prepare_dataset(
            root, csv, str(tmp_path / "out"), PrepareOptions(max_pixels=1000, reencode=True), progress=False
        )
    text = str(caught.value)
    assert "row 8 (big.png): 40x30 = 1,200 px is above the pixel limit of 1,000 px (--max-pixels)" in text
    assert "row 9 (big.tiff): 40x30 = 1,200 px is above the pixel limit of 1,000 px (--max-pixels)" in text
    assert "2 of 8 rows" in text
    result = prepare_dataset(
        root,
        csv,
        str(tmp_path / "out2"),
        PrepareOptions(max_pixels=1000, reencode=True, skip_bad_rows=True, num_shards=1),
        progress=False,
    )
    assert [b.image for b in result.skipped] == ["big.png", "big.tiff"]
    assert result.num_images == 6


def test_prepare_refuses_a_limit_below_one():
    with pytest.raises(UserError, match="--max-pixels must be at least 1"):
        PrepareOptions(max_pixels=0).check()


# ---------------------------------------------------------------------------- the input pipeline


def _examples(images: list[bytes]):
    import tensorflow as tf

    labels = np.eye(len(images), 4, dtype=np.float32)
    return tf.data.Dataset.from_tensor_slices((tf.constant(images), labels))


def _cfg(**kw) -> DataConfig:
    base = {"image_size": 16, "shuffle_buffer_examples": 0, "prefetch_batches": 0, "augment": ()}
    return DataConfig(**{**base, **kw})


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-augmented"])
def test_the_pipeline_skips_an_over_limit_example_and_keeps_the_others(training, caplog):
    from job.data import pipeline

    images = [encoded("PNG", 20, 20, seed=0), encoded("JPEG", 40, 30, seed=1), encoded("GIF", 20, 20, seed=2)]
    cfg = _cfg(max_pixels=1000, augment=("flip_left_right",) if training else ())
    before = pipeline.skipped_over_pixel_limit()
    with caplog.at_level(logging.WARNING, logger="job.data.pipeline"):
        batches = list(pipeline.make_pipeline(_examples(images), cfg, training=training, batch_size=8))
    assert len(batches) == 1
    pixels, labels = batches[0]
    assert pixels.shape == (2, 16, 16, 3)
    # The JPEG (example 1) is gone; examples 0 and 2 keep their own labels.
    assert sorted(np.argmax(labels.numpy(), axis=1).tolist()) == [0, 2]
    assert pipeline.skipped_over_pixel_limit() == before + 1
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "40x30 = 1,200 px" in warning and "above the pixel limit of 1,000 px (data.max_pixels)" in warning


def test_the_pipeline_skips_the_bomb_without_decoding_it(bomb, caplog):
    from job.data import pipeline

    images = [encoded("PNG", 20, 20, seed=0), bomb, encoded("JPEG", 20, 20, seed=1)]
    before, rss = pipeline.skipped_over_pixel_limit(), peak_rss_bytes()
    with caplog.at_level(logging.WARNING, logger="job.data.pipeline"):
        batches = list(pipeline.make_pipeline(_examples(images), _cfg(), training=False, batch_size=8))
    assert peak_rss_bytes() - rss < MAX_RSS_GROWTH_BYTES
    assert [b[0].shape[0] for b in batches] == [2]
    assert pipeline.skipped_over_pixel_limit() == before + 1
    assert BOMB_MESSAGE.replace(" is above the pixel limit of 40 Mpx", "") in caplog.text


def test_the_pipeline_still_fails_loudly_on_a_file_that_is_not_an_image():
    import tensorflow as tf

    from job.data import pipeline

    ds = pipeline.make_pipeline(
        _examples([encoded("PNG", 20, 20), b"not an image"]), _cfg(), training=False, batch_size=8
    )
    with pytest.raises(tf.errors.InvalidArgumentError):
        list(ds)


def test_decode_image_with_a_limit_raises_before_decoding(bomb):
    import tensorflow as tf

    from job.data.pipeline import PIXEL_LIMIT_MESSAGE, decode_image

    assert decode_image(tf.constant(encoded("PNG", 20, 20)), 16, max_pixels=400).shape == (16, 16, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match=PIXEL_LIMIT_MESSAGE):
        decode_image(tf.constant(encoded("PNG", 21, 20)), 16, max_pixels=400)
    rss = peak_rss_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match=PIXEL_LIMIT_MESSAGE):
        decode_image(tf.constant(bomb), 16, max_pixels=DEFAULT_MAX_PIXELS)
    assert peak_rss_bytes() - rss < MAX_RSS_GROWTH_BYTES


# ---------------------------------------------------------------------------- predict's reader


def test_predict_reads_refuse_an_over_limit_file_without_decoding_it(bomb, tmp_path, monkeypatch):
    from job.evaluation import export

    decoded = []
    monkeypatch.setattr(export, "check_image", lambda data, where: decoded.append(where))
    paths = []
    for name, data in [("a.png", encoded("PNG", 20, 20)), ("bomb.png", bomb), ("big.jpg", encoded("JPEG", 40, 30))]:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    read = export.read_images(paths, max_pixels=1000)
    assert read.uris == [paths[0]] and decoded == [paths[0]]
    assert read.refused == [
        (paths[1], f"{BOMB_MESSAGE.replace('40 Mpx', '1,000 px')} (the model's data.max_pixels)"),
        (paths[2], "40x30 = 1,200 px is above the pixel limit of 1,000 px (the model's data.max_pixels)"),
    ]


# ---------------------------------------------------------------------------- the exported signature

CLASSES = ["sea", "sky"]


def save_tiny_export(out, max_pixels: int = DEFAULT_MAX_PIXELS, image_size: int = 16) -> None:
    """A SavedModel with the real serving module around a tiny untrained model (seconds, no run)."""
    import tensorflow as tf
    import tf_keras

    from job.evaluation.export import build_serving_module

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((image_size, image_size, 3))
    logits = tf_keras.layers.Dense(len(CLASSES))(tf_keras.layers.GlobalAveragePooling2D()(inputs / 255.0))
    model = tf_keras.Model(inputs, logits)
    module = build_serving_module(model, CLASSES, [0.5, 0.5], image_size, max_pixels=max_pixels)
    tf.saved_model.save(module, str(out), signatures=module.signatures())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(an export with the default limit, one with a limit of 1,000 pixels)."""
    base = tmp_path_factory.mktemp("exports")
    save_tiny_export(base / "default")
    save_tiny_export(base / "small", max_pixels=1000)
    return base / "default", base / "small"


def test_the_exported_signature_refuses_an_over_limit_image(exports):
    import tensorflow as tf

    _, small = exports
    loaded = tf.saved_model.load(str(small))
    assert int(loaded.max_pixels.numpy()) == 1000
    serve = loaded.signatures["serving_default"]
    ok = serve(images=tf.constant([encoded("PNG", 20, 20), encoded("JPEG", 40, 25)]))
    assert ok["probabilities"].shape == (2, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="is above the pixel limit") as caught:
        serve(images=tf.constant([encoded("PNG", 20, 20), encoded("JPEG", 40, 30)]))
    assert "image of 40x30 = 1200 pixels is above the pixel limit of 1000 pixels (data.max_pixels)" in (
        caught.value.message
    )


def test_the_exported_signature_refuses_the_bomb_without_decoding_it(exports, bomb):
    import tensorflow as tf

    from job.evaluation.export import SavedModelPredictor

    default, _ = exports
    loaded = tf.saved_model.load(str(default))
    assert int(loaded.max_pixels.numpy()) == DEFAULT_MAX_PIXELS
    rss = peak_rss_bytes()
    with pytest.raises(tf.errors.InvalidArgumentError, match="is above the pixel limit"):
        loaded.signatures["serving_default"](images=tf.constant([encoded("PNG", 20, 20), bomb]))
    # Through the predictor, the same refusal is a UserError, not a TensorFlow traceback.
    with pytest.raises(UserError, match="above the model's pixel limit of 40000000 pixels"):
        SavedModelPredictor(str(default)).predict([bomb])
    assert peak_rss_bytes() - rss < MAX_RSS_GROWTH_BYTES


def test_an_animated_gif_counts_every_frame(tmp_path):
    # 50 frames of 1000x1000: 92 KB on disk, 50 Mpx for TensorFlow's GIF decoder, which
    # decodes every frame even when only the first is kept.
    frames = [Image.new("P", (1000, 1000), i) for i in range(50)]
    path = tmp_path / "many.gif"
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])
    problem = check_image_file(str(path), pass_through=True)
    assert problem == (
        "a GIF of 50 frames on a 1000x1000 screen decodes to 50 Mpx, above the pixel limit of 40 Mpx (--max-pixels)"
    )
    frames[0].save(tmp_path / "one.gif", format="GIF")
    assert check_image_file(str(tmp_path / "one.gif"), pass_through=True) is None
