"""Distributed training on a real local Ray cluster (2 workers) against the embedded S3 server.

Each test runs the CLI as a user would (`python -m job train ...` in a subprocess with a
hard timeout). The data sets are small (64 px synthetic scenes) so a run takes about a
minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from job import storage
from job.storage.run_store import checkpoint_dir_name
from job.training import checkpoints
from tests.cli import REPO, assert_clean_error, kill_group, run_cli, run_command, start_cli
from tests.contracts import METRICS_SPLIT_KEYS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = "configs/demo.yaml"
# Small and fast: 2 workers x 1 CPU, tiny model; telemetry off unless a test scrapes it.
FAST = [
    "--set",
    "model.width=8",
    "--set",
    "data.batch_size_per_worker=16",
    "--set",
    "telemetry.enabled=false",
    "--set",
    "training.early_stopping_patience_epochs=0",
    "--set",
    "training.reduce_lr_patience_epochs=0",
]
RUN_TIMEOUT = 420
CONTRACT_KEYS = METRICS_SPLIT_KEYS


@pytest.fixture(scope="module")
def data_bucket(s3_server) -> str:
    name = f"ray-{uuid.uuid4().hex[:12]}"
    storage.ensure_bucket(f"s3://{name}")
    return name


def _synth(uri: str, num_images: int, num_shards: int, fmt: str = "tfrecord") -> str:
    run_cli(
        "synth",
        "--out",
        uri,
        "--num-images",
        str(num_images),
        "--num-shards",
        str(num_shards),
        "--format",
        fmt,
        "--quiet",
        timeout=180,
        check=True,
    )
    return uri


@pytest.fixture(scope="module")
def tfrecord_data(data_bucket) -> str:
    return _synth(f"s3://{data_bucket}/datasets/tfr", 400, 4)


@pytest.fixture(scope="module")
def parquet_data(data_bucket) -> str:
    return _synth(f"s3://{data_bucket}/datasets/parquet4", 400, 4, "parquet")


# The fault tests run each ingest path (data.ingest) on each format once between them.
KILL_CASES = [("direct", "tfrecord_data"), ("ray_data", "parquet_data")]
RESUME_CASES = [("direct", "parquet_data"), ("ray_data", "tfrecord_data")]


def _ingest(path: str) -> list[str]:
    return ["--set", f"data.ingest={path}"]


def _train(data: str, output: str, *extra: str, env: dict | None = None, timeout: float = RUN_TIMEOUT):
    return run_cli(
        "train", "--config", CONFIG, "--data", data, "--output", output, *FAST, *extra, env=env, timeout=timeout
    )


def _history(run_uri: str) -> list[dict]:
    return storage.read_json(storage.join(run_uri, "history.json"))


def _checkpoint_epochs(run_uri: str) -> list[int]:
    names = {
        re.search(r"checkpoint_epoch-(\d+)/", u).group(1)
        for u in storage.list_files(run_uri)
        if "checkpoint_epoch-" in u
    }
    return sorted(int(n) for n in names)


def _assert_ok(result):
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


# ---------------------------------------------------------------------------- happy paths


@pytest.fixture(scope="module")
def baseline_run(data_bucket, tfrecord_data) -> str:
    """An uninterrupted 3-epoch run, the reference for the fault tests."""
    run = f"s3://{data_bucket}/runs/baseline"
    _assert_ok(_train(tfrecord_data, run, "--set", "training.epochs=3"))
    return run


def test_two_workers_train_on_tfrecord_shards(baseline_run):
    metrics = storage.read_json(storage.join(baseline_run, "metrics.json"))
    for split in ("train", "val", "test"):
        assert CONTRACT_KEYS <= set(metrics[split]), f"{split} lacks {CONTRACT_KEYS - set(metrics[split])}"
        assert set(metrics[split]["per_label"]) == {"desert", "mountains", "sea", "sunset", "trees"}
    assert [row["epoch"] for row in _history(baseline_run)] == [1, 2, 3]
    assert _checkpoint_epochs(baseline_run), "no checkpoint objects under the run"
    files = storage.list_files(storage.join(baseline_run, _latest_dir(baseline_run)))
    assert any(f.endswith("manifest.json") for f in files) and any(".data-" in f for f in files)
    config = storage.read_json(storage.join(baseline_run, "config.json"))
    assert config["num_workers"] == 2 and config["global_batch_size"] == 32


def _latest_dir(run_uri: str) -> str:
    return f"checkpoint_epoch-{_checkpoint_epochs(run_uri)[-1]:06d}"


@pytest.fixture(scope="module")
def one_parquet_shard(data_bucket) -> str:
    return _synth(f"s3://{data_bucket}/datasets/pq", 300, 1, "parquet")


# The direct path only: ray_data on Parquet trains to the end in the kill test (KILL_CASES),
# and the CI time that saves pays for the batch-inference tests.
@pytest.mark.parametrize("ingest", ["direct"])
def test_two_workers_train_on_parquet_shards(data_bucket, one_parquet_shard, ingest):
    run = f"s3://{data_bucket}/runs/parquet-{ingest}"
    result = _train(one_parquet_shard, run, "--set", "training.epochs=1", *_ingest(ingest))
    _assert_ok(result)
    assert f"ingest {ingest}" in result.stdout + result.stderr
    # One shard for two workers: it trains, and says why reads are less parallel.
    assert "1 shard(s) for 2 workers" in result.stdout + result.stderr
    # A local Ray has no dashboard, so Ray Train's placement-group cleaner cannot reach the
    # State API; its once-a-second warning used to bury the epoch lines (~100 per demo).
    assert "Failed to query Ray Train Controller actor state" not in result.stdout + result.stderr
    metrics = storage.read_json(storage.join(run, "metrics.json"))
    assert CONTRACT_KEYS <= set(metrics["test"])
    assert _checkpoint_epochs(run) == [1]


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("ingest", "data_fixture"), KILL_CASES)
def test_killed_worker_is_restarted_and_resumes_from_latest_checkpoint(
    request, data_bucket, baseline_run, tmp_path, ingest, data_fixture
):
    run = f"s3://{data_bucket}/runs/killed-{ingest}"
    marker = tmp_path / "killed"
    result = _train(
        request.getfixturevalue(data_fixture),
        run,
        *_ingest(ingest),
        "--set",
        "training.epochs=3",
        "--set",
        "scaling.max_failures=1",
        env={"JOB_FAULT_KILL": f"1:3:2:{marker}"},
    )
    _assert_ok(result)
    assert marker.exists(), "the fault was never injected"
    out = result.stdout + result.stderr
    resumed = [int(m) for m in re.findall(r"resuming from \S+ \(epoch (\d+) done", out)]
    # The newest checkpoint Ray had registered when rank 1 died: epoch 1 or 2, never 0.
    assert resumed and resumed[-1] in (1, 2), out[-3000:]
    history = _history(run)
    assert [row["epoch"] for row in history] == [1, 2, 3]
    base = _history(baseline_run)[-1]["val_loss"]
    assert abs(history[-1]["val_loss"] - base) < 0.15, (history[-1]["val_loss"], base)


def test_killed_worker_without_retries_fails_with_a_clear_error(data_bucket, tfrecord_data, tmp_path):
    run = f"s3://{data_bucket}/runs/killed-fatal"
    result = _train(
        tfrecord_data,
        run,
        "--set",
        "training.epochs=2",
        "--set",
        "scaling.max_failures=0",
        env={"JOB_FAULT_KILL": f"1:1:2:{tmp_path / 'killed'}"},
    )
    assert result.returncode == 1
    # Ray streams the workers' own logs (tracebacks included) above it; the command's last
    # word is one paragraph naming the rank that died and the cause.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Training failed: worker rank 1 failed"), result.stderr[-2000:]
    assert "died" in last and "scaling.max_failures" in last


@pytest.mark.parametrize(("ingest", "data_fixture"), RESUME_CASES)
def test_stopped_driver_resumes_where_it_left_off(request, data_bucket, ingest, data_fixture):
    run = f"s3://{data_bucket}/runs/driver-stop-{ingest}"
    data = request.getfixturevalue(data_fixture)
    args = ["train", "--config", CONFIG, "--data", data, "--output", run, *FAST, *_ingest(ingest)]
    args += ["--set", "training.epochs=4"]
    proc = start_cli(*args)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        # The manifest is published last, so once it is there the epoch-2 checkpoint is whole.
        manifest = storage.join(run, checkpoint_dir_name(2), checkpoints.MANIFEST)
        while time.monotonic() < deadline and not storage.exists(manifest):
            if proc.poll() is not None:
                pytest.fail(f"the run ended before epoch 2:\n{proc.stdout.read()[-3000:]}")
            time.sleep(1)
        assert storage.exists(manifest), "no complete epoch-2 checkpoint within the time limit"
    finally:
        kill_group(proc)
    assert not storage.exists(storage.join(run, "metrics.json"))
    result = run_cli(*args, timeout=RUN_TIMEOUT)
    _assert_ok(result)
    resumed = [int(m) for m in re.findall(r"resuming from \S+ \(epoch (\d+) done", result.stdout + result.stderr)]
    assert resumed and resumed[0] >= 2, (result.stdout + result.stderr)[-3000:]
    assert [row["epoch"] for row in _history(run)] == [1, 2, 3, 4]


def test_data_that_cannot_feed_the_workers_fails_before_training(data_bucket):
    data = f"s3://{data_bucket}/datasets/tiny"
    run_cli("synth", "--out", data, "--num-images", "30", "--quiet", timeout=120, check=True)
    result = _train(data, f"s3://{data_bucket}/runs/tiny", timeout=120)
    assert_clean_error(result, "fewer than one batch", "scaling.num_workers")
    # Before training: no Ray was started and nothing was written.
    assert "starting a local Ray" not in result.stdout + result.stderr
    assert not storage.list_files(f"s3://{data_bucket}/runs/tiny")


def test_ray_job_submit_runs_on_a_started_cluster(data_bucket, tfrecord_data, tmp_path):
    """`ray start --head` + `ray job submit` with the README's entrypoint."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    if not shutil.which(ray_bin):
        pytest.fail("the ray CLI is missing from the environment")
    # `python` in the entrypoint must be this environment's interpreter, as in an activated venv.
    env = {
        "RAY_AUTH_MODE": "token",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    dash_port = _free_port()
    gcs_port = _free_port()
    # Its own temp folder marks this cluster's processes, so the test stops only those
    # (`ray stop --force` would stop every Ray on the machine). Short: it holds unix sockets.
    temp_dir = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    try:
        run_command(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={gcs_port}",
                "--num-cpus=4",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
            ],
            env=env,
            check=True,
            timeout=180,
        )
        run = f"s3://{data_bucket}/runs/submitted"
        runtime_env = {
            "env_vars": {
                k: os.environ[k]
                for k in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")
            }
        }
        cmd = [
            ray_bin,
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash_port}",
            "--working-dir",
            str(REPO),
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "-m",
            "job",
            "train",
            "--config",
            CONFIG,
            "--data",
            tfrecord_data,
            "--output",
            run,
            *FAST,
            "--set",
            "training.epochs=1",
        ]
        # The job agent can take a while to register after `ray start` on a busy machine;
        # the submission is refused (not queued) until it has.
        deadline = time.monotonic() + 180
        while True:
            result = run_command(cmd, env=env, timeout=RUN_TIMEOUT)
            if "No available agent" not in result.stdout + result.stderr or time.monotonic() > deadline:
                break
            time.sleep(5)
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "succeeded" in out.lower(), out[-4000:]
        assert _checkpoint_epochs(run) == [1]
        assert storage.exists(storage.join(run, "metrics.json"))
    finally:
        _stop_processes_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_processes_mentioning(marker: str) -> None:
    """SIGKILL every process whose command line names `marker` (one test cluster's daemons)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass  # gone meanwhile, or not ours to read


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- transfer learning


def test_transfer_preset_unfreezes_on_time_and_resumes_unfrozen_after_a_kill(data_bucket, tfrecord_data, tmp_path):
    """configs/transfer-efficientnet.yaml on 2 workers, from a backbone-only weights file (what
    a user without internet gives instead of `imagenet`): the head trains alone for 1 epoch,
    the backbone unfreezes at epoch 2, a worker dies in epoch 4, and the restarted group
    resumes unfrozen, on the same LR curve as an uninterrupted run."""
    import tf_keras

    from job.config import load_config
    from job.training.schedules import learning_rate_for

    weights = tmp_path / "efficientnetb0_notop.h5"
    tf_keras.applications.EfficientNetB0(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        str(weights)
    )
    overrides = [
        f"model.weights={weights}",
        "data.image_size=32",
        "data.batch_size_per_worker=16",
        "scaling.use_gpu=false",
        "scaling.cpus_per_worker=1",
        "scaling.max_failures=1",
        "training.epochs=5",
        "training.early_stopping_patience_epochs=0",
        "transfer.frozen_epochs=1",
        "telemetry.enabled=false",
    ]
    run = f"s3://{data_bucket}/runs/transfer"
    marker = tmp_path / "killed"
    sets = [arg for o in overrides for arg in ("--set", o)]
    result = run_cli(
        "train", "--config", "transfer-efficientnet", "--data", tfrecord_data, "--output", run, *sets,
        env={"JOB_FAULT_KILL": f"0:4:2:{marker}"}, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    _assert_ok(result)
    out = result.stdout + result.stderr
    assert marker.exists(), "the fault was never injected"
    resumed = [int(m) for m in re.findall(r"resuming from \S+ \(epoch (\d+) done", out)]
    assert resumed and resumed[-1] in (2, 3), out[-3000:]  # a checkpoint after the unfreeze
    # One unfreeze, at epoch 2; the resumed group was rebuilt unfrozen instead of unfreezing again.
    assert re.findall(r"epoch (\d+): backbone unfrozen", out) == ["2"], out[-3000:]
    history = _history(run)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert [row["backbone_frozen"] for row in history] == [True, False, False, False, False]
    # The LR after the resume is the one an uninterrupted run has at that step: the cosine
    # curve times the unfreeze factor (each row holds the LR the next step uses).
    cfg = load_config("transfer-efficientnet", overrides)
    steps = int(re.search(r"steps per epoch\s+(\d+)", out).group(1))
    schedule = learning_rate_for(
        cfg.training, steps, unfreeze_epoch=1, unfreeze_factor=cfg.transfer.learning_rate_factor
    )
    expected = [float(schedule(row["epoch"] * steps)) for row in history]
    assert [row["learning_rate"] for row in history] == pytest.approx(expected, rel=1e-5)
    metrics = storage.read_json(storage.join(run, "metrics.json"))
    assert CONTRACT_KEYS <= set(metrics["test"])
