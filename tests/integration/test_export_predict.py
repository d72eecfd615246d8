"""`export` and `predict` on a real (tiny) run: the SavedModel matches the checkpoint model.

Shares the session's tiny trained run with tests/integration/test_evaluate_cli.py (trained
once, on first use, by whichever module runs first). The serving tests at the end check the
export as servers use it (docs/serving.md): `saved_model_cli` lists its signatures, a
TensorFlow Serving REST body decoded by TF Serving's documented `{"b64": ...}` rule, and
predict_base64 for servers that pass base64 text through, all give `predict`'s scores; and
`predict_pixels` (what batch inference calls on pixels decoded elsewhere) agrees with
`predict` for an export and for a run.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli import assert_clean_error, run_cli, run_command
from tests.trained_run import shared_run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NAMES = ["desert", "mountains", "sea", "sunset", "trees"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(data, run, export dir, test image files) with the run exported once."""
    data, run = shared_run(tmp_path_factory)
    base = tmp_path_factory.mktemp("export")
    model = base / "model"
    done = run_cli("export", "--run", str(run), "--out", str(model))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "serving_default" in done.stdout
    from job.data import shards

    manifest = shards.load_manifest(str(data))
    images = []
    for i, (_, example) in enumerate(shards.read_split(str(data), manifest, "test")):
        if i == 6:
            break
        path = base / f"{example.id}.jpg"
        path.write_bytes(example.image)
        images.append(path)
    return data, run, model, images


def in_process_probabilities(run: Path, images: list[Path]) -> np.ndarray:
    """sigmoid(logits) of the run's best checkpoint model, built in this process."""
    import tensorflow as tf

    from job.data.pipeline import decode_image
    from job.evaluation.loading import load_best_model
    from job.storage.run_store import RunStore

    saved = RunStore(str(run)).read_config()
    cfg, names = saved.config, saved.class_names
    model, _ = load_best_model(str(run), cfg, len(names))
    pixels = tf.stack([decode_image(tf.constant(p.read_bytes()), cfg.data.image_size) for p in images])
    return tf.sigmoid(model(pixels, training=False)).numpy()


def test_export_matches_in_process_model(exported):
    import tensorflow as tf

    _, run, model_dir, images = exported
    expected = in_process_probabilities(run, images)
    loaded = tf.saved_model.load(str(model_dir))
    assert set(loaded.signatures) == {"serving_default", "predict_images", "predict_base64"}
    served = loaded.signatures["serving_default"](images=tf.constant([p.read_bytes() for p in images]))
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5, rtol=0)

    # predict_images takes pixels already decoded and resized.
    from job.data.pipeline import decode_image

    pixels = tf.stack([decode_image(tf.constant(p.read_bytes()), 64) for p in images])
    direct = loaded.signatures["predict_images"](pixels=pixels)
    np.testing.assert_allclose(direct["probabilities"].numpy(), expected, atol=1e-5, rtol=0)

    # Label names and the tuned thresholds travel inside the model.
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    assert [n.decode() for n in loaded.label_names.numpy()] == NAMES
    np.testing.assert_allclose(loaded.thresholds.numpy(), thresholds, atol=1e-6)
    decisions = served["decisions"].numpy()
    np.testing.assert_array_equal(decisions, served["probabilities"].numpy() > np.float32(thresholds))
    labels = [s.decode() for s in served["labels"].numpy()]
    assert labels == [" ".join(n for n, d in zip(NAMES, row) if d) for row in decisions]
    assert (model_dir / "assets" / "labels.txt").read_text().split() == NAMES


def test_predict_json_lines_with_export_and_with_run(exported):
    _, run, model_dir, images = exported
    expected = in_process_probabilities(run, images)
    thresholds = np.array(json.loads((run / "thresholds.json").read_text())["thresholds"])
    for model in (model_dir, run):
        done = run_cli("predict", "--model", str(model), *map(str, images), "--format", "json")
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert [row["image"] for row in lines] == [str(p) for p in images]
        for row, probs in zip(lines, expected):
            assert list(row["probabilities"]) == NAMES
            np.testing.assert_allclose([row["probabilities"][n] for n in NAMES], probs, atol=1e-5)
            assert row["labels"] == [n for n, p, t in zip(NAMES, probs, thresholds) if p > t]


def test_predict_table_is_the_default(exported):
    _, _, model_dir, images = exported
    done = run_cli("predict", "--model", str(model_dir), *map(str, images[:2]))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["image", "labels", "probabilities"]
    assert len(lines) == 3 and lines[1].startswith(str(images[0]))
    assert all(name in lines[1] for name in NAMES)


def test_predict_rejects_a_file_that_is_not_an_image(exported, tmp_path):
    _, _, model_dir, images = exported
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    assert_clean_error(
        run_cli("predict", "--model", str(model_dir), str(images[0]), str(bad)),
        f"{bad} is not an image TensorFlow can decode",
    )


def test_predict_rejects_a_folder_that_is_neither_model_nor_run(exported, tmp_path):
    _, _, _, images = exported
    assert_clean_error(
        run_cli("predict", "--model", str(tmp_path), str(images[0])), "is neither an exported model", "config.json"
    )


def test_export_with_thresholds_of_wrong_width(exported, tmp_path):
    _, run, _, _ = exported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "thresholds.json").write_text(json.dumps({"class_names": NAMES, "thresholds": [0.5, 0.5]}))
    assert_clean_error(
        run_cli("export", "--run", str(copy), "--out", str(tmp_path / "m")),
        "has 2 threshold(s), but the run has 5 labels",
    )
    assert not (tmp_path / "m").exists()


# ---------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def predictors(exported):
    """(the export's predictor, the run's predictor), each loaded once."""
    from job.evaluation.export import load_predictor

    _, run, model_dir, _ = exported
    return load_predictor(str(model_dir)), load_predictor(str(run))


def test_saved_model_cli_lists_the_three_signatures(exported):
    _, _, model_dir, _ = exported
    cli = Path(sys.executable).parent / "saved_model_cli"
    assert cli.exists(), f"{cli} is missing: tensorflow installs it"
    done = run_command([cli, "show", "--dir", model_dir, "--all"], timeout=120, check=True)
    signatures = {}  # name -> {input name: (dtype, shape)}
    current = name = None
    for line in done.stdout.splitlines():
        if found := re.match(r"signature_def\['(\w+)'\]:", line):
            current = signatures.setdefault(found[1], {})
        elif (found := re.match(r"\s+inputs\['(\w+)'\] tensor_info:", line)) and current is not None:
            name = found[1]
        elif (found := re.match(r"\s+(dtype|shape): (.+)", line)) and current is not None and name:
            current.setdefault(name, {})[found[1]] = found[2].strip()
        elif "output(s)" in line:
            name = None
    assert signatures["serving_default"] == {"images": {"dtype": "DT_STRING", "shape": "(-1)"}}
    assert signatures["predict_base64"] == {"images_base64": {"dtype": "DT_STRING", "shape": "(-1)"}}
    assert signatures["predict_images"] == {"pixels": {"dtype": "DT_FLOAT", "shape": "(-1, 64, 64, 3)"}}
    for output in ("probabilities", "decisions", "labels"):
        assert done.stdout.count(f"outputs['{output}']") >= 3


def tf_serving_inputs(body: str, signature) -> dict:
    """The tensors TensorFlow Serving's REST API hands `signature` for a JSON `predict` body.

    As documented in tensorflow_serving/g3doc/api_rest.md and done by util/json_tensor.cc:
    row format ("instances": a list of values when the signature has one input, else of
    {input name: value}) or columnar ("inputs": the value itself, or {input name: value}); a
    DT_STRING value `{"b64": "..."}` (that one key only) stands for its base64-decoded bytes
    (absl::Base64Unescape: the standard alphabet).
    """
    import tensorflow as tf

    request = json.loads(body)
    specs = signature.structured_input_signature[1]

    def is_b64(v) -> bool:
        return isinstance(v, dict) and set(v) == {"b64"} and isinstance(v["b64"], str)

    def named(v) -> bool:
        return isinstance(v, dict) and not is_b64(v)

    def decoded(v):
        if isinstance(v, list):
            return [decoded(x) for x in v]
        return base64.b64decode(v["b64"], validate=True) if is_b64(v) else v

    only = next(iter(specs))
    if "instances" in request:
        rows = request["instances"]
        if not named(rows[0]):
            assert len(specs) == 1, "a plain list needs a signature with one input"
            rows = [{only: row} for row in rows]
        assert all(named(row) and set(row) == set(specs) for row in rows)
        columns = {name: [row[name] for row in rows] for name in specs}
    else:
        columns = request["inputs"] if named(request["inputs"]) else {only: request["inputs"]}
    return {name: tf.constant(decoded(columns[name]), dtype=spec.dtype) for name, spec in specs.items()}


def test_a_tf_serving_rest_body_with_b64_images_gives_predicts_scores(exported, predictors):
    import tensorflow as tf

    _, _, model_dir, images = exported
    data = [p.read_bytes() for p in images]
    expected = predictors[0].predict(data).probabilities
    loaded = tf.saved_model.load(str(model_dir))
    encoded = [base64.b64encode(d).decode("ascii") for d in data]
    bodies = [  # row format with bare values (one input) and named, and columnar format
        {"signature_name": "serving_default", "instances": [{"b64": e} for e in encoded]},
        {"signature_name": "serving_default", "instances": [{"images": {"b64": e}} for e in encoded]},
        {"signature_name": "serving_default", "inputs": {"images": [{"b64": e} for e in encoded]}},
    ]
    for body in bodies:
        signature = loaded.signatures[body["signature_name"]]
        out = signature(**tf_serving_inputs(json.dumps(body), signature))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-6, rtol=0)
    # TF Serving returns an output named *_bytes as {"b64": ...}: none of ours is binary.
    assert not any(name.endswith("_bytes") for name in loaded.signatures["serving_default"].structured_outputs)


def test_predict_base64_takes_standard_and_url_safe_text(exported, predictors):
    import tensorflow as tf

    _, _, model_dir, images = exported
    data = [p.read_bytes() for p in images]
    expected = predictors[0].predict(data).probabilities
    standard = [base64.b64encode(d) for d in data]
    url_safe = [base64.urlsafe_b64encode(d) for d in data]
    # The images' base64 uses both alphabets' own characters, so each variant is really tested.
    assert any(b"+" in s or b"/" in s for s in standard) and any(b"-" in u or b"_" in u for u in url_safe)
    variants = {
        "standard": standard,
        "url-safe": url_safe,
        "unpadded": [s.rstrip(b"=") for s in standard],
        "MIME lines": [base64.encodebytes(d) for d in data],
    }
    serve = tf.saved_model.load(str(model_dir)).signatures["predict_base64"]
    for name, texts in variants.items():
        out = serve(images_base64=tf.constant([t.decode("ascii") for t in texts]))
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-6, rtol=0, err_msg=name)
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(images_base64=tf.constant([standard[0].decode(), "this is not base64!"]))
    with pytest.raises(tf.errors.InvalidArgumentError):  # base64 of something that is not an image
        serve(images_base64=tf.constant([base64.b64encode(b"not an image").decode()]))
    # The model still answers after refusing.
    assert serve(images_base64=tf.constant([standard[0].decode()]))["probabilities"].shape == (1, len(NAMES))


def test_every_signature_answers_an_empty_batch(exported):
    # TensorFlow's oneDNN CPU convolution fails on an empty batch; the signatures skip the model.
    import tensorflow as tf

    _, _, model_dir, _ = exported
    loaded = tf.saved_model.load(str(model_dir))
    empty = {
        "serving_default": {"images": tf.constant([], tf.string)},
        "predict_base64": {"images_base64": tf.constant([], tf.string)},
        "predict_images": {"pixels": tf.zeros([0, 64, 64, 3])},
    }
    for name, inputs in empty.items():
        out = loaded.signatures[name](**inputs)
        assert out["probabilities"].shape == (0, len(NAMES)) and out["labels"].shape == (0,), name


def test_predict_base64_keeps_the_pixel_limit_and_older_exports_still_load(tmp_path):
    import tensorflow as tf
    import tf_keras

    from job.evaluation.export import REQUIRED_SIGNATURES, SavedModelPredictor, build_serving_module
    from tests.unit.test_pixel_limit import encoded

    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((16, 16, 3))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.GlobalAveragePooling2D()(inputs)))
    module = build_serving_module(model, ["a", "b"], [0.5, 0.5], 16, max_pixels=1000)
    tf.saved_model.save(module, str(tmp_path / "new"), signatures=module.signatures())
    loaded = tf.saved_model.load(str(tmp_path / "new"))
    big = encoded("JPEG", 40, 30)  # 1,200 pixels
    messages = []
    small = encoded("PNG", 20, 20)
    calls = (
        ("serving_default", "images", [small, big]),
        ("predict_base64", "images_base64", [base64.b64encode(small), base64.b64encode(big)]),
    )
    for name, argument, values in calls:
        with pytest.raises(tf.errors.InvalidArgumentError, match="is above the pixel limit") as caught:
            loaded.signatures[name](**{argument: tf.constant(values)})
        messages.append(re.search(r"image of .*?not decoded", caught.value.message)[0])
    assert (
        messages[0]
        == messages[1]
        == (
            "image of 40x30 = 1200 pixels is above the pixel limit of 1000 pixels (data.max_pixels); it was not decoded"
        )
    )

    # An export made before predict_base64 existed has only the required signatures; it loads.
    old = {name: fn for name, fn in module.signatures().items() if name in REQUIRED_SIGNATURES}
    tf.saved_model.save(module, str(tmp_path / "old"), signatures=old)
    predictor = SavedModelPredictor(str(tmp_path / "old"))
    assert "predict_base64" not in predictor._loaded.signatures
    assert predictor.image_size == 16
    assert predictor.predict([encoded("PNG", 20, 20)]).probabilities.shape == (1, 2)


def test_predict_pixels_agrees_with_predict_for_an_export_and_a_run(exported, predictors):
    import tensorflow as tf

    from job.data.pipeline import decode_image

    _, _, _, images = exported
    data = [p.read_bytes() for p in images]
    for predictor in predictors:
        assert predictor.image_size == 64 and isinstance(predictor.image_size, int)
        # As a batch-inference actor gets them: decoded elsewhere, stacked into one array.
        pixels = np.stack(
            [decode_image(tf.constant(b), predictor.image_size, predictor.max_pixels).numpy() for b in data]
        )
        probs = predictor.predict_pixels(pixels)
        assert probs.dtype == np.float32 and probs.shape == (len(data), len(NAMES))
        np.testing.assert_allclose(
            probs, predictor.predict(data).probabilities, atol=1e-5, rtol=0, err_msg=predictor.source
        )
        assert predictor.predict_pixels(pixels[:0]).shape == (0, len(NAMES))
        with pytest.raises(ValueError, match=r"this model takes \(n, 64, 64, 3\)"):
            predictor.predict_pixels(pixels[:, :32])
