"""Broken data sets: `validate --full-hash` names the problem, and `train` refuses to start.

Each test copies a pristine synthetic data set (made once per format with `python -m job
synth`) to the embedded S3 server or a local folder, damages it the way storage and people
damage data, and runs the real commands as subprocesses:

- a truncated shard, a shard whose bytes were replaced (same size, other sha256), a flipped
  byte inside a TFRecord record (a CRC error, with a manifest that still matches);
- a dataset.json whose class_names is wider than the shards' labels;
- a data folder without dataset.json;
- an S3 endpoint that nothing listens on.

`validate` must exit 1 and name the shard (and the record for the CRC case); `train --local`
must exit 1 with a message naming the shard, no traceback, and nothing written to the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import struct
import threading
import uuid

import pytest

from job import storage
from tests.cli import assert_clean_error, run_cli

pytestmark = pytest.mark.integration

NUM_IMAGES = 60
# With 60 images and 4 train shards, train shard 1 holds 11 records.
DAMAGED_SHARD = "train/part-00001-of-00004"
CORRUPT_RECORD = 7


# ---------------------------------------------------------------------------- data sets


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Local synthetic data sets by format, made once; tests damage copies of them."""
    made = {}

    def get(fmt: str) -> str:
        if fmt not in made:
            root = str(tmp_path_factory.mktemp(f"pristine-{fmt}") / "ds")
            proc = run_cli("synth", "--out", root, "--num-images", str(NUM_IMAGES), "--format", fmt, "--quiet")
            assert proc.returncode == 0, proc.stderr
            made[fmt] = root
        return made[fmt]

    return get


@pytest.fixture(scope="module")
def s3_bucket(s3_server):
    name = f"faults-{uuid.uuid4().hex[:12]}"
    storage.ensure_bucket(f"s3://{name}")
    return name


@pytest.fixture
def place(pristine, s3_bucket, tmp_path):
    """place(backend, fmt) -> (URI of a fresh copy of the data set, URI for the run)."""

    def copy(backend: str, fmt: str) -> tuple[str, str]:
        source = pristine(fmt)
        if backend == "local":
            root = str(tmp_path / "ds")
            shutil.copytree(source, root)
            return root, str(tmp_path / "run")
        prefix = f"s3://{s3_bucket}/{uuid.uuid4().hex[:8]}"
        storage.upload_dir(source, f"{prefix}/ds")
        return f"{prefix}/ds", f"{prefix}/runs/run"

    return copy


def _shard_uri(root: str, fmt: str) -> str:
    """The damaged shard's URI; its name carries the data set's generation."""
    (found,) = [u for u in storage.list_files(storage.join(root, "train"), f".{fmt}") if f"/{DAMAGED_SHARD}." in u]
    return found


def _rewrite_manifest(root: str, change) -> None:
    uri = storage.join(root, "dataset.json")
    manifest = storage.read_json(uri)
    change(manifest)
    storage.write_json(uri, manifest)


def _record_data_span(data: bytes, index: int) -> tuple[int, int]:
    """(start, end) of record `index`'s payload in TFRecord framing: len u64, crc u32, data, crc u32."""
    offset = 0
    for i in range(index + 1):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        start = offset + 12
        if i == index:
            return start, start + length
        offset = start + length + 4
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- assertions


def _assert_validate_fails(root: str, *fragments: str) -> str:
    proc = run_cli("validate", root, "--full-hash", "--quiet")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert f"{root}: FAILED" in out
    for fragment in fragments:
        assert fragment in out
    return out


def _assert_train_refuses(root: str, run: str, *fragments: str) -> str:
    proc = run_cli(
        "train",
        "--local",
        "--config",
        "configs/demo.yaml",
        "--data",
        root,
        "--output",
        run,
        "--set",
        "telemetry.enabled=false",
    )
    assert_clean_error(proc, *fragments)
    # Refused before starting: no checkpoint, not even config.json.
    assert storage.list_files(run) == []
    return proc.stdout + proc.stderr


BACKENDS_FORMATS = [("s3", "tfrecord"), ("s3", "parquet"), ("local", "tfrecord")]


# ---------------------------------------------------------------------------- shard faults


@pytest.mark.parametrize("backend, fmt", BACKENDS_FORMATS)
def test_truncated_shard(place, backend, fmt):
    root, run = place(backend, fmt)
    shard = _shard_uri(root, fmt)
    data = storage.read_bytes(shard)
    storage.write_bytes(shard, data[: len(data) // 2])

    _assert_validate_fails(root, shard, f"is {len(data) // 2} bytes but the manifest lists {len(data)}")
    _assert_train_refuses(root, run, shard, "truncated")


@pytest.mark.parametrize("backend, fmt", [("s3", "tfrecord"), ("local", "parquet")])
def test_replaced_bytes_same_size_fail_the_sha256(place, backend, fmt):
    root, run = place(backend, fmt)
    shard = _shard_uri(root, fmt)
    data = bytearray(storage.read_bytes(shard))
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x5A for b in data[middle : middle + 64])
    storage.write_bytes(shard, bytes(data))
    assert storage.size(shard) == len(data)

    _assert_validate_fails(root, shard, "does not match its sha256")
    _assert_train_refuses(root, run, shard, "sha256")


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_flipped_byte_in_a_tfrecord_record_is_a_crc_error_naming_the_record(place, backend):
    root, run = place(backend, "tfrecord")
    shard = _shard_uri(root, "tfrecord")
    data = bytearray(storage.read_bytes(shard))
    start, end = _record_data_span(bytes(data), CORRUPT_RECORD)
    data[(start + end) // 2] ^= 0x01
    storage.write_bytes(shard, bytes(data))
    # The manifest matches the damaged bytes (as if they rotted before hashing), so only the
    # record CRC can tell.
    sha = hashlib.sha256(bytes(data)).hexdigest()

    def update(manifest):
        for body in manifest["splits"].values():
            for entry in body["shards"]:
                if entry["path"].startswith(f"{DAMAGED_SHARD}."):
                    entry["sha256"] = sha

    _rewrite_manifest(root, update)

    _assert_validate_fails(root, f"Shard {shard} is corrupt at record {CORRUPT_RECORD}")
    _assert_train_refuses(root, run, f"Shard {shard} is corrupt at record {CORRUPT_RECORD}")


# ---------------------------------------------------------------------------- manifest faults


@pytest.mark.parametrize("backend", ["s3"])
def test_class_names_wider_than_the_shards_labels(place, backend):
    root, run = place(backend, "tfrecord")

    def widen(manifest):
        # A consistent-looking manifest (label_counts widened too) over 5-label shards.
        manifest["class_names"].append("volcano")
        for body in manifest["splits"].values():
            body["label_counts"].append(0)
            for entry in body["shards"]:
                entry["label_counts"].append(0)

    _rewrite_manifest(root, widen)
    message = "has 5 labels but dataset.json lists 6 class names"
    _assert_validate_fails(root, message, _shard_uri(root, "tfrecord").rsplit("/", 1)[0])
    _assert_train_refuses(root, run, message)


def test_class_names_edited_without_label_counts(place):
    root, run = place("s3", "tfrecord")
    _rewrite_manifest(root, lambda m: m["class_names"].append("volcano"))
    out = _assert_validate_fails(root, "class_names lists 6")
    assert "label_counts has 5 entries" in out
    _assert_train_refuses(root, run, "class_names lists 6")


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_data_folder_without_dataset_json(place, backend):
    root, run = place(backend, "tfrecord")
    storage.delete(storage.join(root, "dataset.json"))
    assert storage.exists(_shard_uri(root, "tfrecord"))

    _assert_validate_fails(root, f"No dataset.json at {root}", "python -m job prepare")
    _assert_train_refuses(root, run, f"No dataset.json at {root}")


# ---------------------------------------------------------------------------- storage faults


def test_unreachable_endpoint_fails_fast_with_a_clear_message():
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: None for k in os.environ if k.startswith("AWS_") or k == "S3_ENDPOINT_URL"}
    env.update(
        S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    # Fails fast: the harness kills it and fails the test if it is still retrying after 90 s
    # (how fast it is, is a matter for bench/, not a unit of pass/fail here).
    proc = run_cli("validate", "s3://somewhere/datasets/x", "--full-hash", "--quiet", env=env, timeout=90)
    assert_clean_error(proc, f"the S3 endpoint http://127.0.0.1:{port} cannot be reached", "S3_ENDPOINT_URL")


@pytest.mark.parametrize("endpoint", ["localhost:9000", "ftp://localhost:9000", "http://"])
def test_an_endpoint_url_without_scheme_or_host_is_named(endpoint):
    env = {"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = run_cli("validate", "s3://somewhere/datasets/x", env=env, timeout=60)
    assert_clean_error(proc, f"S3_ENDPOINT_URL={endpoint!r} is not an endpoint URL", "http://")


@pytest.fixture
def stalled_endpoint():
    """An "S3 endpoint" that accepts connections and never answers (a hung proxy or server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize(
    "command",
    [
        ["analyze", "--data", "s3://somewhere/datasets/x"],
        ["evaluate", "--run", "s3://somewhere/runs/x"],
        ["export", "--run", "s3://somewhere/runs/x", "--out", "s3://somewhere/models/x"],
        ["predict", "--model", "s3://somewhere/models/x", "s3://somewhere/images/a.jpg"],
    ],
    ids=lambda c: c[0],
)
def test_every_s3_command_fails_fast_on_a_stalled_endpoint(stalled_endpoint, command):
    env = {k: None for k in os.environ if k.startswith("AWS_") or k == "S3_ENDPOINT_URL"}
    env.update(
        S3_ENDPOINT_URL=stalled_endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    # Without the pre-flight probe these retried for ~8 minutes (60 s reads x 8 attempts); the
    # harness kills the command and fails the test after 90 s.
    proc = run_cli(*command, env=env, timeout=90)
    assert_clean_error(proc, stalled_endpoint, "stopped answering")
