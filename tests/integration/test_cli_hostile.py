"""Every subcommand, given a careless or hostile argument, fails with one `error:` line.

The walk covers every command `python -m job` registers (a new command without a case here
fails the test), with arguments a user gets wrong: paths that do not exist, a data set
whose dataset.json was edited badly, names and numbers out of range, an endpoint without
a scheme. A full disk (a real, tiny tmpfs) is tried on the commands that write the most.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from job.cli import COMMANDS
from tests.cli import assert_clean_error, kill_group, require, run_cli, run_command, start_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("hostile") / "ds"
    run_cli("synth", "--out", str(out), "--num-images", "60", "--num-shards", "2", "--quiet", timeout=180, check=True)
    return str(out)


@pytest.fixture(scope="module")
def damaged(data, tmp_path_factory) -> str:
    """A copy of `data` whose dataset.json lists a class twice and a count as text."""
    out = tmp_path_factory.mktemp("damaged") / "ds"
    run_command(["cp", "-r", data, str(out)], check=True)
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["class_names"][1] = manifest["class_names"][0]
    manifest["splits"]["val"]["shards"][0]["num_examples"] = "twelve"
    (out / "dataset.json").write_text(json.dumps(manifest))
    return str(out)


# (command, arguments, words the error must contain); {data}, {damaged}, {tmp} are filled in.
CASES = [
    ("demo", ["--num-images", "-5", "--local"], ["--num-images"]),
    ("synth", ["--out", "{data}", "--num-images", "20"], ["already holds a data set", "--overwrite"]),
    ("synth", ["--out", "s3://", "--num-images", "20"], ["names no bucket"]),
    ("prepare", ["--images", "{tmp}/nope", "--labels", "{tmp}/nope.csv", "--out", "{tmp}/o"], ["no such file"]),
    ("prepare", ["--images", "{tmp}", "--labels", "{tmp}/x.csv", "--out", "{tmp}/o", "--classes", " , "], ["empty"]),
    ("validate", ["{tmp}/nope"], ["{tmp}/nope", "not found"]),
    (
        "train",
        ["--local", "--config", "demo", "--data", "{damaged}", "--output", "{tmp}/run"],
        ["not a valid data set manifest"],
    ),
    (
        "train",
        ["--local", "--config", "demo", "--data", "{data}", "--output", "{tmp}/run", "--run-name", "../../x"],
        ["not allowed"],
    ),
    (
        "train",
        ["--local", "--config", "demo", "--data", "{data}", "--output", "{tmp}/run", "--set", "training.epochs=many"],
        ["epochs"],
    ),
    ("train", ["--local", "--config", "demo", "--data", "{data}", "--output", "{data}"], ["overlap"]),
    ("train", ["--local", "--config", "demo", "--data", "{data}", "--output", "{data}/run"], ["overlap"]),
    ("evaluate", ["--run", "{tmp}/nope"], ["{tmp}/nope"]),
    ("analyze", ["--data", "{data}", "--splits", "nope"], ["nope"]),
    ("analyze", ["--data", "{damaged}"], ["not a valid data set manifest"]),
    ("export", ["--run", "{tmp}/nope", "--out", "{tmp}/model"], ["{tmp}/nope"]),
    ("predict", ["--model", "{tmp}/nope", "{tmp}/x.jpg"], ["{tmp}/nope"]),
    ("predict", ["--model", "{tmp}/nope", "{tmp}/x.jpg", "--batch-size", "0"], ["--batch-size"]),
    ("predict", ["--model", "{data}"], ["--data URI --output URI"]),
    ("predict", ["--model", "{data}", "--data", "{tmp}/nope", "--output", "{tmp}/o"], ["{tmp}/nope"]),
    ("predict", ["--model", "{data}", "--data", "{tmp}", "--output", "{tmp}/o"], ["No images under {tmp}"]),
    ("predict", ["--model", "{data}", "--data", "{data}"], ["--data needs --output"]),
    ("predict", ["--model", "{data}", "{tmp}/x.jpg", "--output", "{tmp}/o"], ["--output", "add --data"]),
    ("predict", ["--model", "{data}", "--data", "{data}", "--output", "{tmp}/o", "--split", "nope"], ["nope"]),
    ("predict", ["--model", "{data}", "--data", "{data}", "--output", "{tmp}/o", "--actors", "0"], ["--actors"]),
    # Not a model: refused when it is loaded, before any Ray work starts.
    ("predict", ["--model", "{data}", "--data", "{data}", "--output", "{tmp}/o"], ["neither an exported model"]),
    ("drain", ["--deadline-seconds", "0"], ["--deadline-seconds"]),
]


def test_every_command_has_a_case():
    assert {command for command, _, _ in CASES} == set(COMMANDS)


@pytest.mark.parametrize("command, args, words", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_a_bad_argument_gives_one_error_line_and_no_traceback(command, args, words, data, damaged, tmp_path):
    fill = {"data": data, "damaged": damaged, "tmp": str(tmp_path)}
    result = run_cli(command, *(a.format(**fill) for a in args), timeout=180)
    assert_clean_error(result, *(w.format(**fill) for w in words))
    assert len([line for line in result.stderr.splitlines() if line.startswith("error: ")]) == 1


def test_validate_reports_a_damaged_manifest_without_a_traceback(damaged):
    # validate is a report: its findings go to stdout, and the exit code says whether it passed.
    result = run_cli("validate", damaged, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, result.stderr[-2000:]
    assert "lists 'desert' twice" in result.stdout
    assert "num_examples must be a whole number, got 'twelve'" in result.stdout
    assert result.stdout.strip().endswith("FAILED (1 error(s))")


def test_an_endpoint_without_a_scheme_is_named(data):
    result = run_cli("validate", "s3://bucket/ds", env={"S3_ENDPOINT_URL": "localhost:9000"}, timeout=60)
    assert_clean_error(result, "S3_ENDPOINT_URL", "http://")


# ---------------------------------------------------------------------------- a full disk


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB tmpfs: a real ENOSPC from the kernel, not a mocked one."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_writing_a_data_set_is_one_error_and_leaves_nothing(full_disk):
    result = run_cli("synth", "--out", str(full_disk / "ds"), "--num-images", "200", "--quiet", timeout=180)
    assert_clean_error(result, "No space left on device", "Free space")
    left = [name for _, _, files in os.walk(full_disk) for name in files]
    assert left == [], f"a failed write left {left}"


TRAIN = ["train", "--local", "--config", "demo", "--set", "model.width=8", "--set", "telemetry.enabled=false"]


def _scratch_left(tmpdir) -> list[str]:
    parent = tmpdir / "multilabel-job"
    return sorted(os.listdir(parent)) if parent.exists() else []


def test_a_full_disk_while_training_is_one_error_and_leaves_no_scratch(data, full_disk, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    result = run_cli(
        *TRAIN, "--data", data, "--output", str(full_disk / "run"), "--set", "training.epochs=1",
        env={"TMPDIR": str(tmpdir)}, timeout=300,
    )  # fmt: skip
    assert_clean_error(result, "No space left on device")
    assert _scratch_left(tmpdir) == [], "a failed run left its scratch files"


# ---------------------------------------------------------------------------- leftovers of a kill


def test_a_killed_run_leaves_nothing_after_it_resumes(data, tmp_path):
    tmpdir, run = tmp_path / "tmp", tmp_path / "run"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    first = start_cli(*TRAIN, "--data", data, "--output", str(run), "--set", "training.epochs=50", env=env)
    try:
        deadline = time.monotonic() + 300
        while not list(run.glob("checkpoint_epoch-*/manifest.json")) and time.monotonic() < deadline:
            assert first.poll() is None, "the run ended early"
            time.sleep(0.5)
    finally:
        kill_group(first)
    assert _scratch_left(tmpdir), "the killed run had no scratch folder: the test proves nothing"
    # What a kill in the middle of publishing a checkpoint file leaves.
    partial = sorted(run.glob("checkpoint_epoch-*"))[-1] / ".state.json.k1ll3d.partial-tmp"
    partial.write_text("{")
    done = max(int(p.parent.name.rsplit("-", 1)[1]) for p in run.glob("checkpoint_epoch-*/manifest.json"))

    result = run_cli(*TRAIN, "--data", data, "--output", str(run), "--set", f"training.epochs={done + 1}", env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert not partial.exists(), "the resumed run kept a killed write's partial file"
    assert _scratch_left(tmpdir) == [], "the killed run's scratch folder is still there"
