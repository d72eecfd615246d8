"""The request-level IAM check: every S3 request a real run makes is allowed by the job's IRSA
policy (infra/modules/irsa/main.tf), and the same requests elsewhere are not. The run is
train, a resume, evaluate, export, and batch inference (`predict --data`, on a local Ray).

moto does not enforce IAM, so the embedded server records every HTTP request it receives
during a run (train with checkpoints and the final evaluation, a resume with checkpoint
retention, and a separate `evaluate`), and tests/iam_policy.py judges each one against the
policy parsed from the Terraform, the way AWS would for the pod's role.

The data set is written by the test (its requests are not the job's: data sets are prepared
by whoever owns them); the recording starts with the first `train`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from job import storage
from job.storage import embedded
from tests.cli import run_cli
from tests.iam_policy import TEST_KMS_KEY_ARN, S3Request, denied, job_policy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASETS, RUNS = "datasets", "runs"  # the IRSA module's default prefixes (and the RayJob's URIs)
SMALL = [
    "--config",
    "demo",
    "--set",
    "model.backbone=small_cnn",
    "--set",
    "model.width=8",
    "--set",
    "data.batch_size_per_worker=16",
    "--set",
    "telemetry.enabled=false",
    # Keep one best checkpoint (and the latest), so the resumed run deletes one: retention.
    "--set",
    "checkpoint.keep_best=1",
]
TIMEOUT = 300


@dataclass
class Recorded:
    bucket: str
    requests: list[tuple[str, S3Request]]  # (phase, request)
    outputs: dict[str, str]  # phase -> the command's output
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def recorded() -> Iterator[Recorded]:
    log: list[dict] = []
    # Its own server, so that only this module's requests are recorded; use_embedded_s3
    # restores the environment (and so any session server's settings) when it stops.
    server = embedded.use_embedded_s3(record=log)
    try:
        bucket = f"iam-{uuid.uuid4().hex[:12]}"
        storage.ensure_bucket(f"s3://{bucket}")
        data, run = f"s3://{bucket}/{DATASETS}/iam", f"s3://{bucket}/{RUNS}/iam-run"
        run_cli("synth", "--out", data, "--num-images", "240", "--quiet", timeout=180, check=True)
        phases = {
            "train": ["train", "--local", "--data", data, "--output", run, *SMALL, "--set", "training.epochs=2"],
            # The same command with more epochs resumes from the newest checkpoint.
            "resume": ["train", "--local", "--data", data, "--output", run, *SMALL, "--set", "training.epochs=3"],
            "evaluate": ["evaluate", "--run", run],
            # Serving and batch inference as the RayJob runs them (docs/batch-inference.md):
            # the export and the predictions under runs/, the images read from datasets/.
            "export": ["export", "--run", run, "--out", f"s3://{bucket}/{RUNS}/iam-model"],
            "predict": [
                "predict",
                "--model",
                f"s3://{bucket}/{RUNS}/iam-model",
                "--data",
                data,
                "--split",
                "test",
                "--output",
                f"s3://{bucket}/{RUNS}/iam-predictions",
            ],
        }
        requests: list[tuple[str, S3Request]] = []
        outputs, seconds = {}, {}
        for phase, argv in phases.items():
            del log[:]
            started = time.monotonic()
            result = run_cli(*argv, timeout=TIMEOUT)
            seconds[phase] = time.monotonic() - started
            outputs[phase] = result.stdout + result.stderr
            assert result.returncode == 0, f"{phase} failed:\n{outputs[phase][-3000:]}"
            requests += [(phase, S3Request.from_record(r)) for r in list(log)]
        yield Recorded(bucket, requests, outputs, seconds)
    finally:
        server.stop()


def _refusals(recorded: Recorded) -> list[tuple[str, S3Request, list[str]]]:
    """(phase, request, why) for each recorded request that the policy refuses."""
    policy = job_policy(recorded.bucket)
    found = []
    for phase, request in recorded.requests:
        why = denied(policy, request, TEST_KMS_KEY_ARN)
        if why:
            found.append((phase, request, why))
    return found


def _describe(items) -> str:
    return "\n".join(f"  [{phase}] {request}\n      " + "\n      ".join(why) for phase, request, why in items)


def test_the_run_made_the_requests_of_training_checkpoints_evaluation_and_resume(recorded):
    assert "resuming from" in recorded.outputs["resume"], recorded.outputs["resume"][-2000:]
    assert storage.exists(f"s3://{recorded.bucket}/{RUNS}/iam-run/metrics.json")
    operations = {request.operation for _, request in recorded.requests}
    # Pre-flight, dataset and shard reads, checkpoint writes and reads, the write probe's
    # delete and retention's batch delete: each is part of what the policy must allow.
    assert {"ListObjectsV2", "GetObject", "HeadObject", "PutObject", "DeleteObject"} <= operations
    assert "DeleteObjects" in operations, "retention deleted no checkpoint (checkpoint.keep_best=1, 3 epochs)"
    keys = {request.key for _, request in recorded.requests}
    assert any(k.startswith(f"{DATASETS}/iam/") for k in keys) and any("checkpoint_epoch-" in k for k in keys)
    by_phase = {phase: {r.operation for p, r in recorded.requests if p == phase} for phase in recorded.outputs}
    assert "GetObject" in by_phase["resume"] and "PutObject" in by_phase["evaluate"], by_phase
    assert {"GetObject", "PutObject"} <= by_phase["predict"], by_phase
    assert storage.exists(f"s3://{recorded.bucket}/{RUNS}/iam-predictions/_SUCCESS")
    print(f"\n{len(recorded.requests)} requests; seconds per phase: {recorded.seconds}")


def test_every_request_of_the_run_is_allowed_by_the_job_policy(recorded):
    refused = _refusals(recorded)
    assert not refused, (
        f"{len(refused)} of {len(recorded.requests)} requests would get 403 from AWS under the IRSA policy "
        f"in infra/modules/irsa/main.tf:\n{_describe(refused[:20])}"
    )


def test_the_same_requests_against_another_bucket_are_denied(recorded):
    other, policy = f"other-{recorded.bucket}", job_policy(recorded.bucket)
    allowed = [
        (phase, request)
        for phase, request in recorded.requests
        if not denied(policy, request.retarget(bucket=other), TEST_KMS_KEY_ARN)
    ]
    assert not allowed, "allowed against another bucket:\n" + "\n".join(f"  [{p}] {r}" for p, r in allowed[:20])


@pytest.mark.parametrize(
    "where, move",
    [
        ("under another top-level prefix", lambda key: f"elsewhere/{key}"),
        # A prefix that merely starts with the allowed one's name is a different prefix.
        (
            "under a look-alike prefix",
            lambda key: key.replace(f"{DATASETS}/", f"{DATASETS}-x/", 1).replace(f"{RUNS}/", f"{RUNS}-x/", 1),
        ),
    ],
)
def test_the_same_requests_outside_the_data_and_run_prefixes_are_denied(recorded, where, move):
    named = [(phase, request) for phase, request in recorded.requests if request.names_keys]
    # Every request names a key or a prefix: none is bucket-wide (HeadBucket, an unprefixed
    # listing), which the prefix-scoped policy would refuse.
    assert all(r.names_keys for _, r in recorded.requests), [str(r) for _, r in recorded.requests if not r.names_keys]
    policy = job_policy(recorded.bucket)
    allowed = [(p, r) for p, r in named if not denied(policy, r.retarget(move=move), TEST_KMS_KEY_ARN)]
    assert not allowed, f"allowed {where}:\n" + "\n".join(f"  [{p}] {r.retarget(move=move)}" for p, r in allowed[:20])


def test_the_runs_writes_aimed_at_the_datasets_prefix_are_denied(recorded):
    writes = [
        (phase, request)
        for phase, request in recorded.requests
        if request.operation in ("PutObject", "DeleteObject", "DeleteObjects", "CreateMultipartUpload")
    ]
    assert writes

    def into_datasets(key: str) -> str:
        return f"{DATASETS}/{key[len(RUNS) + 1 :]}" if key.startswith(f"{RUNS}/") else key

    policy = job_policy(recorded.bucket)
    allowed = [(p, r) for p, r in writes if not denied(policy, r.retarget(move=into_datasets), TEST_KMS_KEY_ARN)]
    assert not allowed, "writes allowed under datasets/:\n" + "\n".join(f"  [{p}] {r}" for p, r in allowed[:20])


def test_the_request_log_is_written_as_jsonl_when_the_environment_names_a_file(tmp_path, monkeypatch):
    path = tmp_path / "requests.jsonl"
    monkeypatch.setenv(embedded.REQUEST_LOG_ENV, str(path))
    bucket = f"log-{uuid.uuid4().hex[:12]}"
    server = embedded.use_embedded_s3(bucket=bucket)
    try:
        storage.write_text(f"s3://{bucket}/runs/r/a b.txt", "hello")
        assert storage.read_text(f"s3://{bucket}/runs/r/a b.txt") == "hello"  # answered as without the log
        storage.delete(f"s3://{bucket}/runs/r")
    finally:
        server.stop()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    seen = [(r["method"], r["path"], r["status"]) for r in records]
    assert ("PUT", f"/{bucket}", 200) in seen  # CreateBucket
    assert ("PUT", f"/{bucket}/runs/r/a b.txt", 200) in seen and ("GET", f"/{bucket}/runs/r/a b.txt", 200) in seen
    (delete,) = [S3Request.from_record(r) for r in records if r["method"] == "POST"]
    assert delete.operation == "DeleteObjects" and "runs/r/a b.txt" in delete.delete_keys
