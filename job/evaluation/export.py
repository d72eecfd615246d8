"""Export a run as a self-contained TensorFlow SavedModel, and predict with it (or with a run).

The SavedModel holds the best checkpoint's weights, the label names and the tuned
thresholds, so a service needs nothing else. Three signatures:

    serving_default  images: tf.string [None]  encoded JPEG/PNG/GIF/BMP bytes, decoded and
                     resized exactly as training does (`pipeline.decode_image`); an image
                     above the run's data.max_pixels (width x height, read from its header)
                     fails the call with InvalidArgumentError "... is above the pixel limit
                     ..." before anything is decoded. TensorFlow Serving's REST API feeds it
                     directly: it base64-decodes a JSON `{"b64": "..."}` value into these bytes
    predict_images   pixels: float32 [None, S, S, 3]  RGB in [0, 255], already S x S
    predict_base64   images_base64: tf.string [None]  the same images as base64 TEXT (standard
                     or URL-safe alphabet, padding optional, ASCII whitespace ignored), for
                     servers that pass JSON strings through undecoded (Ray Serve, a custom
                     KServe predictor, Flask); then exactly serving_default, pixel limit
                     included. Text that is not base64 fails with InvalidArgumentError

All return `probabilities` (float32 [None, k], sigmoid of the logits), `decisions`
(bool [None, k], probability > the label's threshold) and `labels` (tf.string [None], the
predicted label names joined by spaces). The loaded object also carries `label_names`
(string [k]), `thresholds` (float32 [k]), `image_size` (int32) and `max_pixels` (int64)
variables; the label names
are in `assets/labels.txt` too, and `assets.extra/export.json` records where the model came
from. Exports made before predict_base64 existed still load (`REQUIRED_SIGNATURES`).

`load_predictor` takes an exported SavedModel folder or a run (then it builds the model in
this process from the best checkpoint); both answer the same `predict(image_bytes)`, and
`predict_pixels(pixels)` for pixels already decoded with
`decode_image(data, predictor.image_size, predictor.max_pixels)` (batch inference decodes
in other processes than the model's). docs/serving.md shows how to serve an export.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import tensorflow as tf

from job import storage
from job.data.image_limits import DEFAULT_MAX_PIXELS, check_pixel_limit
from job.data.pipeline import PIXEL_LIMIT_MESSAGE, decode_image
from job.errors import UserError
from job.evaluation.loading import load_best_model, load_thresholds
from job.storage import scratch
from job.storage.run_store import RunStore

log = logging.getLogger(__name__)

SAVED_MODEL_FILE = "saved_model.pb"
LABELS_ASSET = "labels.txt"
EXPORT_INFO = "assets.extra/export.json"
# Every signature an export gets; the loader needs only REQUIRED_SIGNATURES, so exports made
# before predict_base64 existed still load.
SIGNATURES = ("serving_default", "predict_images", "predict_base64")
REQUIRED_SIGNATURES = ("serving_default", "predict_images")
DEFAULT_THRESHOLD = 0.5


# ---------------------------------------------------------------------------- images


def check_image(data: bytes, where: str) -> None:
    """Raise UserError unless TensorFlow can decode `data` as an image.

    Args:
        data: the file's bytes.
        where: the path shown in the message.
    """
    if not data:
        raise UserError(f"{where} is empty (0 bytes); pass a JPEG, PNG, GIF or BMP image.")
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
        raise UserError(
            f"{where} is not an image TensorFlow can decode ({tf_error_reason(exc)}); pass a JPEG, PNG, GIF or BMP "
            "file."
        ) from None


def tf_error_reason(exc: Exception) -> str:
    """TensorFlow's reason for an error, without its "{{function_node ...}}" and "[Op:...]"
    wrapping or the traceback lines after the first."""
    message = getattr(exc, "message", "") or str(exc) or type(exc).__name__
    return re.sub(r"\{\{.*?\}\}|\[Op:\w+\]|\n.*", "", message, flags=re.S).strip()


@dataclass(frozen=True)
class ReadImages:
    """The images `read_images` accepted, and those it refused for their size."""

    uris: list[str]
    data: list[bytes]
    refused: list[tuple[str, str]]  # (uri, problem): above the pixel limit, never decoded


def read_images(uris: list[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> ReadImages:
    """Read and check every image up front, so one bad file fails before any work is done.

    An image above `max_pixels` (width x height, read from its header) is not decoded: it is
    refused (listed in `refused`), and the others are still returned.

    Raises:
        UserError: a file is missing, unreadable, or not an image.
    """
    out = ReadImages([], [], [])
    for uri in uris:
        if not storage.is_s3(uri) and os.path.isdir(uri):
            raise UserError(f"{uri} is a folder; pass image files (e.g. {uri}/*.jpg).")
        if not storage.exists(uri):
            raise UserError(f"image {uri} does not exist; check the path.")
        data = storage.read_bytes(uri)
        too_big = check_pixel_limit(data, max_pixels, "the model's data.max_pixels")
        if too_big:
            out.refused.append((uri, too_big))
            continue
        check_image(data, uri)
        out.uris.append(uri)
        out.data.append(data)
    return out


def model_pixel_limit(uri: str) -> int:
    """The pixel limit of an exported model or a run (its data.max_pixels), read cheaply.

    An export records it in assets.extra/export.json; a run in its config. Exports made
    before the limit existed get the default.
    """
    uri = uri.rstrip("/")
    info_uri = storage.join(uri, EXPORT_INFO)
    if storage.exists(storage.join(uri, SAVED_MODEL_FILE)):
        try:
            return int(storage.read_json(info_uri).get("max_pixels", DEFAULT_MAX_PIXELS))
        except Exception:  # noqa: BLE001 - no or an unreadable export.json: the model loader says more
            return DEFAULT_MAX_PIXELS
    if RunStore(uri).is_run():
        return RunStore(uri).read_config().config.data.max_pixels
    return DEFAULT_MAX_PIXELS


# ---------------------------------------------------------------------------- the module


def build_serving_module(
    model,
    class_names: list[str],
    thresholds,
    image_size: int,
    labels_file: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
):
    """Wrap a logits model in a `tf.Module` with the serving signatures (`SIGNATURES`).

    Args:
        model: tf_keras model taking float32 pixels (None, S, S, 3) in [0, 255], giving logits.
        class_names: the k label names.
        thresholds: (k,) probability thresholds.
        image_size: S.
        labels_file: a local file with one label per line, saved as an asset (optional).
        max_pixels: serving_default and predict_base64 refuse (InvalidArgumentError) an image
            above this many pixels, read from its header, before decoding anything.
    Returns:
        The module; save it with `tf.saved_model.save(module, dir, signatures=module.signatures())`.
    """
    thresholds = np.asarray(thresholds, dtype=np.float32)
    if thresholds.shape != (len(class_names),):
        raise UserError(f"{thresholds.size} thresholds for {len(class_names)} labels ({', '.join(class_names)}).")
    size = int(image_size)

    class ServingModule(tf.Module):
        def __init__(self):
            super().__init__(name="multilabel_serving")
            self.model = model
            self.label_names = tf.Variable(list(class_names), dtype=tf.string, trainable=False, name="label_names")
            self.thresholds = tf.Variable(thresholds, dtype=tf.float32, trainable=False, name="thresholds")
            self.image_size = tf.Variable(size, dtype=tf.int32, trainable=False, name="image_size")
            self.max_pixels = tf.Variable(int(max_pixels), dtype=tf.int64, trainable=False, name="max_pixels")
            if labels_file is not None:
                self.labels_asset = tf.saved_model.Asset(labels_file)

            @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
            def predict_images(pixels):
                return self._outputs(pixels)

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
            def serving_default(images):
                return self._outputs(self._decode(images))

            @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images_base64")])
            def predict_base64(images_base64):
                # tf.io.decode_base64 reads only the URL-safe alphabet (padding optional):
                # map the standard one onto it, and drop the line breaks of MIME-style text.
                text = tf.strings.regex_replace(images_base64, r"[\t\n\r ]", "")
                text = tf.strings.regex_replace(tf.strings.regex_replace(text, r"\+", "-"), "/", "_")
                return self._outputs(self._decode(tf.io.decode_base64(text)))

            self.predict_images = predict_images
            self.serving_default = serving_default
            self.predict_base64 = predict_base64

        def _decode(self, images):
            """Encoded images (string [n]) -> float32 pixels (n, S, S, 3), pixel limit enforced."""
            return tf.map_fn(
                lambda b: decode_image(b, size, max_pixels=self.max_pixels),
                images,
                fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
            )

        def _outputs(self, pixels):
            # An empty batch skips the model: TensorFlow's oneDNN CPU convolution fails on one
            # ("input depth must be evenly divisible by filter depth"), and a server may send it.
            logits = tf.cond(
                tf.shape(pixels)[0] > 0,
                lambda: tf.cast(self.model(pixels, training=False), tf.float32),
                lambda: tf.zeros([0, len(class_names)], tf.float32),
            )
            probabilities = tf.sigmoid(logits)
            decisions = probabilities > self.thresholds
            names = tf.broadcast_to(self.label_names, tf.shape(decisions))
            labels = tf.strings.reduce_join(tf.ragged.boolean_mask(names, decisions), axis=1, separator=" ")
            return {"probabilities": probabilities, "decisions": decisions, "labels": labels}

        def signatures(self) -> dict:
            return {
                "serving_default": self.serving_default,
                "predict_images": self.predict_images,
                "predict_base64": self.predict_base64,
            }

    return ServingModule()


# ---------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportInfo:
    """What `export_run` wrote."""

    out_uri: str
    class_names: list[str]
    thresholds: list[float]
    thresholds_source: str
    image_size: int
    checkpoint: str
    max_pixels: int = DEFAULT_MAX_PIXELS


def export_run(run_uri: str, out_uri: str) -> ExportInfo:
    """Export a run's best checkpoint, label names and tuned thresholds as a SavedModel.

    Args:
        run_uri: the run (train's --output), local or s3://.
        out_uri: target folder, local or s3://; must be empty or hold an earlier export.
    Returns:
        What was exported.
    Raises:
        UserError: not a run, no intact checkpoint, a bad thresholds.json, a non-empty target.
    """
    run_uri, out_uri = run_uri.rstrip("/"), out_uri.rstrip("/")
    _check_target(out_uri)
    saved = RunStore(run_uri).read_config()
    cfg, class_names = saved.config, saved.class_names
    thresholds = load_thresholds(run_uri, class_names)
    source = "thresholds.json"
    if thresholds is None:
        log.warning(
            "the run has no thresholds.json (run `python -m job evaluate --run %s` to tune them); "
            "exporting with 0.5 for every label",
            run_uri,
        )
        thresholds, source = np.full(len(class_names), DEFAULT_THRESHOLD), "default 0.5"
    model, restored = load_best_model(run_uri, cfg, len(class_names))
    work = scratch.make_dir("export-")
    try:
        labels_file = os.path.join(work, LABELS_ASSET)
        with open(labels_file, "w") as fh:
            fh.write("\n".join(class_names) + "\n")
        module = build_serving_module(
            model, class_names, thresholds, cfg.data.image_size, labels_file, max_pixels=cfg.data.max_pixels
        )
        local = out_uri if not storage.is_s3(out_uri) else os.path.join(work, "saved_model")
        tf.saved_model.save(module, local, signatures=module.signatures())
        info = ExportInfo(
            out_uri=out_uri,
            class_names=list(class_names),
            thresholds=[float(t) for t in thresholds],
            thresholds_source=source,
            image_size=cfg.data.image_size,
            checkpoint=restored.uri,
            max_pixels=cfg.data.max_pixels,
        )
        os.makedirs(os.path.join(local, os.path.dirname(EXPORT_INFO)), exist_ok=True)
        with open(os.path.join(local, EXPORT_INFO), "w") as fh:
            json.dump(
                {
                    "run": run_uri,
                    "checkpoint": restored.uri,
                    "epoch": restored.epoch,
                    "class_names": info.class_names,
                    "thresholds": info.thresholds,
                    "thresholds_source": source,
                    "image_size": info.image_size,
                    "max_pixels": info.max_pixels,
                    "backbone": cfg.model.backbone,
                    "signatures": list(SIGNATURES),
                    "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                fh,
                indent=2,
            )
        if storage.is_s3(out_uri):
            storage.upload_dir(local, out_uri)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s (epoch %d) to %s", restored.uri, restored.epoch, out_uri)
    return info


def _check_target(out_uri: str) -> None:
    """Refuse to mix an export into a folder that holds something else."""
    if storage.is_s3(out_uri):
        if storage.exists(out_uri) and not storage.exists(storage.join(out_uri, SAVED_MODEL_FILE)):
            raise UserError(f"{out_uri} already holds files that are not an exported model; choose an empty prefix.")
        return
    if os.path.isfile(out_uri):
        raise UserError(f"--out {out_uri} is a file; give a folder for the SavedModel.")
    if os.path.isdir(out_uri) and os.listdir(out_uri) and not os.path.exists(os.path.join(out_uri, SAVED_MODEL_FILE)):
        raise UserError(
            f"--out {out_uri} is a non-empty folder that is not an exported model; choose an empty or new folder."
        )


# ---------------------------------------------------------------------------- predict


@dataclass(frozen=True)
class Prediction:
    """Probabilities and decisions for a batch of images."""

    probabilities: np.ndarray  # (n, k) float32
    decisions: np.ndarray  # (n, k) bool


class Predictor:
    """A model ready to predict: label names, thresholds, `predict(list of image bytes)` and
    `predict_pixels(decoded pixels)`."""

    class_names: list[str]
    thresholds: np.ndarray
    source: str
    image_size: int  # S: the model's input side; predict_pixels takes (n, S, S, 3)
    identity: str  # changes when the model does: the checkpoint it holds, and when it was exported
    max_pixels: int | None  # None: an export made before the limit existed (none built in)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (float32 (n, k)) for pixels already decoded and resized.

        Decode each image with `job.data.pipeline.decode_image(data, self.image_size,
        self.max_pixels)` (in any process) and stack them: the result then agrees with
        `predict` on the same bytes. The whole array goes through the model in one call, so
        the caller picks the batch size.

        Args:
            pixels: float32 (n, S, S, 3), RGB in [0, 255], S = `image_size`.
        Raises:
            ValueError: `pixels` is not (n, image_size, image_size, 3).
        """
        pixels = np.asarray(pixels, dtype=np.float32)
        expected = (self.image_size, self.image_size, 3)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise ValueError(f"pixels of shape {pixels.shape}; this model takes (n, {', '.join(map(str, expected))})")
        if len(pixels) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        return np.asarray(self._pixel_probabilities(pixels), dtype=np.float32)

    def predict(self, images: list[bytes], batch_size: int = 64) -> Prediction:
        """Probabilities and decisions for encoded images, in order.

        Raises:
            UserError: an image is above the model's pixel limit (`read_images` leaves those out).
        """
        try:
            probs = [self._probabilities(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        except tf.errors.InvalidArgumentError as exc:
            if PIXEL_LIMIT_MESSAGE not in (exc.message or ""):
                raise
            raise UserError(
                f"an image is above the model's pixel limit of {self.max_pixels} pixels (data.max_pixels); "
                "it was not decoded. Pass images within the limit."
            ) from None
        p = np.concatenate(probs) if probs else np.zeros((0, len(self.class_names)), np.float32)
        return Prediction(p, p > self.thresholds[None, :].astype(np.float32))

    def _probabilities(self, images: list[bytes]) -> np.ndarray:
        raise NotImplementedError

    def _pixel_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SavedModelPredictor(Predictor):
    """An exported SavedModel: serving_default for bytes, predict_images for pixels."""

    def __init__(self, uri: str):
        self._work = None
        local = uri
        if storage.is_s3(uri):
            self._work = scratch.make_dir("model-")
            storage.download_dir(uri, self._work)
            local = self._work
        try:
            self._loaded = tf.saved_model.load(local)
        except Exception as exc:  # noqa: BLE001 - any load failure is a bad model folder
            raise UserError(
                f"{uri} could not be loaded as a SavedModel ({type(exc).__name__}: {exc}); "
                f"re-export it with `python -m job export --run RUN --out {uri}`."
            ) from None
        missing = [s for s in REQUIRED_SIGNATURES if s not in self._loaded.signatures]
        if missing or not hasattr(self._loaded, "label_names"):
            raise UserError(
                f"{uri} is a SavedModel but not one exported by `python -m job export` "
                f"(missing {missing or 'label_names'}); re-export it."
            )
        self.class_names = [n.decode() for n in self._loaded.label_names.numpy()]
        self.thresholds = self._loaded.thresholds.numpy().astype(np.float64)
        limit = getattr(self._loaded, "max_pixels", None)
        self.max_pixels = int(limit.numpy()) if limit is not None else None
        size = getattr(self._loaded, "image_size", None)
        if size is None:  # the signature's input shape says the same
            size = self._loaded.signatures["predict_images"].structured_input_signature[1]["pixels"].shape[1]
        self.image_size = int(size.numpy()) if hasattr(size, "numpy") else int(size)
        self.source = f"SavedModel {uri}"
        try:  # what changes when the folder is re-exported (export.json is written with the model)
            with open(os.path.join(local, EXPORT_INFO)) as fh:
                info = json.load(fh)
            self.identity = f"{info.get('checkpoint')} exported {info.get('exported_at')}"
        except (OSError, ValueError):
            self.identity = self.source

    def _probabilities(self, images: list[bytes]) -> np.ndarray:
        out = self._loaded.signatures["serving_default"](images=tf.constant(images, dtype=tf.string))
        return out["probabilities"].numpy()

    def _pixel_probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self._loaded.signatures["predict_images"](pixels=tf.constant(pixels))["probabilities"].numpy()


class RunPredictor(Predictor):
    """A run's best checkpoint, built in this process (same decode as training)."""

    def __init__(self, uri: str):
        saved = RunStore(uri).read_config()
        cfg, self.class_names = saved.config, saved.class_names
        thresholds = load_thresholds(uri, self.class_names)
        if thresholds is None:
            log.warning("the run has no thresholds.json; predicting with 0.5 for every label")
            thresholds = np.full(len(self.class_names), DEFAULT_THRESHOLD)
        self.thresholds = thresholds
        self.image_size = cfg.data.image_size
        self.max_pixels = cfg.data.max_pixels
        self.model, restored = load_best_model(uri, cfg, len(self.class_names))
        self.source = f"run {uri} ({restored.uri})"
        self.identity = restored.uri

    def _probabilities(self, images: list[bytes]) -> np.ndarray:
        pixels = tf.stack([decode_image(tf.constant(b), self.image_size, self.max_pixels) for b in images])
        return self._pixel_probabilities(pixels)

    def _pixel_probabilities(self, pixels) -> np.ndarray:
        return tf.sigmoid(tf.cast(self.model(pixels, training=False), tf.float32)).numpy()


def load_predictor(uri: str) -> Predictor:
    """An exported SavedModel folder or a run, local or s3://.

    Raises:
        UserError: the folder is neither.
    """
    uri = uri.rstrip("/")
    if storage.exists(storage.join(uri, SAVED_MODEL_FILE)):
        return SavedModelPredictor(uri)
    if RunStore(uri).is_run():
        return RunPredictor(uri)
    raise UserError(
        f"--model {uri} is neither an exported model (no {SAVED_MODEL_FILE}) nor a run (no "
        f"config.json). Pass the folder from `python -m job export` or a `train --output`."
    )
