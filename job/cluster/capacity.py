"""Will the training workers fit on the Ray cluster? Asked before training, not discovered as a hang.

A worker group that cannot be placed makes Ray Train wait forever, and (with
`data.ingest: ray_data`) workers that take every CPU leave Ray Data's read tasks none, which
hangs the first epoch. Both depend on the
nodes the cluster has, which under KubeRay come from the pods' resources (`--num-cpus` is
the container's CPU limit): a pod template that is too small shows up here, with the
numbers, instead of as a run that never starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from job.config import ScalingConfig
from job.errors import UserError

log = logging.getLogger(__name__)
# Ray Data's read and decode tasks need at least this many CPUs beside the workers.
DATA_CPUS_ON_A_CLUSTER = 1.0
# Ray puts this resource on the head node only.
HEAD_NODE_RESOURCE = "node:__internal_head__"


def worker_resources(s: ScalingConfig) -> dict[str, float]:
    """One training worker's Ray resources (Ray Train's resources_per_worker)."""
    resources = {"CPU": s.cpus_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.gpus_per_worker
    if s.worker_node_resource:
        resources[s.worker_node_resource] = 1.0
    return resources


def worker_bundle(s: ScalingConfig) -> dict[str, float]:
    """The resources a node must have free to host one worker (zero amounts need nothing)."""
    return {k: v for k, v in worker_resources(s).items() if v > 0}


def shortfall(nodes: list[dict[str, float]], s: ScalingConfig, data_cpus: float = DATA_CPUS_ON_A_CLUSTER) -> str | None:
    """Why `s.num_workers` worker bundles plus `data_cpus` for Ray Data do not fit on `nodes`
    (each a node's total resources), or None when they do. First fit, one bundle at a time,
    nodes with the most room first: what Ray's placement can achieve for PACK and for SPREAD.
    `data_cpus` is 0 on the direct ingest path, where the workers read their own input."""
    bundle = worker_bundle(s)
    free = [dict(n) for n in nodes]
    for placed in range(s.num_workers):
        candidates = [n for n in free if all(n.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())]
        if not candidates:
            return (
                f"only {placed} of {s.num_workers} training workers fit: each needs "
                f"{_describe(bundle)}, and the nodes offer {_describe_nodes(nodes)}"
            )
        node = max(candidates, key=lambda n: n.get("CPU", 0.0))
        for k, v in bundle.items():
            node[k] -= v
    left = sum(n.get("CPU", 0.0) for n in free)
    if left + 1e-9 < data_cpus:
        return (
            f"the {s.num_workers} workers ({_describe(bundle)} each) take all of the nodes' CPUs "
            f"({_describe_nodes(nodes)}), and Ray Data needs at least {data_cpus:g} more to read the data "
            "(data.ingest: ray_data)"
        )
    return None


def wait_until_workers_fit(
    s: ScalingConfig,
    alive_nodes: Callable[[], list[dict[str, float]]],
    request_resources: Callable[[list[dict[str, float]]], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    data_cpus: float = DATA_CPUS_ON_A_CLUSTER,
) -> None:
    """Return once the cluster can hold the workers (and `data_cpus` for Ray Data); ask an
    autoscaler for them meanwhile; raise UserError after `s.resources_timeout_seconds`."""
    deadline = clock() + s.resources_timeout_seconds
    bundles = [worker_bundle(s)] * s.num_workers + ([{"CPU": data_cpus}] if data_cpus else [])
    asked = False
    while True:
        problem = shortfall(alive_nodes(), s, data_cpus)
        if problem is None:
            return
        if clock() >= deadline:
            raise UserError(
                f"The Ray cluster cannot run this training: {problem}. Waited "
                f"{s.resources_timeout_seconds:g} s for more nodes (scaling.resources_timeout_seconds). "
                "Give the worker nodes more resources (on KubeRay, Ray's CPUs and GPUs are the worker "
                "container's limits), add worker nodes, or lower scaling.num_workers / scaling.cpus_per_worker."
            )
        if not asked:
            log.warning("waiting up to %g s for cluster resources: %s", s.resources_timeout_seconds, problem)
            request_resources(bundles)
            asked = True
        sleep(min(5.0, max(0.0, deadline - clock())))


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(resources.items())) or "nothing"


def _describe_nodes(nodes: list[dict[str, float]]) -> str:
    if not nodes:
        return "no alive nodes"
    return "; ".join(_describe({k: v for k, v in n.items() if k in ("CPU", "GPU")}) for n in nodes)
