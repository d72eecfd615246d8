"""Test helper: a real Prometheus on loopback, scraping given targets, queried over its HTTP API.

Reusable by any test (telemetry scrape, a real 2-worker Ray run)::

    from tests.prometheus_server import PrometheusServer
    with PrometheusServer.start(tmp_path, {"workers": ["127.0.0.1:9401"]}) as prom:
        prom.wait_for("multilabel_train_steps_total", lambda r: len(r) == 2, timeout_seconds=30)

Import it as ``tests.prometheus_server`` (pyproject puts the repository root on the path).

Tools come from Debian's ``prometheus`` package. When they are missing the tests skip, unless
``CI=true``: there ``.ci/run`` installs them, so a missing tool is a broken CI image and fails
(``tests.cli.require_tool``, the one skip-or-fail policy).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli import require_tool


def free_port() -> int:
    """Return a TCP port that is free on all interfaces right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout_seconds: float = 5.0) -> bytes:
    """GET ``url`` and return the body (raises on HTTP errors and timeouts)."""
    with urllib.request.urlopen(url, timeout=timeout_seconds) as resp:  # noqa: S310 (loopback)
        return resp.read()


def scrape_config(
    jobs: Mapping[str, Sequence[str]], interval: str = "1s", rule_files: Sequence[str] = ()
) -> dict[str, Any]:
    """Build a Prometheus config with one static job per entry of ``jobs`` (name -> targets)."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": list(targets)}]} for name, targets in jobs.items()
        ],
    }


class PrometheusServer:
    """A ``prometheus`` subprocess with its own config and TSDB under a temp directory."""

    def __init__(self, process: subprocess.Popen, port: int, workdir: Path) -> None:
        self.process = process
        self.port = port
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{port}"

    @classmethod
    def start(
        cls,
        workdir: Path,
        jobs: Mapping[str, Sequence[str]],
        *,
        interval: str = "1s",
        rule_files: Sequence[str | Path] = (),
        ready_timeout_seconds: float = 30.0,
    ) -> PrometheusServer:
        """Write a config scraping ``jobs`` and start Prometheus on a free loopback port.

        Blocks until ``/-/ready`` answers (or fails the test after ``ready_timeout_seconds``,
        showing Prometheus' log). Skips the test when ``prometheus`` is not installed.
        """
        binary = require_tool("prometheus")
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(jobs, interval, [str(p) for p in rule_files])))
        port = free_port()
        log_path = workdir / "prometheus.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                    # No console templates: the Debian defaults point at files we do not need.
                    f"--web.console.templates={workdir}",
                    f"--web.console.libraries={workdir}",
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        server = cls(process, port, workdir)
        try:
            server._wait_ready(ready_timeout_seconds)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout_seconds: float) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log()}", pytrace=False)
            try:
                http_get(f"{self.url}/-/ready", timeout_seconds=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.2)
        pytest.fail(f"prometheus not ready after {timeout_seconds}s:\n{self.log()}", pytrace=False)

    def log(self) -> str:
        """Prometheus' own log so far (for failure messages)."""
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>`` and return ``data``; raise AssertionError on an API error."""
        query = urllib.parse.urlencode(params)
        body = json.loads(http_get(f"{self.url}/api/v1/{path}?{query}", timeout_seconds=5))
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus API {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate an instant query; return the result vector (``[{metric, value}]``)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def wait_for(
        self,
        expr: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout_seconds: float = 30.0,
        poll_seconds: float = 0.5,
    ) -> list[dict[str, Any]]:
        """Poll ``expr`` until ``predicate(result)`` holds; fail with the last result otherwise."""
        deadline = time.monotonic() + timeout_seconds
        result: list[dict[str, Any]] = []
        while True:
            result = self.query(expr)
            if predicate(result):
                return result
            if time.monotonic() >= deadline:
                targets = self.api("targets")
                health = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets["activeTargets"]]
                pytest.fail(
                    f"after {timeout_seconds}s, `{expr}` returned {result}\ntargets: {health}\n"
                    f"prometheus log:\n{self.log()}",
                    pytrace=False,
                )
            time.sleep(poll_seconds)

    def stop(self) -> None:
        """Terminate Prometheus (kill it if it does not exit within 10 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def values_by_label(result: list[dict[str, Any]], label: str) -> dict[str, float]:
    """Map ``label`` value -> sample value for an instant-query result."""
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in result}
