"""Local scratch space: every temporary folder of a process lives under one folder of its own.

Checkpoints are written locally before they are published, restores and exports are staged
locally, TensorBoard writes event files locally: each used to be its own `/tmp/*-XXXX`
folder, and any exit but the happy path (a failed publish, an exception, a kill) left them
behind, 17 MB per checkpoint. Now:

    $TMPDIR/multilabel-job/<host>-<pid>-XXXX/ckpt-r0-XXXX/...

- `make_dir(prefix)` creates a folder under this process's scratch folder;
- `cleanup()` removes the whole scratch folder; it runs at interpreter exit (atexit), and
  the CLI and the Ray worker entry call it on their way out, exceptions included;
- a SIGKILLed process cannot clean up, so the first `make_dir` of every process removes the
  scratch folders of processes of this host that no longer exist.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import tempfile
import threading

_PARENT_NAME = "multilabel-job"
_lock = threading.Lock()
_root: str | None = None
_root_pid = 0  # a forked child inherits _root but must not remove its parent's folder


def _parent() -> str:
    return os.path.join(tempfile.gettempdir(), _PARENT_NAME)


def _owner_gone(name: str, host: str) -> bool:
    """True for a scratch folder name `HOST-PID-XXXX` of this host whose process has exited."""
    prefix, _, rest = name.rpartition("-")  # strip the random part
    owner_host, _, pid_text = prefix.rpartition("-")
    if owner_host != host or not pid_text.isdigit() or not rest:
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def sweep_stale() -> int:
    """Remove scratch folders of exited processes of this host; returns how many."""
    parent, host = _parent(), socket.gethostname()
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(parent):
            if _owner_gone(name, host):
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                removed += 1
    return removed


def root() -> str:
    """This process's scratch folder, created (and stale ones swept) on first use."""
    global _root, _root_pid
    with _lock:
        if _root is None or _root_pid != os.getpid() or not os.path.isdir(_root):
            parent = _parent()
            os.makedirs(parent, exist_ok=True)
            sweep_stale()
            _root = tempfile.mkdtemp(prefix=f"{socket.gethostname()}-{os.getpid()}-", dir=parent)
            _root_pid = os.getpid()
        return _root


def make_dir(prefix: str) -> str:
    """A new empty folder under this process's scratch folder."""
    return tempfile.mkdtemp(prefix=prefix, dir=root())


def cleanup() -> None:
    """Remove this process's scratch folder and everything in it (safe to call repeatedly)."""
    global _root
    with _lock:
        if _root is not None and _root_pid == os.getpid():
            shutil.rmtree(_root, ignore_errors=True)
        _root = None


atexit.register(cleanup)
