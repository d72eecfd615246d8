"""Ray set-up shared by the training driver, its workers and batch inference: joining the
cluster a job was submitted to, and Ray Data's console. Light on purpose: Ray Data tasks
import the modules that import it, so no Ray Train and no TensorFlow here."""

from __future__ import annotations

import logging
import os

import ray
from ray.data import DataContext

from job.console import is_verbose

log = logging.getLogger(__name__)


def join_cluster_in_env(logging_level: int) -> bool:
    """Join the Ray cluster named by RAY_ADDRESS (as `ray job submit` and KubeRay set it);
    False, and nothing done, when it is not set."""
    if not os.environ.get("RAY_ADDRESS"):
        return False
    log.info("connecting to the Ray cluster at %s", os.environ["RAY_ADDRESS"])
    ray.init(logging_level=logging_level, log_to_driver=True)
    return True


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-execution notices off, unless --verbose."""
    ctx = DataContext.get_current()
    if not is_verbose():
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
