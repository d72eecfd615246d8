"""Single-process training (`train --local`) end to end on local folders: outputs, resume,
corrupt-checkpoint fallback, and the bad inputs a user is most likely to hit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli import assert_clean_error, run_cli

pytestmark = pytest.mark.integration

CONFIG = "configs/demo.yaml"
FAST = ["--set", "model.width=8", "--set", "data.batch_size_per_worker=16", "--set", "telemetry.enabled=false"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("data") / "synth"
    run_cli("synth", "--out", str(out), "--num-images", "240", "--quiet", timeout=180, check=True)
    return str(out)


def _train(data: str, run: Path, *extra: str, timeout: float = 300):
    return run_cli(
        "train", "--local", "--config", CONFIG, "--data", data, "--output", str(run), *FAST, *extra, timeout=timeout
    )


def _epochs(run: Path) -> list[int]:
    return [row["epoch"] for row in json.loads((run / "history.json").read_text())]


def _ok(result):
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def test_local_run_writes_outputs_resumes_and_falls_back_from_a_corrupt_checkpoint(data_dir, tmp_path):
    run = tmp_path / "run"
    out = _ok(_train(data_dir, run, "--set", "training.epochs=2"))
    assert "test macro-F1" in out
    metrics = json.loads((run / "metrics.json").read_text())
    for split in ("train", "val", "test"):
        assert {"loss", "macro_f1", "mean_average_precision", "hamming_loss", "subset_accuracy", "per_label"} <= set(
            metrics[split]
        )
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["training"]["epochs"] == 2 and config["config"]["model"]["width"] == 8
    assert config["environment"]["packages"]["tensorflow"].startswith("2.21")
    assert _epochs(run) == [1, 2]

    # Same command, more epochs: it continues, it does not start over.
    out = _ok(_train(data_dir, run, "--set", "training.epochs=3"))
    assert re.search(r"resuming from \S+checkpoint_epoch-000002 \(epoch 2 done", out), out[-2000:]
    assert _epochs(run) == [1, 2, 3]

    # Truncate a file of the newest checkpoint: restore names it and uses the previous one.
    data_file = next((run / "checkpoint_epoch-000003").glob("model.ckpt.data-*"))
    data_file.write_bytes(data_file.read_bytes()[:100])
    out = _ok(_train(data_dir, run, "--set", "training.epochs=4"))
    assert "checkpoint_epoch-000003 is corrupt" in out and data_file.name in out, out[-3000:]
    assert re.search(r"resuming from \S+checkpoint_epoch-000002 \(epoch 2 done", out)
    assert _epochs(run) == [1, 2, 3, 4]


def test_dry_run_prints_the_plan_and_trains_nothing(data_dir, tmp_path):
    run = tmp_path / "dry"
    out = _ok(
        run_cli(
            "train",
            "--config",
            CONFIG,
            "--data",
            data_dir,
            "--output",
            str(run),
            "--dry-run",
            "--set",
            "scaling.num_workers=2",
            "--set",
            "data.batch_size_per_worker=24",
            timeout=120,
        )
    )
    for expected in ("run name          dry", "workers           2", "24 per worker, 48 global", "steps per epoch"):
        assert expected in out, out
    assert not (run / "config.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "model.backbone=vgg16"], "model.backbone = 'vgg16' is not one of"),
        (["--set", "model.weights=/nonexistent/weights.h5"], "/nonexistent/weights.h5"),
        (["--set", "training.epochz=3"], "Unknown config key training.epochz. Did you mean training.epochs?"),
        (["--set", "data.batch_size_per_worker=0"], "data.batch_size_per_worker = 0 is below its minimum"),
    ],
)
def test_bad_options_stop_before_any_work(data_dir, tmp_path, args, message):
    run = tmp_path / "bad"
    result = _train(data_dir, run, *args, timeout=120)
    assert_clean_error(result, message)
    assert not run.exists() or not any(run.iterdir())


def test_missing_config_file_and_missing_data(tmp_path):
    result = run_cli(
        "train",
        "--local",
        "--config",
        "configs/nope.yaml",
        "--data",
        str(tmp_path),
        "--output",
        str(tmp_path / "r"),
        timeout=60,
    )
    assert_clean_error(result, "configs/nope.yaml does not exist")
    result = run_cli(
        "train",
        "--local",
        "--config",
        CONFIG,
        "--data",
        str(tmp_path / "nowhere"),
        "--output",
        str(tmp_path / "r"),
        timeout=120,
    )
    assert_clean_error(result, "nowhere")


def test_empty_validation_split_is_refused_up_front(data_dir, tmp_path):
    import shutil

    data = tmp_path / "noval"
    shutil.copytree(data_dir, data)
    manifest = json.loads((data / "dataset.json").read_text())
    width = len(manifest["class_names"])
    manifest["splits"]["val"] = {"num_examples": 0, "label_counts": [0] * width, "shards": []}
    (data / "dataset.json").write_text(json.dumps(manifest))
    result = _train(str(data), tmp_path / "r", timeout=120)
    assert_clean_error(result, "The 'val' split", "is empty")


def test_analyze_flags_a_pair_that_always_co_occurs(tmp_path):
    data = tmp_path / "tied"
    run_cli(
        "synth",
        "--out",
        str(data),
        "--num-images",
        "300",
        "--pair",
        "sea:sunset:1.0",
        "--quiet",
        timeout=180,
        check=True,
    )
    out = _ok(run_cli("analyze", "--data", str(data), timeout=120))
    assert "FLAG sea + sunset" in out and "0 with only sea, 0 with only sunset" in out, out
    # A split the data set does not have is named, with the ones it has.
    assert_clean_error(run_cli("analyze", "--data", str(data), "--splits", "nope", timeout=120), "nope", "train, val")


def test_a_run_killed_mid_epoch_resumes_at_its_last_step_checkpoint(data_dir, tmp_path):
    """checkpoint.every_steps: a run killed in the middle of an epoch resumes from the step it
    saved, runs only the steps left of that epoch, and ends with exactly the optimizer steps
    of an uninterrupted run."""
    import tensorflow as tf

    run = tmp_path / "run"
    marker = tmp_path / "killed"
    every = ["--set", "checkpoint.every_steps=3", "--set", "training.epochs=2"]
    killed = run_cli(
        "train", "--local", "--config", CONFIG, "--data", data_dir, "--output", str(run), *FAST, *every,
        env={"JOB_FAULT_KILL": f"0:2:5:{marker}"}, timeout=300,
    )  # fmt: skip
    assert killed.returncode != 0 and marker.exists(), (killed.stdout + killed.stderr)[-2000:]
    assert (run / "checkpoint_epoch-000001-step-00000003").is_dir(), sorted(p.name for p in run.iterdir())

    out = _ok(_train(data_dir, run, *every))
    assert re.search(r"resuming from \S+checkpoint_epoch-000001-step-00000003 \(epoch 1 done and 3 steps", out), out
    assert _epochs(run) == [1, 2]
    steps = json.loads((run / "config.json").read_text())["steps_per_epoch"]
    reader = tf.train.load_checkpoint(str(run / "checkpoint_epoch-000002" / "model.ckpt"))
    iterations = [k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_iterations/")]
    assert [int(reader.get_tensor(k)) for k in iterations] == [2 * steps]
    # Only the latest mid-epoch checkpoint outlives its epoch's end: none is left after the run.
    assert not list(run.glob("checkpoint_epoch-*-step-*"))
