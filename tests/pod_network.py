"""Test helper: pods on one machine, each in its own Linux network namespace on a bridge.

A Kubernetes pod has its own IP and its own ports: two worker pods both listen on 9401, and
Ray's metrics agent listens on 8080 in every pod. Emulating that with processes on one
loopback would need every port remapped, which is exactly what must not differ from a
cluster. So each emulated pod gets a network namespace with one veth on a private bridge
(its "pod IP"), and the test reaches it the way Prometheus or a Service would: by IP.

Needs root (CAP_NET_ADMIN) and `ip`; `require_pod_network` skips without them, and fails
under CI=true, like every other missing prerequisite (`tests.cli.require`).

Processes are started with `ip netns exec`; `stop` kills every process left in each
namespace (by the kernel's own list, `ip netns pids`), so nothing outlives the test and no
other test's processes are touched.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.cli import require, require_tool


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def require_pod_network() -> None:
    """Skip (fail under CI) unless this machine can make network namespaces and veths."""
    require_tool("ip")
    probe = f"mlp{uuid.uuid4().hex[:8]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode == 0:
        _ip("netns", "del", probe, check=False)
    require(made.returncode == 0, f"network namespaces are not available here (`ip netns add`: {made.stderr.strip()})")


class PodNetwork:
    """A bridge with a /24 and one network namespace per pod, named after the pod."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"mlbr{tag}"
        self._prefix = f"ml{tag}"
        # A /24 inside 10.200.0.0/13 picked from the tag, so concurrent tests do not collide.
        index = int(tag, 16) % 2048
        self.subnet = ipaddress.ip_network(f"10.{200 + index // 256}.{index % 256}.0/24")
        hosts = self.subnet.hosts()
        self.gateway = str(next(hosts))
        self._free_hosts = hosts
        self.pods: dict[str, tuple[str, str]] = {}  # pod name -> (namespace, IP)
        self._numbers = itertools.count()
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_pod(self, name: str) -> str:
        """Make the pod's namespace and return its IP (reachable from this namespace)."""
        assert name not in self.pods, f"pod {name} exists already"
        netns = f"{self._prefix}-{next(self._numbers)}"
        ip = str(next(self._free_hosts))
        veth = f"{netns}h"
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/{self.subnet.prefixlen}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        # A default route: Ray finds its node IP by the route to a public address.
        _ip("-n", netns, "route", "add", "default", "via", self.gateway)
        self.pods[name] = (netns, ip)
        return ip

    def ip(self, pod: str) -> str:
        return self.pods[pod][1]

    def popen(
        self, pod: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path, binds: dict[str, Path] | None = None
    ) -> subprocess.Popen:
        """Start `argv` inside the pod's namespace with exactly `env`; output goes to `log`.

        `binds` (path in the pod -> folder here) are bind-mounted in a mount namespace of the
        process's own, so the pod sees its folder at that path and nobody else does.
        """
        netns = self.pods[pod][0]
        wrapper: list[str] = []
        if binds:
            mounts = " && ".join(f"mount --bind {shlex.quote(str(s))} {shlex.quote(d)}" for d, s in binds.items())
            wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"', "sh"]
        with open(log, "ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", netns, *wrapper, *argv],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def run(
        self,
        pod: str,
        argv: list[str],
        env: dict[str, str],
        log: Path,
        cwd: Path,
        timeout: float,
        binds: dict[str, Path] | None = None,
    ) -> int:
        """Run `argv` in the pod to completion (killed after `timeout`); return its exit code."""
        proc = self.popen(pod, argv, env, log, cwd, binds)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            return -signal.SIGKILL

    def kill_pod(self, pod: str) -> None:
        """SIGKILL every process in the pod's namespace, as a container runtime does."""
        netns = self.pods[pod][0]
        for _ in range(50):
            pids = [int(p) for p in _ip("netns", "pids", netns, check=False).stdout.split()]
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill every pod's processes and remove the namespaces and the bridge."""
        for pod, (netns, _) in self.pods.items():
            self.kill_pod(pod)
            _ip("netns", "del", netns, check=False)
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> PodNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
