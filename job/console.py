"""What the console shows: one readable line per event, the frameworks' noise turned down.

Used by the command line (the driver process) and by every Ray worker, so both follow the
same rule: our loggers (`job.*`) at INFO, Ray's, TensorFlow's and the HTTP stack's at
WARNING unless `--verbose`. Everything that is cut here still lands in Ray's log files.
"""

from __future__ import annotations

import logging
import os
import sys

# Loggers of the libraries we use whose INFO lines are noise on our console.
NOISY_LOGGERS = ("absl", "tensorflow", "ray", "botocore", "boto3", "urllib3", "werkzeug", "moto", "filelock",
                 "matplotlib", "PIL", "h5py", "asyncio")
VERBOSE_ENV = "JOB_VERBOSE"

# Environment for this process and every process Ray starts from it (runtime_env inherits
# the driver's environment for local clusters; the RayJob sets the same keys on KubeRay).
QUIET_ENV = {
    # TensorFlow's C++ logs (cuInit, cudart stubs, oneDNN notes) before TensorFlow is imported.
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "RAY_DEDUP_LOGS": "1",
    # A local Ray runs without a dashboard, so Ray Train's placement-group cleaner cannot
    # reach the State API and warns about it once a second; drop those lines on the driver.
    "RAY_DEDUP_LOGS_SKIP_REGEX": "Failed to query Ray Train Controller actor state",
    "RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION": "0",
    # Ray's own deprecation and "N workers started" notices.
    "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning",
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
    os.environ.setdefault(VERBOSE_ENV, "1" if verbose else "0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)
    quiet_libraries(verbose)


def setup_worker_logging(rank: int) -> None:
    """Configure a training worker: rank 0 logs one line per event, other ranks only warnings."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("job").setLevel(logging.INFO if rank == 0 else logging.WARNING)
    quiet_libraries(is_verbose())


def quiet_libraries(verbose: bool) -> None:
    """Frameworks' loggers to WARNING (INFO with --verbose), including those Ray names by file path."""
    level = logging.INFO if verbose else logging.WARNING
    names = [n for n in logging.root.manager.loggerDict
             if n.split(".")[0] in ("ray", "absl", "tensorflow") or "/ray/" in n]
    for name in (*NOISY_LOGGERS, *names):
        logging.getLogger(name).setLevel(level)
