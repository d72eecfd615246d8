"""Run `python -m job ...` as a user would: a subprocess with a hard timeout.

On timeout the whole process group (the driver and any local Ray it started) is killed and
the test fails with the command's last output, so a hang never stalls CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI; returns the CompletedProcess with stdout and stderr as text."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "job", *args], cwd=REPO, env=full_env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"`python -m job {' '.join(args)}` did not finish within {timeout} s.\n"
                             f"--- stdout (tail) ---\n{out[-4000:]}\n--- stderr (tail) ---\n{err[-4000:]}") from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise AssertionError(f"`python -m job {' '.join(args)}` exited {result.returncode}.\n"
                             f"--- stdout (tail) ---\n{out[-4000:]}\n--- stderr (tail) ---\n{err[-4000:]}")
    return result


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start the CLI in its own process group (to be killed with kill_group)."""
    return subprocess.Popen([sys.executable, "-m", "job", *args], cwd=REPO, env={**os.environ, **(env or {})},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> str:
    """SIGKILL a started CLI and everything it spawned; returns its output so far."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, _ = proc.communicate(timeout=60)
    return out or ""
