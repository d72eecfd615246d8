"""`export` and `predict` on a real (tiny) run: the SavedModel matches the checkpoint model.

Shares the session's tiny trained run with tests/integration/test_evaluate_cli.py (trained
once, on first use, by whichever module runs first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli import assert_clean_error, run_cli
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
    assert set(loaded.signatures) == {"serving_default", "predict_images"}
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
