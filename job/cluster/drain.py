"""Drain this machine's own Ray node as a preemption: the worker pod's `preStop` hook.

On Kubernetes a spot interruption becomes a node drain: the pod is evicted, the kubelet runs
its `preStop` hook, then sends SIGTERM, and SIGKILL once `terminationGracePeriodSeconds`
have passed since the eviction. Without the hook Ray only learns of it when the raylet dies,
and the run loses everything since its last checkpoint. With it, Ray Train gets a
preemption notice with a deadline: the workers save a just-in-time checkpoint
(training.callbacks.PreemptionGuard) and Ray Train restarts the group on the other nodes
at the deadline, counted against `scaling.max_preemption_failures`, not `max_failures`.

The hook blocks until no training worker holds this node's CPUs or GPUs (Ray Train has
moved them), at most `SLACK_SECONDS` past the deadline, so SIGTERM cannot cut the checkpoint
short. The slack matters: Ray Train restarts the group at the deadline, and a node that dies
just before that restart fails the run instead (its workers are seen unreachable before they
are seen preempted; found in tests/integration/test_preemption.py).
"""

from __future__ import annotations

import logging
import os
import socket
import time

import ray
from ray.core.generated import autoscaler_pb2

from job.cluster.capacity import HEAD_NODE_RESOURCE
from job.errors import UserError

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 5.0
SLACK_SECONDS = 10.0
HELD_RESOURCES = ("CPU", "GPU")


def drain_own_node(deadline_seconds: float, reason: str, address: str | None = None) -> str:
    """Mark this machine's Ray node as preempted, with a deadline; return its node id.

    Raises:
        UserError: no Ray cluster to reach, no live Ray node with this machine's IP, or Ray
            refused the drain.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("No Ray cluster to drain: set RAY_ADDRESS (KubeRay sets it in every Ray container).")
    check_reachable(address)  # first: it turns a bad or unresolvable address into one error line
    ip = own_address_towards(address)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    mine = [n for n in ray.nodes() if n.get("Alive") and n.get("NodeManagerAddress") == ip]
    if not mine:
        raise UserError(f"No live Ray node has this machine's address {ip}; nothing to drain.")
    if HEAD_NODE_RESOURCE in mine[0].get("Resources", {}):
        # The head holds the driver and Ray Train's controller: draining it ends the run.
        raise UserError(f"{ip} is the Ray head node; the preStop drain belongs on worker pods only.")
    node_id = mine[0]["NodeID"]
    deadline_ms = int((time.time() + deadline_seconds) * 1000)
    gcs = ray._raylet.GcsClient(address=ray.get_runtime_context().gcs_address)
    accepted, why = gcs.drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), reason, deadline_ms
    )
    if not accepted:
        raise UserError(f"Ray refused to drain node {node_id} ({ip}): {why}")
    log.warning("drained Ray node %s (%s) as a preemption; deadline in %.0f s", node_id[:12], ip, deadline_seconds)
    return node_id


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (address, 6379)


def check_reachable(address: str, timeout_seconds: float = CONNECT_TIMEOUT_SECONDS) -> None:
    """Fail fast when the Ray head does not answer: ray.init would retry for minutes."""
    try:
        socket.create_connection(_host_port(address), timeout=timeout_seconds).close()
    except OSError as exc:
        raise UserError(
            f"Cannot reach the Ray head at {address} ({exc}). Check RAY_ADDRESS; in a pod, KubeRay sets it "
            "to the head Service."
        ) from None


def own_address_towards(address: str) -> str:
    """This machine's IP on the route to the Ray head (the pod IP, in a pod).

    Asked from the kernel, not from Ray: a driver started in a worker pod may attach to
    another node's raylet, and `ray.util.get_node_ip_address()` then names that node.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(_host_port(address))  # UDP: no packet is sent
        return probe.getsockname()[0]


def wait_until_workers_leave(node_id: str, timeout_seconds: float) -> bool:
    """Block until nothing holds this node's CPUs or GPUs, or `timeout_seconds` pass.

    Returns True when the node was freed in time.
    """
    from ray._private import state

    end = time.monotonic() + timeout_seconds
    while time.monotonic() < end:
        total = state.total_resources_per_node().get(node_id, {})
        free = state.available_resources_per_node().get(node_id, {})
        if all(free.get(r, 0.0) >= total.get(r, 0.0) for r in HELD_RESOURCES):
            return True
        time.sleep(POLL_SECONDS)
    return False
