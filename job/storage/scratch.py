"""Local scratch space: every temporary folder of a process lives under one folder of its own.

Checkpoints are written locally before they are published, restores and exports are staged
locally, TensorBoard writes event files locally: each used to be its own `/tmp/*-XXXX`
folder, and any exit but the happy path (a failed publish, an exception, a kill) left them
behind, 17 MB per checkpoint. Now:

    $TMPDIR/multilabel-job/<pid>-XXXX/ckpt-r0-XXXX/...

- `make_dir(prefix)` creates a folder under this process's scratch folder;
- `cleanup()` removes the whole scratch folder; it runs at interpreter exit (atexit), and
  the CLI and the Ray worker entry call it on their way out, exceptions included;
- a SIGKILLed process cannot clean up, so the first `make_dir` of every process removes the
  scratch folders whose owner is gone. Each owner holds an exclusive `flock` on its folder's
  `.alive` file for as long as it lives; the kernel drops it when the process dies, however
  it dies, so liveness needs no host names or pids (which repeat across containers).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time

_PARENT_NAME = "multilabel-job"
_lock = threading.Lock()
_root: str | None = None
_root_pid = 0  # a forked child inherits _root but must not remove its parent's folder


def _parent() -> str:
    return os.path.join(tempfile.gettempdir(), _PARENT_NAME)


_ALIVE = ".alive"
# A folder whose .alive is younger than this may be one being set up (created, not yet locked).
_SETUP_GRACE_SECONDS = 2.0
_alive_fh = None  # this process's locked .alive file, kept open for its lifetime


def sweep_stale() -> int:
    """Remove scratch folders whose owner process is gone; returns how many."""
    parent = _parent()
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(parent):
            folder = os.path.join(parent, name)
            if folder == _root:
                continue
            try:
                with open(os.path.join(folder, _ALIVE), "rb") as fh:
                    if time.time() - os.fstat(fh.fileno()).st_mtime < _SETUP_GRACE_SECONDS:
                        continue
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while the owner lives
            except OSError:
                continue  # alive, or not a scratch folder of this release
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    return removed


def root() -> str:
    """This process's scratch folder, created (and stale ones swept) on first use."""
    global _root, _root_pid, _alive_fh
    with _lock:
        if _root is None or _root_pid != os.getpid() or not os.path.isdir(_root):
            parent = _parent()
            os.makedirs(parent, exist_ok=True)
            sweep_stale()
            _root = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent)
            _alive_fh = open(os.path.join(_root, _ALIVE), "wb")  # noqa: SIM115 - held for the process's life
            fcntl.flock(_alive_fh, fcntl.LOCK_EX)
            _root_pid = os.getpid()
        return _root


def make_dir(prefix: str) -> str:
    """A new empty folder under this process's scratch folder."""
    return tempfile.mkdtemp(prefix=prefix, dir=root())


def cleanup() -> None:
    """Remove this process's scratch folder and everything in it (safe to call repeatedly)."""
    global _root, _alive_fh
    with _lock:
        if _root is not None and _root_pid == os.getpid():
            shutil.rmtree(_root, ignore_errors=True)
            if _alive_fh is not None:
                _alive_fh.close()
        _root, _alive_fh = None, None


atexit.register(cleanup)
