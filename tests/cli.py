"""The test harness: run `python -m job ...` as a user would, check its errors, and decide
what a missing prerequisite means.

- `run_cli` runs the command in its own process group with a hard timeout; on timeout the
  whole group (the driver and any local Ray it started) is killed and the test fails with
  the command's last output, so a hang never stalls CI. `start_cli` / `kill_group` are the
  same for a command the test stops itself.
- `assert_clean_error`: exit 1, one `error:` line that says what is wrong, no traceback.
- `require`: a missing prerequisite skips the test on a laptop and fails it under CI=true.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's native start-up lines would bury the output a failing test prints.
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the CLI; returns the CompletedProcess with stdout and stderr as text.

    `env` is laid over this process's environment; a variable set to None is removed.
    """
    full_env = _environment(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        cwd=REPO,
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"`python -m job {' '.join(args)}` did not finish within {timeout} s.\n"
            f"--- stdout (tail) ---\n{out[-4000:]}\n--- stderr (tail) ---\n{err[-4000:]}"
        ) from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise AssertionError(
            f"`python -m job {' '.join(args)}` exited {result.returncode}.\n"
            f"--- stdout (tail) ---\n{out[-4000:]}\n--- stderr (tail) ---\n{err[-4000:]}"
        )
    return result


def _environment(overrides: dict | None) -> dict:
    env = {**os.environ, **QUIET, **(overrides or {})}
    return {key: value for key, value in env.items() if value is not None}


def start_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start the CLI in its own process group (to be killed with kill_group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "job", *args],
        cwd=REPO,
        env=_environment(env),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> str:
    """SIGKILL a started CLI and everything it spawned; returns its output so far."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, _ = proc.communicate(timeout=60)
    return out or ""


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """The command failed as a user error: exit 1, an `error:` line with `words`, no traceback."""
    output = result.stdout[-2000:] + result.stderr[-2000:]
    assert result.returncode == 1, output
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    assert "error: " in result.stderr, output
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where a missing prerequisite is a failure."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(condition: object, reason: str) -> None:
    """Skip the test when `condition` is false, or fail it under CI, where nothing may be missing."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)
