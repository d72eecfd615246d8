"""Test helper: do with a rendered RayJob what KubeRay 1.6 and the kubelet would do, on one
machine, with real Ray processes in per-pod network namespaces (`tests.pod_network`).

What is emulated, and from where (KubeRay ray-operator/controllers/ray/common/pod.go and
rayjob_controller.go, v1.6; the kubelet's documented behaviour):

- **Pods.** One network namespace, one IP and one filesystem root per pod: the head, one
  per worker replica (`replicas` of each worker group), and the submitter. The container's
  paths are mapped to folders under the test's temp dir: `emptyDir` mounts, ConfigMap
  volumes (the rendered ConfigMap's files, at the mount path), the image's own folders
  (/opt/venv -> this virtualenv, /opt/multilabel/configs -> configs/). Commands and env
  values are rewritten through that map, nothing else in them.
- **Environment.** The image's `ENV` (final stage of the Dockerfile), what the kubelet puts
  in every container (`KUBERNETES_SERVICE_HOST`/`_PORT`, `KUBELET_ENV`), then what KubeRay
  injects, then the container's `envFrom` (ConfigMaps from the rendered objects, Secrets the
  test supplies as a user would create them; a missing non-optional one fails the pod), then
  `env` (`value`, `secretKeyRef`, `configMapKeyRef`). Cluster DNS names of Services are
  replaced by the IP of whatever the test runs behind them.
- **Ray start.** `ray start --head` / `ray start --address=HEAD:6379`, with the group's
  `rayStartParams` completed as KubeRay completes them (`ray_start_params`).
- **Start order and health.** The head's init containers run to success first (retried, as
  the kubelet restarts them), then the head; workers start when the head's readiness probe
  passes; the job is submitted when every pod's readiness probe (exec probes, run in the
  pod) passes, as KubeRay waits for a ready RayCluster.
- **Submission (K8sJobMode).** The submitter pod runs KubeRay's bash script around
  `ray job submit --no-wait -- ENTRYPOINT` and `ray job logs --follow` (`submit`).

Not emulated: cgroup CPU/memory limits, the non-root user and the read-only root filesystem
(tests/deploy checks those statically), image pulls, scheduling onto nodes
(tests/deploy/test_capacity.py), the autoscaler.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pod_network import PodNetwork

REPO = Path(__file__).resolve().parents[1]
GCS_PORT = 6379
DASHBOARD_PORT = 8265
# KubeRay's defaults (pod.go): Ray's metrics agent and the dashboard agent's health endpoint.
METRICS_PORT = 8080
DASHBOARD_AGENT_PORT = 52365
# Paths inside the image, and what stands for them here.
RAY_TEMP_DIR = "/tmp/ray"
IMAGE_PATHS = {"/opt/venv": Path(sys.prefix), "/opt/multilabel/configs": REPO / "configs"}
# The kubelet gives every container the API server's Service address (the `kubernetes`
# Service's cluster IP, 10.96.0.1 in a default cluster), with or without enableServiceLinks.
# Nothing here answers on it; code uses it to tell that it runs in a pod.
KUBELET_ENV = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


# ---------------------------------------------------------------------------- quantities


def cpu_count(quantity: str | int | float) -> int:
    """A Kubernetes CPU quantity as KubeRay passes it to --num-cpus (rounded up: "500m" -> 1)."""
    text = str(quantity)
    value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    return int(-(-value // 1))


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def memory_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity in bytes ("3Gi" -> 3221225472)."""
    text = str(quantity)
    for suffix, factor in {**_BINARY, **_DECIMAL}.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def ray_start_params(group: dict[str, Any], container: dict[str, Any], head: bool) -> dict[str, str]:
    """The group's rayStartParams completed as KubeRay v1.6.2 completes them (common/pod.go
    setMissingRayStartParams, generateRayStartCommand): --num-cpus from the CPU limit (else
    the request), rounded up; --memory from the memory limit only; --num-gpus from a GPU
    limit; --metrics-export-port=8080, --dashboard-agent-listen-port=52365, and on the head
    --dashboard-host=0.0.0.0, each unless the group sets it."""
    params = {k: str(v) for k, v in (group.get("rayStartParams") or {}).items()}
    resources = container.get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    cpu = limits.get("cpu") or requests.get("cpu")
    if "num-cpus" not in params and cpu:
        params["num-cpus"] = str(cpu_count(cpu))
    if "memory" not in params and limits.get("memory"):
        params["memory"] = str(memory_bytes(limits["memory"]))
    gpus = [v for k, v in sorted(limits.items()) if k.endswith("/gpu")]
    if "num-gpus" not in params and gpus:
        params["num-gpus"] = str(int(gpus[0]))
    if head:
        params.setdefault("dashboard-host", "0.0.0.0")
    params.setdefault("metrics-export-port", str(METRICS_PORT))
    params.setdefault("dashboard-agent-listen-port", str(DASHBOARD_AGENT_PORT))
    return params


# ---------------------------------------------------------------------------- image env


def image_env(dockerfile: Path = REPO / "Dockerfile") -> dict[str, str]:
    """The `ENV` of the Dockerfile's final stage (the runtime image), `$VAR`s expanded."""
    text = dockerfile.read_text().replace("\\\n", " ")
    final = re.split(r"^FROM\s", text, flags=re.M)[-1]
    env: dict[str, str] = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


# ---------------------------------------------------------------------------- pods


@dataclass
class Pod:
    name: str
    role: str  # head, worker, submitter
    template: dict[str, Any]
    root: Path
    ip: str = ""
    paths: dict[str, Path] = field(default_factory=dict)  # container path -> host path

    @property
    def binds(self) -> dict[str, Path]:
        """Ray's temp dir, bind-mounted from the pod's /tmp volume: worker nodes take the
        head's temp dir path from the GCS, so on one machine the nodes would share one
        session folder (and its sockets) where pods each have their own."""
        if "/tmp" not in self.paths:
            return {}
        (self.paths["/tmp"] / "ray").mkdir(parents=True, exist_ok=True)
        return {RAY_TEMP_DIR: self.paths["/tmp"] / "ray"}

    @property
    def labels(self) -> dict[str, str]:
        return self.template.get("metadata", {}).get("labels", {})

    @property
    def container(self) -> dict[str, Any]:
        return self.template["spec"]["containers"][0]

    def host_path(self, text: str) -> str:
        """Rewrite container paths in `text` (a command or env value) to this pod's folders."""
        if not self.paths:
            return text
        # One pass, longest path first, so a rewritten path is never rewritten again.
        alternatives = "|".join(re.escape(p) for p in sorted(self.paths, key=len, reverse=True))
        pattern = rf"(?<![\w./-])({alternatives})(?=/|\s|$|[:;'\"])"
        return re.sub(pattern, lambda m: str(self.paths[m.group(1)]), text)


class KubeRayEmulator:
    """The RayJob of `objects` (a rendered overlay), run as KubeRay would run it.

    Args:
        objects: the overlay's rendered objects (ConfigMaps and the RayJob are used).
        secrets: Secret name -> data, as the user would have created them.
        services: Service DNS name -> IP of what the test runs behind it.
        net: the pod network.
        workdir: a temp folder for the pods' filesystems and logs.
    """

    def __init__(
        self,
        objects: list[dict[str, Any]],
        secrets: dict[str, dict[str, str]],
        services: dict[str, str],
        net: PodNetwork,
        workdir: Path,
    ) -> None:
        (self.rayjob,) = [o for o in objects if o["kind"] == "RayJob"]
        self.configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
        self.secrets, self.services, self.net, self.workdir = secrets, services, net, workdir
        self.cluster = self.rayjob["spec"]["rayClusterSpec"]
        self.pods: dict[str, Pod] = {}
        self.processes: dict[str, Any] = {}

    # ------------------------------------------------------------------ pods and env

    def _make_pod(self, name: str, role: str, template: dict[str, Any]) -> Pod:
        pod = Pod(name, role, template, self.workdir / name)
        pod.ip = self.net.add_pod(name)
        pod.paths.update({k: v for k, v in IMAGE_PATHS.items()})
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                volume = volumes[mount["name"]]
                host = pod.root / mount["name"]
                host.mkdir(parents=True, exist_ok=True)
                if "configMap" in volume:
                    data = self.configmaps.get(volume["configMap"]["name"])
                    assert data is not None, f"{name}: ConfigMap {volume['configMap']['name']} is not in the overlay"
                    for key, value in data.items():
                        (host / key).write_text(value)
                pod.paths[mount["mountPath"]] = host
        self.pods[name] = pod
        return pod

    def _secret(self, name: str, optional: bool, who: str) -> dict[str, str] | None:
        if name in self.secrets:
            return self.secrets[name]
        assert optional, f"{who}: Secret {name} does not exist and is not optional (CreateContainerConfigError)"
        return None

    def _configmap(self, name: str, optional: bool, who: str) -> dict[str, str] | None:
        if name in self.configmaps:
            return self.configmaps[name]
        assert optional, f"{who}: ConfigMap {name} does not exist and is not optional (CreateContainerConfigError)"
        return None

    def env(self, pod: Pod, container: dict[str, Any], injected: dict[str, str]) -> dict[str, str]:
        """The process environment of `container` in `pod`, with paths and DNS names mapped."""
        who = f"{pod.name}/{container['name']}"
        env = {**image_env(), **KUBELET_ENV, **injected}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            lookup = self._configmap if "configMapRef" in source else self._secret
            env.update(lookup(ref["name"], ref.get("optional", False), who) or {})
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = str(item["value"])
                continue
            ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"].get("configMapKeyRef")
            lookup = self._secret if "secretKeyRef" in item["valueFrom"] else self._configmap
            data = lookup(ref["name"], ref.get("optional", False), who) or {}
            assert ref["key"] in data or ref.get("optional"), f"{who}: key {ref['key']} missing in {ref['name']}"
            if ref["key"] in data:
                env[item["name"]] = data[ref["key"]]
        mapped = {}
        for key, value in env.items():
            value = pod.host_path(value)
            for host, ip in self.services.items():
                value = value.replace(host, ip)
            mapped[key] = value
        return mapped

    def kuberay_env(self, role: str) -> dict[str, str]:
        """What KubeRay adds to a Ray container's and the submitter's env: with authOptions
        mode token, RAY_AUTH_MODE and RAY_AUTH_TOKEN from the Secret's `auth_token` key
        (v1.6.2 common/pod.go SetContainerTokenAuthEnvVars; init containers other than its own
        wait-gcs-ready get nothing), plus the cluster's address for Ray containers."""
        env = {"RAY_CLUSTER_NAME": self.rayjob["metadata"]["name"], "RAY_USAGE_STATS_ENABLED": "0"}
        if role in ("head", "worker"):
            head_ip = self.pods["head"].ip
            env.update({"RAY_IP": head_ip, "RAY_PORT": str(GCS_PORT), "RAY_ADDRESS": f"{head_ip}:{GCS_PORT}"})
        auth = self.cluster.get("authOptions") or {}
        if auth.get("mode") == "token":
            token = self._secret(auth["secretName"], False, f"authOptions of {role}")
            env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token["auth_token"]})
        return env

    # ------------------------------------------------------------------ running

    def _log(self, pod: Pod, what: str) -> Path:
        path = pod.root / f"{what}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _run_init_containers(self, pod: Pod, timeout: float) -> None:
        for container in pod.template["spec"].get("initContainers", []):
            env = self.env(pod, container, {})
            argv = [pod.host_path(a) for a in container.get("command", []) + container.get("args", [])]
            log = self._log(pod, f"init-{container['name']}")
            for attempt in range(3):
                if self.net.run(pod.name, argv, env, log, pod.root, timeout, pod.binds) == 0:
                    break
                time.sleep(2 * (attempt + 1))
            else:
                raise AssertionError(f"{pod.name}: init container {container['name']} failed:\n{tail(log)}")

    def _start_ray(self, pod: Pod, group: dict[str, Any]) -> None:
        params = ray_start_params(group, pod.container, head=pod.role == "head")
        argv = ["ray", "start", "--block"]
        argv += ["--head"] if pod.role == "head" else [f"--address={self.pods['head'].ip}:{GCS_PORT}"]
        # KubeRay pastes " --KEY=VALUE " into the container's bash command line (pod.go
        # convertParamMap): bash's word splitting and quote removal apply to VALUE.
        argv += [word for k, v in sorted(params.items()) for word in shlex.split(f"--{k}={v}")]
        env = self.env(pod, pod.container, self.kuberay_env(pod.role))
        pod.root.mkdir(parents=True, exist_ok=True)
        (pod.root / "ray-start.txt").write_text(shlex.join(argv))
        self.processes[pod.name] = self.net.popen(pod.name, argv, env, self._log(pod, "ray"), pod.root, pod.binds)

    def _wait_ready(self, pod: Pod, timeout: float) -> None:
        """Run the container's readinessProbe in the pod until it passes."""
        probe = pod.container.get("readinessProbe", {}).get("exec", {}).get("command")
        assert probe, f"{pod.name}: the emulation needs an exec readinessProbe"
        env = self.env(pod, pod.container, self.kuberay_env(pod.role))
        deadline = time.monotonic() + timeout
        log = self._log(pod, "probe")
        while time.monotonic() < deadline:
            exited = self.processes[pod.name].poll() is not None
            assert not exited, f"{pod.name}: ray start exited:\n{tail(self._log(pod, 'ray'))}"
            if self.net.run(pod.name, probe, env, log, pod.root, 10, pod.binds) == 0:
                return
            time.sleep(1)
        raise AssertionError(f"{pod.name} not ready after {timeout:.0f}s:\n{tail(log)}\n{tail(self._log(pod, 'ray'))}")

    def start(self, timeout: float = 300) -> None:
        """Init containers, head, workers; returns when every pod is ready."""
        head = self._make_pod("head", "head", self.cluster["headGroupSpec"]["template"])
        self._run_init_containers(head, timeout)
        self._start_ray(head, self.cluster["headGroupSpec"])
        self._wait_ready(head, timeout)
        workers = []
        for group in self.cluster.get("workerGroupSpecs", []):
            for _ in range(int(group.get("replicas", 1))):
                pod = self._make_pod(f"w{len(workers)}", "worker", group["template"])
                self._start_ray(pod, group)
                workers.append(pod)
        for pod in workers:
            self._wait_ready(pod, timeout)

    def add_worker(self, timeout: float = 300) -> Pod:
        """One more pod of the first worker group, as the autoscaler or a replacement node
        would bring; returns once it is ready."""
        group = self.cluster["workerGroupSpecs"][0]
        index = sum(1 for p in self.pods.values() if p.role == "worker")
        pod = self._make_pod(f"w{index}", "worker", group["template"])
        self._start_ray(pod, group)
        self._wait_ready(pod, timeout)
        return pod

    def exec(self, pod: Pod, argv: list[str], timeout: float, what: str = "exec") -> tuple[int, str]:
        """Run `argv` in the pod's Ray container with its env, as the kubelet runs an exec hook
        or probe (`kubectl exec`); returns (exit code, output)."""
        env = self.env(pod, pod.container, self.kuberay_env(pod.role))
        log = self._log(pod, what)
        argv = [pod.host_path(a) for a in argv]
        code = self.net.run(pod.name, argv, env, log, pod.root, timeout, pod.binds)
        return code, tail(log, 8000)

    def kill_pod(self, pod: Pod) -> None:
        """SIGKILL everything in the pod, as when its node is gone."""
        self.net.kill_pod(pod.name)
        process = self.processes.get(pod.name)
        if process is not None:
            process.wait(timeout=30)

    def submit(self, timeout: float, entrypoint: str | None = None) -> tuple[int, str]:
        """Run the submitter pod as KubeRay v1.6.2 builds it in K8sJobMode (common/job.go
        BuildJobSubmitCommand; rayjob_controller.go configureSubmitterContainer): `/bin/bash
        -ce` over `if ! ray job status ...; then ray job submit --no-wait --submission-id ID
        -- ENTRYPOINT; fi; ray job logs --follow ID`, the entrypoint pasted in unquoted.
        `entrypoint` replaces the RayJob's own, as a RayJob edited to run another command
        (docs/batch-inference.md) would. Returns (exit code, the submitter's log)."""
        template = self.rayjob["spec"].get("submitterPodTemplate") or {
            "spec": {"containers": [{"name": "ray-job-submitter"}]}
        }
        self.submission_id = f"{self.rayjob['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        # A new submitter pod per submission, as KubeRay's submitter Job makes one per RayJob.
        pod = self.submitter = self._make_pod(f"submitter-{self.submission_id}", "submitter", template)
        dashboard = f"{self.pods['head'].ip}:{DASHBOARD_PORT}"
        address = f"http://{dashboard}"
        entrypoint = self.pods["head"].host_path((entrypoint or self.rayjob["spec"]["entrypoint"]).strip())
        script = (
            f"if ! ray job status --address {address} {self.submission_id} >/dev/null 2>&1 ; then "
            f"ray job submit --address {address} --no-wait --submission-id {self.submission_id} -- {entrypoint} ; "
            f"fi ; ray job logs --address {address} --follow {self.submission_id}"
        )
        injected = {
            **self.kuberay_env("submitter"),
            "PYTHONUNBUFFERED": "1",
            "RAY_DASHBOARD_ADDRESS": dashboard,
            "RAY_JOB_SUBMISSION_ID": self.submission_id,
        }
        env = self.env(pod, pod.container, injected)
        log = self._log(pod, "submitter")
        code = self.net.run(pod.name, ["/bin/bash", "-ce", "--", script], env, log, pod.root, timeout, pod.binds)
        return code, tail(log, 8000)

    def job_status(self) -> str:
        """The job's status (SUCCEEDED, FAILED, ...) from the head's job API, with the token."""
        from ray.job_submission import JobSubmissionClient

        token = self.kuberay_env("submitter").get("RAY_AUTH_TOKEN", "")
        client = JobSubmissionClient(
            f"http://{self.pods['head'].ip}:{DASHBOARD_PORT}", headers={"Authorization": f"Bearer {token}"}
        )
        return str(client.get_job_status(self.submission_id).value)

    def ports(self, pod: Pod) -> dict[str, int]:
        """Named container ports of the pod's Ray container, with the `metrics` port KubeRay adds."""
        named = {p["name"]: int(p["containerPort"]) for p in pod.container.get("ports", []) if "name" in p}
        if pod.role in ("head", "worker"):
            named.setdefault("metrics", METRICS_PORT)
        return named

    def ray_pods(self) -> list[Pod]:
        return [p for p in self.pods.values() if p.role in ("head", "worker")]


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""
