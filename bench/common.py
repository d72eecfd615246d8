"""Shared helpers: timing windows, medians, machine facts, subprocess sections with timeouts.

Every measurement runs in its own subprocess (`python -m bench.<module> ...`) so a hang is
killed by a timeout, each has a clean peak RSS, and Ray/TensorFlow state never leaks
between sections. A section writes its figures as JSON to the path given by `--result`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

# Quiet frameworks before anything imports them (sections import this module first).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_ACCEPT_CALLS_FROM_CHILD_PROCESSES", "1")

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)


# ---------------------------------------------------------------------------- figures


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def time_batches(iterator: Iterator, warmup_batches: int, batches: int, batch_size: int) -> float:
    """Images/s of `batches` batches taken from `iterator` after `warmup_batches`.

    The warm-up drains whatever the pipeline buffered while it sat idle, so the timed
    window starts in steady state, not with full buffers.
    """
    for _ in range(warmup_batches):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def interleaved(measures: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each measure `repeats` times, round-robin, so load drift hits all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(repeats):
        for name, measure in measures.items():
            out[name].append(measure())
    return out


def pair_ratio(numerators: list[float], denominators: list[float], digits: int = 3) -> dict[str, Any]:
    """A ratio measured pair by pair: window i of A over window i of B, taken back to back.

    Load from other processes on a shared machine moves both windows of a pair alike, so the
    per-pair ratios hold still where the absolute figures do not. Reported: the median of the
    per-pair ratios, their spread (interquartile range; min and max too) and every pair.
    """
    pairs = [a / b for a, b in zip(numerators, denominators) if a and b]
    if not pairs:
        return {"median": None, "spread": None, "min": None, "max": None, "pairs": []}
    quartiles = statistics.quantiles(pairs, n=4, method="inclusive") if len(pairs) > 1 else [pairs[0]] * 3
    return {
        "median": round(median(pairs), digits),
        "spread": round(quartiles[2] - quartiles[0], digits),
        "min": round(min(pairs), digits),
        "max": round(max(pairs), digits),
        "pairs": [round(r, digits) for r in pairs],
    }


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "gpu": _gpu_name()}


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return ", ".join(names) if out.returncode == 0 and names else None


def write_result(path: str, obj: dict) -> None:
    obj = dict(obj, peak_rss_bytes=peak_rss_bytes(), load_average_end=load_average())
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)


def quiet_logs() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("ray", "tensorflow", "absl", "botocore", "urllib3", "werkzeug", "job"):
        logging.getLogger(name).setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- S3


class SeparateS3:
    """The embedded S3 server in a child process; this process points at it (stop() ends it).

    As a remote S3 would be: its request handling does not share this process's interpreter
    lock or its tf.data threads. Child processes started afterwards (Ray) inherit the endpoint.
    """

    def __init__(self, bucket: str = "bench"):
        import boto3

        from job.storage import client

        with socket.socket() as probe:  # a free port for the child to bind
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        code = f"from job.storage import embedded; import time; embedded.start(port={port}); time.sleep(1e9)"
        self.process = subprocess.Popen([sys.executable, "-c", code])
        os.environ.update(
            S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="embedded",
            AWS_SECRET_ACCESS_KEY="embedded",
            AWS_REGION="us-east-1",
        )
        s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"], region_name="us-east-1")
        for _ in range(100):
            try:
                s3.create_bucket(Bucket=bucket)
                break
            except Exception:
                time.sleep(0.2)
        client.reset_clients()  # clients made before now point at no server

    def stop(self):
        self.process.kill()
        self.process.wait()


# ---------------------------------------------------------------------------- sections


class SectionFailed(RuntimeError):
    pass


def run_section(module: str, args: list[str], result_path: str, timeout_seconds: float, log_path: str) -> dict:
    """Run `python -m bench.<module> ARGS --result PATH` with a hard timeout; return its JSON.

    The child gets its own process group, so a timeout kills it and everything it started
    (Ray's raylet and workers included); a hung section never hangs the suite.
    """
    if os.path.exists(result_path):
        os.remove(result_path)
    cmd = [sys.executable, "-m", f"bench.{module}", *args, "--result", result_path]
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise SectionFailed(
                f"bench.{module} did not finish within {timeout_seconds:.0f} s; log: {log_path}"
            ) from None
        finally:
            kill_group(proc)  # stray children (Ray) of a finished section
    if rc != 0 or not os.path.exists(result_path):
        raise SectionFailed(f"bench.{module} exited {rc}; log: {log_path}\n{_tail(log_path)}")
    with open(result_path) as fh:
        result = json.load(fh)
    result["section_wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def pipeline_args(description: str | None = None):
    """Arguments shared by the pipeline sections (local and S3), parsed from sys.argv."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workdir", required=True)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup-batches", type=int, default=6)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--result", required=True)
    return p.parse_args()
