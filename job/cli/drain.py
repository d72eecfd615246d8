"""`drain`: a Ray worker pod's preStop hook. Marks this pod's Ray node as preempted with a
deadline, so the training workers save a just-in-time checkpoint and Ray Train restarts them
elsewhere; returns once the workers have left the node, or 10 s after the deadline.

Example (k8s/base/rayjob.yaml, worker container):
  python -m job drain --deadline-seconds 75
"""

from __future__ import annotations

import argparse

from job.errors import UserError

HELP = "Drain this pod's Ray node as a preemption (a worker pod's preStop hook)."


def add_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument(
        "--deadline-seconds",
        type=float,
        required=True,
        help="When Ray Train moves the workers off this node, from now. The hook returns at the latest 10 s "
        "after it: keep it 10 s under the pod's terminationGracePeriodSeconds.",
    )
    d.add_argument("--reason", default="the pod is being terminated", help="Shown in Ray's node events.")
    d.add_argument("--address", default=None, help="Ray GCS address (default: RAY_ADDRESS).")


def run(args: argparse.Namespace) -> int:
    if args.deadline_seconds <= 0:
        raise UserError("--deadline-seconds must be positive.")
    from job.cluster import drain  # imports Ray: only when the command runs

    node_id = drain.drain_own_node(args.deadline_seconds, args.reason, args.address)
    freed = drain.wait_until_workers_leave(node_id, args.deadline_seconds + drain.SLACK_SECONDS)
    print(f"node {node_id[:12]}: {'workers left' if freed else 'deadline passed'}", flush=True)
    return 0
