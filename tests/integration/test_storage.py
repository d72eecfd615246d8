"""storage.py against real HTTP S3 servers on 127.0.0.1 (moto), and real local folders.

Fixtures ``s3_server`` and ``bucket`` come from ``tests/s3_fixtures.py``.
"""

from __future__ import annotations

import http.client
import http.server
import io
import os
import socket
import subprocess
import sys
import threading

import pytest

from job import storage
from job.storage import StorageError
from job.storage import objects as storage_objects

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _FaultyS3Proxy:
    """An HTTP proxy in front of an S3 server that throttles (503 SlowDown) or cuts answers off.

    ``throttle`` is how many requests still get 503 (``None`` means forever); ``truncate`` is
    how many GET answers are cut off half-way; ``requests`` counts all requests seen.
    """

    SLOW_DOWN = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
    )

    def __init__(self, upstream: str, throttle: int | None, truncate: int = 0):
        self.upstream = upstream.split("://", 1)[1]
        self.throttle = throttle
        self.truncate = truncate
        self.requests = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    throttled = proxy.throttle is None or proxy.throttle > 0
                    if throttled and proxy.throttle is not None:
                        proxy.throttle -= 1
                if throttled:
                    self._reply(503, {"Content-Type": "application/xml"}, proxy.SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    forward = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    conn.request(self.command, self.path, body=body, headers=forward)
                    response = conn.getresponse()
                    data = response.read()
                    # HEAD answers keep the object's Content-Length; others are re-framed.
                    dropped = {"transfer-encoding", "connection"}
                    if self.command != "HEAD":
                        dropped.add("content-length")
                    headers = {k: v for k, v in response.getheaders() if k.lower() not in dropped}
                    with proxy._lock:
                        cut = self.command == "GET" and proxy.truncate > 0 and len(data) > 1
                        proxy.truncate -= int(cut)
                    if cut:  # announce the full length, send half, hang up
                        headers["Content-Length"] = str(len(data))
                        self._reply(response.status, headers, data[: len(data) // 2])
                        return
                    self._reply(response.status, headers, data)
                finally:
                    conn.close()

            def _reply(self, status, headers, data):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if not any(k.lower() == "content-length" for k in headers):
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":  # HEAD answers carry a length but no body
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, *args):  # keep test output quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self):
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def proxy_factory(s3_server):
    proxies = []

    def make(throttle, truncate=0):
        proxy = _FaultyS3Proxy(s3_server.endpoint_url, throttle, truncate)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="module")
def strict_s3_server():
    """A moto server in a subprocess that enforces IAM (INITIAL_NO_AUTH_ACTION_COUNT=0).

    The variable must be set before moto is imported, hence a separate process.
    """
    code = (
        "import sys, time\n"
        "from moto.server import ThreadedMotoServer\n"
        "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
        "s.start()\n"
        "print(s.get_host_and_port()[1], flush=True)\n"
        "sys.stdin.read()\n"  # run until the test closes our stdin
    )
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="0")
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = proc.stdout.readline().strip()
        assert port.isdigit(), "strict moto server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stdin.close()
        proc.terminate()
        proc.wait(timeout=10)


def _point_at(monkeypatch, endpoint_url: str, key: str = "embedded", secret: str = "embedded"):
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


# --------------------------------------------------------------------------- round trips


@pytest.mark.timeout(60)
def test_bytes_text_json_round_trip(bucket):
    root = f"s3://{bucket}/runs/r1"
    storage.write_bytes(storage.join(root, "a.bin"), b"\x00\x01binary")
    storage.write_text(storage.join(root, "b.txt"), "héllo\n")
    storage.write_json(storage.join(root, "c.json"), {"z": 1, "a": [1, 2]})

    assert storage.read_bytes(f"{root}/a.bin") == b"\x00\x01binary"
    assert storage.read_text(f"{root}/b.txt") == "héllo\n"
    assert storage.read_json(f"{root}/c.json") == {"z": 1, "a": [1, 2]}
    # Insertion order and indent 2 are kept, so diffs of run outputs stay readable.
    assert storage.read_text(f"{root}/c.json").startswith('{\n  "z": 1,')
    assert storage.size(f"{root}/a.bin") == 8
    assert storage.exists(f"{root}/a.bin") and storage.exists(root)
    assert not storage.exists(f"{root}/missing.bin")


@pytest.mark.timeout(60)
def test_open_write_open_read_stream(bucket):
    uri = f"s3://{bucket}/big/blob.bin"
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with storage.open_write(uri) as f:
        for _ in range(3):
            f.write(chunk)
    with storage.open_read(uri) as f:
        assert f.read(10) == chunk[:10]
        rest = f.read()
    assert len(rest) == 3 * len(chunk) - 10
    assert storage.size(uri) == 3 * len(chunk)


@pytest.mark.timeout(60)
def test_list_files_and_delete_prefix(bucket):
    for name in ["d/x.json", "d/sub/y.json", "d/sub/z.txt", "d2/other.json"]:
        storage.write_bytes(f"s3://{bucket}/{name}", b"1")

    assert storage.list_files(f"s3://{bucket}/d") == [
        f"s3://{bucket}/d/sub/y.json",
        f"s3://{bucket}/d/sub/z.txt",
        f"s3://{bucket}/d/x.json",
    ]
    # "d" must not match the sibling prefix "d2".
    assert storage.list_files(f"s3://{bucket}/d/", suffix=".json") == [
        f"s3://{bucket}/d/sub/y.json",
        f"s3://{bucket}/d/x.json",
    ]
    assert storage.list_files(f"s3://{bucket}/nothing") == []

    storage.delete(f"s3://{bucket}/d")
    assert storage.list_files(f"s3://{bucket}") == [f"s3://{bucket}/d2/other.json"]
    storage.delete(f"s3://{bucket}/d")  # missing: no error
    storage.delete(f"s3://{bucket}/d2/other.json")
    assert storage.list_files(f"s3://{bucket}") == []


@pytest.mark.timeout(60)
def test_large_write_is_a_multipart_upload(bucket, monkeypatch):
    # 5 MiB is S3's smallest part size; a lower threshold keeps the test small.
    monkeypatch.setattr(storage_objects, "MULTIPART_THRESHOLD_BYTES", 5 * 1024 * 1024)
    uri = f"s3://{bucket}/large/model.bin"
    payload = os.urandom(1024) * (11 * 1024)  # 11 MiB -> 3 parts
    with storage.open_write(uri) as f:
        f.write(payload)
    assert storage.read_bytes(uri) == payload
    etag = storage.s3_client().head_object(Bucket=bucket, Key="large/model.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # S3 marks multipart ETags with "-<parts>"


@pytest.mark.timeout(60)
def test_delete_more_than_one_batch(bucket, monkeypatch):
    # DeleteObjects takes at most 1000 keys; a batch of 3 exercises the same loop cheaply.
    monkeypatch.setattr(storage_objects, "_DELETE_BATCH", 3)
    for i in range(8):
        storage.write_bytes(f"s3://{bucket}/many/{i:05d}", b"")
    storage.write_bytes(f"s3://{bucket}/keep/x", b"")
    storage.delete(f"s3://{bucket}/many")
    assert storage.list_files(f"s3://{bucket}") == [f"s3://{bucket}/keep/x"]


@pytest.mark.timeout(60)
def test_upload_and_download_dir(bucket, tmp_path):
    src = tmp_path / "src"
    (src / "nested" / "deep").mkdir(parents=True)
    (src / "top.txt").write_text("top")
    (src / "nested" / "deep" / "leaf.bin").write_bytes(b"\x01" * 1000)

    storage.upload_dir(str(src), f"s3://{bucket}/ckpt/epoch-1")
    assert storage.list_files(f"s3://{bucket}/ckpt") == [
        f"s3://{bucket}/ckpt/epoch-1/nested/deep/leaf.bin",
        f"s3://{bucket}/ckpt/epoch-1/top.txt",
    ]

    dst = tmp_path / "dst"
    storage.download_dir(f"s3://{bucket}/ckpt/epoch-1", str(dst))
    assert (dst / "top.txt").read_text() == "top"
    assert (dst / "nested" / "deep" / "leaf.bin").read_bytes() == b"\x01" * 1000
    assert sorted(p.name for p in dst.rglob("*") if p.is_file()) == ["leaf.bin", "top.txt"]


@pytest.mark.timeout(60)
def test_copy_file_between_s3_and_a_local_folder(bucket, tmp_path):
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than one 1 MiB copy block
    source = tmp_path / "w.weights.h5"
    source.write_bytes(payload)
    remote = f"s3://{bucket}/models/w.weights.h5"
    storage.copy_file(str(source), remote)
    back = tmp_path / "back" / "w.weights.h5"
    storage.copy_file(remote, str(back))
    assert back.read_bytes() == payload
    with pytest.raises(StorageError, match="not found"):
        storage.copy_file(f"s3://{bucket}/models/missing.h5", str(tmp_path / "x.h5"))


def test_arrow_filesystem_reads_parquet_written_by_storage(bucket):
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "b"], "labels": [[0, 1], [1, 1]], "image": [b"x", b"yy"]})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(f"s3://{bucket}/ds/train/part-00000-of-00001.parquet", buffer.getvalue())

    fs, path = storage.arrow_filesystem(f"s3://{bucket}/ds/train")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{bucket}/ds/train"
    assert pq.read_table(path, filesystem=fs).to_pylist() == table.to_pylist()

    # And the other way: what pyarrow writes, storage reads.
    with fs.open_output_stream(f"{path}/from-arrow.txt") as out:
        out.write(b"arrow")
    assert storage.read_bytes(f"s3://{bucket}/ds/train/from-arrow.txt") == b"arrow"


def test_arrow_filesystem_local(tmp_path):
    import pyarrow.fs as pafs

    fs, path = storage.arrow_filesystem(str(tmp_path / "x"))
    assert isinstance(fs, pafs.LocalFileSystem)
    assert path == str(tmp_path / "x")


@pytest.mark.timeout(60)
def test_check_access_read_needs_something_there(bucket):
    storage.write_bytes(f"s3://{bucket}/ds/dataset.json", b"{}")
    storage.check_access(f"s3://{bucket}/ds")
    storage.check_access(f"s3://{bucket}/ds/dataset.json")
    storage.check_access(f"s3://{bucket}")
    with pytest.raises(StorageError, match=f"not found: nothing exists at s3://{bucket}/nope"):
        storage.check_access(f"s3://{bucket}/nope")


@pytest.mark.timeout(60)
def test_check_access_ok_and_ensure_bucket_idempotent(bucket):
    storage.check_access(f"s3://{bucket}/runs/new", write=True)
    storage.ensure_bucket(f"s3://{bucket}/whatever")
    # The write probe is removed again.
    assert storage.list_files(f"s3://{bucket}") == []


# --------------------------------------------------------------------------- atomicity


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["s3", "local"])
def test_exception_inside_open_write_publishes_nothing(where, bucket, tmp_path):
    root = f"s3://{bucket}/atomic" if where == "s3" else str(tmp_path / "atomic")
    target = storage.join(root, "model.bin")
    storage.write_bytes(target, b"old")

    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_write(target) as f:
            f.write(b"new, but only half")
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        with storage.open_write(storage.join(root, "never.bin")) as f:
            f.write(b"x")
            raise RuntimeError("boom")

    assert storage.read_bytes(target) == b"old"
    assert storage.list_files(root) == [target]
    if where == "local":
        # No temporary file is left behind either.
        assert os.listdir(root) == ["model.bin"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["s3", "local"])
def test_reader_never_sees_a_partial_object(where, bucket, tmp_path):
    root = f"s3://{bucket}/partial" if where == "s3" else str(tmp_path / "partial")
    target = storage.join(root, "shard.bin")
    payload = b"z" * (256 * 1024)
    writing = threading.Event()
    finish = threading.Event()
    errors = []

    def writer():
        try:
            with storage.open_write(target) as f:
                f.write(payload[:1000])
                writing.set()
                finish.wait(10)
                f.write(payload[1000:])
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    assert writing.wait(10)
    # Mid-write: the object does not exist for readers and is not listed.
    assert not storage.exists(target)
    assert storage.list_files(root) == []
    with pytest.raises(StorageError, match="not found"):
        storage.read_bytes(target)
    finish.set()
    thread.join(10)
    assert not thread.is_alive(), "the writer did not finish within 10 s"
    assert not errors, errors
    assert storage.read_bytes(target) == payload


# --------------------------------------------------------------------------- failures


# A hang fails these through the timeout; how fast they give up is measured in bench/, not here.
@pytest.mark.timeout(60)
def test_unreachable_endpoint_fails_fast_naming_it(s3_server, monkeypatch):
    endpoint = f"http://127.0.0.1:{_free_port()}"
    _point_at(monkeypatch, endpoint)

    with pytest.raises(StorageError) as info:
        storage.check_access("s3://any-bucket/data", write=True)
    assert endpoint in str(info.value)
    assert "cannot be reached" in str(info.value)

    # Ordinary calls also give up in bounded time with the same message.
    with pytest.raises(StorageError, match="cannot be reached") as info:
        storage.read_bytes("s3://any-bucket/data/x.json")
    assert endpoint in str(info.value)


@pytest.mark.timeout(60)
def test_wrong_credentials_name_the_credentials_source(strict_s3_server, monkeypatch):
    _point_at(monkeypatch, strict_s3_server, key="unknown-access-key-id", secret="wrong")

    with pytest.raises(StorageError) as info:
        storage.check_access("s3://some-bucket/runs", write=True)
    message = str(info.value)
    assert "access denied" in message
    assert "environment (AWS_ACCESS_KEY_ID)" in message
    assert strict_s3_server in message

    with pytest.raises(StorageError, match="access denied"):
        storage.read_bytes("s3://some-bucket/runs/x.json")


@pytest.mark.timeout(60)
def test_missing_bucket_is_named_with_how_to_create_it(s3_server):
    with pytest.raises(StorageError) as info:
        storage.check_access("s3://no-such-bucket-4711/runs")
    message = str(info.value)
    assert "bucket 'no-such-bucket-4711' does not exist" in message
    assert "aws s3 mb s3://no-such-bucket-4711" in message

    with pytest.raises(StorageError, match="no-such-bucket-4711"):
        storage.write_bytes("s3://no-such-bucket-4711/x", b"1")
    with pytest.raises(StorageError, match="no-such-bucket-4711"):
        storage.list_files("s3://no-such-bucket-4711/x")


@pytest.mark.timeout(60)
def test_missing_object_says_not_found(bucket):
    uri = f"s3://{bucket}/nope.json"
    for call in (storage.read_bytes, storage.read_json, storage.size, storage.open_read):
        with pytest.raises(StorageError, match=f"not found: {uri}"):
            call(uri)


@pytest.mark.timeout(90)
def test_throttling_is_retried_and_counted(bucket, proxy_factory, monkeypatch):
    storage.write_bytes(f"s3://{bucket}/throttle/seed.bin", b"seed")
    proxy = proxy_factory(throttle=2)
    _point_at(monkeypatch, proxy.endpoint_url)
    before = storage.retry_count()

    storage.write_bytes(f"s3://{bucket}/throttle/a.bin", b"payload")
    assert storage.read_bytes(f"s3://{bucket}/throttle/a.bin") == b"payload"
    assert storage.read_bytes(f"s3://{bucket}/throttle/seed.bin") == b"seed"

    assert proxy.throttle == 0
    assert storage.retry_count() - before == 2
    assert proxy.requests == 2 + 3  # two throttled, then write + two reads


@pytest.mark.timeout(60)
def test_body_cut_off_mid_read_is_read_again(bucket, proxy_factory, monkeypatch):
    payload = os.urandom(64 * 1024)
    storage.write_bytes(f"s3://{bucket}/cut/shard.bin", payload)
    proxy = proxy_factory(throttle=0, truncate=1)
    _point_at(monkeypatch, proxy.endpoint_url)
    before = storage.retry_count()

    assert storage.read_bytes(f"s3://{bucket}/cut/shard.bin") == payload
    assert proxy.truncate == 0
    assert storage.retry_count() - before == 1

    # A streaming reader cannot re-read transparently: it fails loudly, never short.
    proxy.truncate = 1
    with pytest.raises(StorageError, match="stopped answering"):
        with storage.open_read(f"s3://{bucket}/cut/shard.bin") as f:
            f.read()


@pytest.mark.timeout(60)
def test_endless_throttling_gives_a_clear_error(bucket, proxy_factory, monkeypatch):
    proxy = proxy_factory(throttle=None)
    _point_at(monkeypatch, proxy.endpoint_url)
    monkeypatch.setenv("S3_MAX_ATTEMPTS", "3")
    before = storage.retry_count()

    with pytest.raises(StorageError) as info:
        storage.write_bytes(f"s3://{bucket}/throttle/b.bin", b"payload")
    message = str(info.value)
    assert "throttling" in message and "SlowDown" in message and "3 attempts" in message
    assert storage.retry_count() - before == 2
    assert proxy.requests == 3


# --------------------------------------------------------------------------- local paths


def test_local_round_trip_creates_folders(tmp_path):
    root = str(tmp_path / "out" / "run")
    storage.write_json(storage.join(root, "metrics.json"), {"val": {"loss": 0.5}})
    with storage.open_write(storage.join(root, "sub", "w.bin")) as f:
        f.write(b"w")
    assert storage.read_json(os.path.join(root, "metrics.json")) == {"val": {"loss": 0.5}}
    assert storage.list_files(root) == [
        os.path.join(root, "metrics.json"),
        os.path.join(root, "sub", "w.bin"),
    ]
    assert storage.list_files(root, suffix=".json") == [os.path.join(root, "metrics.json")]
    assert storage.size(os.path.join(root, "sub", "w.bin")) == 1
    storage.delete(root)
    assert not os.path.exists(root)
    storage.delete(root)  # missing: no error
    assert storage.list_files(root) == []


def test_local_missing_file_names_path_and_hint(tmp_path):
    missing = str(tmp_path / "nope" / "labels.csv")
    with pytest.raises(StorageError) as info:
        storage.read_text(missing)
    assert f"not found: {missing}" in str(info.value)
    assert "Check the path" in str(info.value)
    with pytest.raises(StorageError, match="not found"):
        storage.open_read(missing)
    with pytest.raises(StorageError, match="not found"):
        storage.check_access(missing)


def test_local_check_access_write(tmp_path):
    storage.check_access(str(tmp_path / "new" / "deeper"), write=True)  # can be created
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="is a file"):
        storage.check_access(str(blocker / "run"), write=True)
    with pytest.raises(StorageError, match="not a folder|is a file"):
        storage.write_bytes(str(blocker / "run" / "x.json"), b"{}")


def test_local_invalid_json_is_a_storage_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(StorageError, match="not valid JSON"):
        storage.read_json(str(path))


def test_local_upload_download_dir(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.txt").write_text("f")
    storage.upload_dir(str(src), str(tmp_path / "copy"))
    storage.download_dir(str(tmp_path / "copy"), str(tmp_path / "back"))
    assert (tmp_path / "back" / "a" / "f.txt").read_text() == "f"


# --------------------------------------------------------------------------- embedded server


@pytest.mark.timeout(60)
def test_use_embedded_s3_sets_and_restores_environment(s3_server):
    from job.storage import embedded

    before = {k: os.environ.get(k) for k in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_REGION")}
    with embedded.use_embedded_s3("second-embedded") as server:
        assert server.endpoint_url != s3_server.endpoint_url
        assert os.environ["S3_ENDPOINT_URL"] == server.endpoint_url
        assert os.environ["AWS_REGION"] == "us-east-1"
        assert storage.S3Settings.from_env().endpoint_url == server.endpoint_url
        storage.check_access("s3://second-embedded", write=True)
    assert {k: os.environ.get(k) for k in before} == before
    assert storage.S3Settings.from_env().endpoint_url == s3_server.endpoint_url


@pytest.mark.timeout(30)
def test_embedded_server_on_a_busy_port_is_a_clear_error():
    from job.errors import UserError
    from job.storage import embedded

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            embedded.start(port=port)
