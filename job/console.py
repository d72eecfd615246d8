"""What the console shows: one readable line per event, the frameworks' noise turned down.

Used by the command line (the driver process) and by every Ray worker, so both follow the
same rule: our loggers (`job.*`) at INFO, Ray's, TensorFlow's and the HTTP stack's at
WARNING unless `--verbose`. Everything that is cut here still lands in Ray's log files.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

# Loggers of the libraries we use whose INFO lines are noise on our console.
NOISY_LOGGERS = (
    "absl",
    "tensorflow",
    "ray",
    "botocore",
    "boto3",
    "urllib3",
    "werkzeug",
    "moto",
    "filelock",
    "matplotlib",
    "PIL",
    "h5py",
    "asyncio",
)
VERBOSE_ENV = "JOB_VERBOSE"

# Lines that Ray's workers print and the driver need not show (they stay in Ray's log files
# under /tmp/ray/session_latest/logs). Each is either native start-up noise or a per-epoch
# notice that buries the one line per epoch we print ourselves.
NOISE_PATTERNS = (
    # TensorFlow's native start-up lines: absl logs before InitializeLog, so no env var mutes them.
    r"absl::InitializeLog\(\) is called",
    r"port\.cc:\d+\] oneDNN custom operations",
    r"cudart_stub\.cc:\d+\]",
    r"cpu_feature_guard\.cc|To enable the following instructions",
    r"failed call to cuInit|cuda_executor\.cc|cuda_diagnostics\.cc",
    # Ray Data: a line per dataset execution (every epoch), and the notice that bars are off.
    r"execution finished in [\d.]+ seconds",
    r"Progress bars disabled",
    # Ray Train controller: worker-group start-up chatter (our own log says what matters).
    r"Requesting resources: |Attempting to start training worker group|Started training worker group",
    r"world_rank=\d+, local_rank=\d+, node_rank=",
    r"'PreemptionWatcher'.*constructor arguments in the object store",
    # A local Ray has no dashboard, so the placement-group cleaner cannot reach the State API.
    r"Failed to query Ray Train Controller actor state",
)
NOISE = re.compile("|".join(NOISE_PATTERNS))

# Environment for this process and every process Ray starts from it (runtime_env inherits
# the driver's environment for local clusters; the RayJob sets the same keys on KubeRay).
QUIET_ENV = {
    # TensorFlow's native INFO/WARNING/ERROR lines (cuInit on CPU machines, oneDNN notes);
    # real failures still raise Python exceptions, and --verbose shows the lines.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    # Deprecation notices from Ray's own internals, in every process Ray starts.
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    "RAY_DEDUP_LOGS": "1",
    "RAY_DEDUP_LOGS_SKIP_REGEX": NOISE.pattern,
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
}
# Python loggers that say something once per run that is not news to our users.
QUIET_LOGGERS = {
    "ray._private.authentication": logging.ERROR,  # "Token authentication is enabled" (we keep it on)
}


def is_verbose() -> bool:
    """True when the user asked for the frameworks' own logs (--verbose)."""
    return os.environ.get(VERBOSE_ENV) == "1"


def setup_logging(verbose: bool) -> None:
    """Configure the driver process: one line per event on stdout, noise down unless verbose.

    Must run before TensorFlow or Ray is imported: both read their settings at import.
    """
    if not verbose:
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        _mute_native_import("tensorflow")
    os.environ.setdefault(VERBOSE_ENV, "1" if verbose else "0")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout, force=True
    )
    quiet_libraries(verbose)


def setup_worker_logging(rank: int) -> None:
    """Configure a training worker: rank 0 logs one line per event, other ranks only warnings."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("job").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    quiet_libraries(is_verbose())


def quiet_libraries(verbose: bool) -> None:
    """Frameworks' loggers to WARNING (INFO with --verbose), including those Ray names by file path."""
    level = logging.INFO if verbose else logging.WARNING
    names = [
        n for n in logging.root.manager.loggerDict if n.split(".")[0] in ("ray", "absl", "tensorflow") or "/ray/" in n
    ]
    for name in (*NOISY_LOGGERS, *names):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        for name, quiet_level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(quiet_level)


class _MutedImport(importlib.abc.MetaPathFinder):
    """Captures what a package's native code writes to stderr while it is first imported,
    and passes on every line except the known start-up noise (NOISE)."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname, path, target=None):
        if fullname != self.package:
            return None
        sys.meta_path.remove(self)  # only the first import, and let the real finders run
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            with _filtered_stderr():
                load(module)

        spec.loader.exec_module = exec_module
        return spec


class _filtered_stderr:
    """Redirect file descriptor 2 to a temp file; on exit, replay the lines that are not noise."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._capture = tempfile.TemporaryFile()
        os.dup2(self._capture.fileno(), 2)

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._capture.seek(0)
        for line in self._capture.read().decode(errors="replace").splitlines():
            if not NOISE.search(line):
                print(line, file=sys.stderr)
        self._capture.close()


def _mute_native_import(package: str) -> None:
    if package not in sys.modules and not any(isinstance(f, _MutedImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _MutedImport(package))
