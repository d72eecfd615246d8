"""An embedded S3-compatible server for local runs, the demo and tests.

It is moto's ``ThreadedMotoServer``: a real HTTP S3 API on 127.0.0.1, in a thread of this
process, with data in memory (gone when the process exits). Child processes such as Ray
workers reach it over HTTP through the environment that ``use_embedded_s3`` sets.

Start it only when no ``S3_ENDPOINT_URL`` is configured; that decision belongs to the
caller (the CLI's ``demo`` / ``--local`` paths), never to this module. It is not for
production data.

It can also log every HTTP request it receives (``record=``, or the file named by
``EMBEDDED_S3_REQUEST_LOG``): the request-level IAM check (tests/iam_policy.py) judges what a
run asked of S3 against the job's IAM policy, which moto itself does not enforce. Off by
default; when off, the server is moto's, unchanged.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from urllib.parse import parse_qs

from job.errors import UserError
from job.storage.access import ensure_bucket
from job.storage.client import reset_clients

_START_TIMEOUT_SECONDS = 15
# moto accepts any credentials; these are placeholders, not secrets.
_DUMMY_KEY = "embedded"
_REGION = "us-east-1"
# Names a JSONL file that start() appends one line per request to, when no record= is given.
REQUEST_LOG_ENV = "EMBEDDED_S3_REQUEST_LOG"


class EmbeddedS3:
    """A running embedded S3 server; stop it with ``stop()`` or use it as a context manager."""

    def __init__(self, server, endpoint_url: str):
        self._server = server
        self.endpoint_url = endpoint_url
        self._saved_env: dict[str, str | None] | None = None

    def stop(self) -> None:
        """Stop the server and restore any environment ``use_embedded_s3`` changed."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._saved_env is not None:
            for name, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved_env = None
            _reset_storage_clients()

    def __enter__(self) -> EmbeddedS3:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedS3(endpoint_url={self.endpoint_url!r})"


def _server_class():
    from moto.server import ThreadedMotoServer

    class _Server(ThreadedMotoServer):
        """ThreadedMotoServer whose start() reports bind errors instead of waiting forever."""

        start_error: BaseException | None = None

        def _server_entry(self) -> None:
            try:
                super()._server_entry()
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                self.start_error = exc
                self._server_ready_event.set()

        def start(self) -> None:
            self._thread = threading.Thread(target=self._server_entry, name="embedded-s3", daemon=True)
            self._thread.start()
            if not self._server_ready_event.wait(_START_TIMEOUT_SECONDS):
                raise UserError(
                    f"The embedded S3 server did not start within {_START_TIMEOUT_SECONDS} s. "
                    f"Retry, or point S3_ENDPOINT_URL at a running S3-compatible server."
                )
            if self.start_error is not None:
                raise UserError(
                    f"The embedded S3 server could not listen on {self._ip_address}:"
                    f"{self._port}: {self.start_error}. Choose another port (0 picks a free "
                    f"one), or set S3_ENDPOINT_URL to use a running server."
                )

        def record_requests(self, sink: list | str | os.PathLike) -> None:
            """Log every later request to ``sink`` (see ``_RequestLog``); call it right after start()."""
            # werkzeug's request handler calls ``server.app`` per request, so wrapping it here
            # leaves moto's app and server set-up as they are.
            self._server.app = _RequestLog(self._server.app, sink)

    return _Server


class _RequestLog:
    """WSGI middleware: records each request, then lets moto answer it unchanged.

    One record per request: ``method``, ``path`` (URL-decoded, so ``/bucket/key`` for the
    path-style requests boto3 and pyarrow send to an IP endpoint), ``query`` (the raw query
    string), ``host``, ``copy_source`` (the ``x-amz-copy-source`` header, CopyObject and
    UploadPartCopy only), ``body`` (DeleteObjects only: its XML names the deleted keys) and
    ``status``. ``sink`` is a list (records appended as dicts) or a file path (one JSON object
    per line, appended).
    """

    def __init__(self, app, sink: list | str | os.PathLike):
        self._app = app
        self._lock = threading.Lock()
        self._write: Callable[[dict], None] = sink.append if isinstance(sink, list) else self._file_writer(sink)

    def _file_writer(self, path: str | os.PathLike) -> Callable[[dict], None]:
        def write(record: dict) -> None:
            with self._lock, open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

        return write

    def __call__(self, environ, start_response):
        query = environ.get("QUERY_STRING", "")
        record = {
            "method": environ["REQUEST_METHOD"],
            # WSGI hands the path over as latin-1 text of the raw bytes.
            "path": environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace"),
            "query": query,
            "host": environ.get("HTTP_HOST", ""),
        }
        if environ.get("HTTP_X_AMZ_COPY_SOURCE"):
            record["copy_source"] = environ["HTTP_X_AMZ_COPY_SOURCE"]
        if record["method"] == "POST" and "delete" in parse_qs(query, keep_blank_values=True):
            body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
            environ["wsgi.input"] = io.BytesIO(body)
            record["body"] = body.decode("utf-8", "replace")

        def recording_start_response(status, headers, exc_info=None):
            record["status"] = int(status.split(None, 1)[0])
            return start_response(status, headers, exc_info)

        try:
            return self._app(environ, recording_start_response)
        finally:
            self._write(record)


def start(port: int = 0, host: str = "127.0.0.1", record: list | str | os.PathLike | None = None) -> EmbeddedS3:
    """Start an embedded S3 server on ``host:port`` (port 0 picks a free port).

    The server binds the port itself, so port 0 has no find-then-bind race. ``record``: log
    every HTTP request the server receives to this list or JSONL file (see ``_RequestLog``);
    by default to the file named by ``EMBEDDED_S3_REQUEST_LOG``, if that is set.
    """
    _check_port_free(host, port)
    # werkzeug logs every request to stderr; that would bury the job's own log lines.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = _server_class()(ip_address=host, port=port, verbose=False)
    server.start()
    if record is None:
        record = os.environ.get(REQUEST_LOG_ENV) or None
    if record is not None:
        server.record_requests(record)
    bound_host, bound_port = server.get_host_and_port()
    return EmbeddedS3(server, f"http://{bound_host}:{bound_port}")


def _check_port_free(host: str, port: int) -> None:
    """Fail with a clear message if ``host:port`` cannot be bound.

    werkzeug answers a busy port by printing to stderr and calling sys.exit() in the server
    thread, so check here, in the caller's thread, first.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The same option werkzeug's server uses, so the answer matches.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"The embedded S3 server cannot listen on {host}:{port}: {exc.strerror or exc}. "
                f"Choose another port (0 picks a free one), or set S3_ENDPOINT_URL to use a "
                f"running server."
            ) from exc


def use_embedded_s3(bucket: str | None = None, record: list | str | os.PathLike | None = None) -> EmbeddedS3:
    """Start a server and point this process and its children (Ray workers) at it.

    Sets ``S3_ENDPOINT_URL``, dummy ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    ("embedded"; moto accepts any) and ``AWS_REGION=us-east-1``; removes
    ``AWS_SESSION_TOKEN`` and ``AWS_PROFILE``. ``stop()`` restores the previous environment. Creates
    ``bucket`` if given. ``record`` is passed to ``start``. Call it only when no ``S3_ENDPOINT_URL``
    is configured.
    """
    server = start(record=record)
    values = {
        "S3_ENDPOINT_URL": server.endpoint_url,
        # A profile could take precedence over the dummy keys in some AWS tools.
        "AWS_PROFILE": None,
        "AWS_ACCESS_KEY_ID": _DUMMY_KEY,
        "AWS_SECRET_ACCESS_KEY": _DUMMY_KEY,
        "AWS_REGION": _REGION,
        "AWS_DEFAULT_REGION": _REGION,
        "AWS_SESSION_TOKEN": None,
    }
    server._saved_env = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reset_storage_clients()
    if bucket:
        try:
            ensure_bucket(f"s3://{bucket}")
        except BaseException:
            server.stop()
            raise
    return server


def _reset_storage_clients() -> None:
    reset_clients()
