"""Capacity: every pod of each overlay fits the node it is scheduled to, Ray's object store
fits /dev/shm, and the training config asks for what the worker pods provide.

Static and offline: the overlays rendered with `kubectl kustomize` (conftest), the node
groups and their instance types read from infra/ with python-hcl2, and the node sizes from
the table in infra/instance_types.yaml. Nothing here can see a real cluster; what it checks
is the arithmetic the scheduler, the kubelet, KubeRay and Ray would do.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shlex
from pathlib import Path
from typing import Any

import hcl2
import pytest
import yaml

from job import config

from .helpers import OVERLAYS, REPO, TARGETS, objects, one, pod_templates, tolerates, unquote

TABLE_PATH = REPO / "infra" / "instance_types.yaml"
EKS_MODULE = REPO / "infra" / "modules" / "eks"
DEV_ENV = REPO / "infra" / "envs" / "dev"

MI = 1024**2
GI = 1024**3

# --- how a node's allocatable resources are computed -------------------------------------
#
# EKS AL2023 AMIs (nodeadm; the node groups in infra/modules/eks use AL2023_x86_64_*) write
# the kubelet config in awslabs/amazon-eks-ami nodeadm/internal/kubelet/config.go:
#   kubeReserved.cpu    = getCPUMillicoresToReserve(): 6% of the first core, 1% of the
#                         second, 0.5% of the next two, 0.25% of every core above four
#   kubeReserved.memory = GetMemoryMebibytesToReserve(maxPods) = 11 * maxPods + 255 MiB
#   evictionHard        = memory.available < 100Mi
# and allocatable = capacity - kubeReserved - evictionHard (no systemReserved is set).
# The same formulas are in the EKS docs ("Choose an optimal Amazon EC2 node instance type",
# the max-pods calculator) and the AL2 bootstrap.sh.
EKS_CPU_RESERVE_STEPS = ((0, 1000, 600), (1000, 2000, 100), (2000, 4000, 50), (4000, None, 25))  # per 10,000
EKS_MEMORY_RESERVE_BASE_MIB = 255
EKS_MEMORY_RESERVE_PER_POD_MIB = 11
EVICTION_HARD_MEMORY_MIB = 100
# A node's memory capacity (MemTotal) is below what EC2 advertises: the kernel and firmware
# keep a share. Karpenter estimates it with VM_MEMORY_OVERHEAD_PERCENT, default 0.075
# (aws/karpenter-provider-aws pkg/operator/options/options.go); so does this check.
VM_MEMORY_OVERHEAD = 0.075

# --- what KubeRay and Ray derive from a pod ------------------------------------------------
#
# KubeRay 1.6 (ray-operator/controllers/ray/common/pod.go, generateRayStartCommand) passes
# `ray start --num-cpus` = the container's CPU limit (else its request), rounded up to an
# integer (resource.Quantity.Value()), `--num-gpus` = its nvidia.com/gpu limit, and
# `--memory` = its memory limit, unless rayStartParams sets them. It mounts a memory
# emptyDir on /dev/shm sized to the container's memory only when none is mounted.
# Ray's object store defaults to 30% of the memory it sees (the container's cgroup limit,
# less what is in use): DEFAULT_OBJECT_STORE_MEMORY_PROPORTION = 0.3 in
# ray/_private/ray_constants.py, applied in ray/_private/utils.py
# resolve_object_store_memory(). When /dev/shm is smaller than the object store, Ray puts
# the store in /tmp (services.py: "The object store is using /tmp instead of /dev/shm"),
# here a disk-backed emptyDir.
OBJECT_STORE_PROPORTION = 0.3
GPU_KEY = "nvidia.com/gpu"


# ---------------------------------------------------------------------------- quantities

_SUFFIX = {
    "Ki": 1024,
    "Mi": MI,
    "Gi": GI,
    "Ti": 1024**4,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "m": 1e-3,
    "": 1,
}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ("500m", "8Gi", "2", 3) as a plain number."""
    match = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T|m|)", str(value).strip())
    assert match, f"not a resource quantity: {value!r}"
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def millicores(value: Any) -> int:
    return round(quantity(value) * 1000)


def show_bytes(n: float) -> str:
    return f"{n / GI:.2f} GiB" if n >= GI else f"{n / MI:.0f} MiB"


# ---------------------------------------------------------------------------- node sizes


@functools.cache
def table() -> dict[str, Any]:
    return yaml.safe_load(TABLE_PATH.read_text())


def eks_kube_reserved_millicores(vcpus: int) -> int:
    total = vcpus * 1000
    reserved = 0
    for start, end, per_10k in EKS_CPU_RESERVE_STEPS:
        if total > start:
            reserved += (min(total, end if end is not None else total) - start) * per_10k // 10_000
    return reserved


def eks_kube_reserved_memory_mib(max_pods: int) -> int:
    return EKS_MEMORY_RESERVE_PER_POD_MIB * max_pods + EKS_MEMORY_RESERVE_BASE_MIB


class Node:
    """Allocatable resources of one node, and what is left for the job's pods."""

    def __init__(self, name: str, cpu_m: int, memory: float, gpus: int, free_cpu_m: int, free_memory: float):
        self.name, self.cpu_m, self.memory, self.gpus = name, cpu_m, memory, gpus
        self.free_cpu_m, self.free_memory = free_cpu_m, free_memory

    def __repr__(self) -> str:
        return (
            f"{self.name} (allocatable {self.cpu_m}m CPU, {show_bytes(self.memory)}, {self.gpus} GPU; "
            f"free for the job {self.free_cpu_m}m, {show_bytes(self.free_memory)})"
        )


def eks_node(instance_type: str) -> Node:
    spec = table()["eks"].get(instance_type)
    assert spec, f"{instance_type} is not in {TABLE_PATH.relative_to(REPO)}: add its vCPUs, memory, GPUs and max pods"
    cpu_m = spec["vcpus"] * 1000 - eks_kube_reserved_millicores(spec["vcpus"])
    capacity_mib = spec["memory_gib"] * 1024 * (1 - VM_MEMORY_OVERHEAD)
    memory = (capacity_mib - eks_kube_reserved_memory_mib(spec["max_pods"]) - EVICTION_HARD_MEMORY_MIB) * MI
    ds = table()["daemonsets"]
    return Node(
        instance_type,
        cpu_m,
        memory,
        spec["gpus"],
        cpu_m - ds["cpu_millicores"],
        memory - ds["memory_mib"] * MI,
    )


def local_node() -> Node:
    spec = table()["local"]
    cpu_m = spec["vcpus"] * 1000  # kind, k3d and minikube set no kube-reserved
    memory = (spec["memory_gib"] * 1024 * (1 - VM_MEMORY_OVERHEAD) - EVICTION_HARD_MEMORY_MIB) * MI
    sys_pods = spec["system_pods"]
    return Node(
        "local node",
        cpu_m,
        memory,
        spec["gpus"],
        cpu_m - sys_pods["cpu_millicores"],
        memory - sys_pods["memory_mib"] * MI,
    )


# ---------------------------------------------------------------------------- node groups (HCL)


def _load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f)


def _variables(folder: Path) -> dict[str, Any]:
    return {unquote(n): b for e in _load(folder / "variables.tf").get("variable", []) for n, b in e.items()}


def _var_ref(expr: Any) -> str | None:
    match = re.fullmatch(r"\$\{var\.([a-z0-9_]+)\}", str(expr))
    return match.group(1) if match else None


def resolve(expr: Any) -> list[tuple[str, Any]]:
    """(where, value) of a module argument for every way `terraform apply` may set it: the
    dev environment's default, the module's own default, and terraform.tfvars.example."""
    name = _var_ref(expr)
    if name is None:
        return [("literal", unquote(expr))]
    module_vars = _variables(EKS_MODULE)
    eks_args = next(b for e in _load(DEV_ENV / "main.tf")["module"] for n, b in e.items() if unquote(n) == "eks")
    out = []
    if "default" in module_vars.get(name, {}):
        out.append((f"infra/modules/eks var.{name} default", unquote(module_vars[name]["default"])))
    if name in eks_args:
        env_name = _var_ref(eks_args[name])
        if env_name is None:
            out.append((f"infra/envs/dev module.eks.{name}", unquote(eks_args[name])))
        else:
            env_var = _variables(DEV_ENV).get(env_name, {})
            if "default" in env_var:
                out.append((f"infra/envs/dev var.{env_name} default", unquote(env_var["default"])))
            example = _load(DEV_ENV / "terraform.tfvars.example")
            if env_name in example:
                out.append((f"terraform.tfvars.example {env_name}", unquote(example[env_name])))
    assert out, f"cannot resolve {expr} from infra/"
    return out


@functools.cache
def node_groups() -> dict[str, dict[str, Any]]:
    """Node groups of infra/modules/eks: labels, taints, instance types and max size."""
    groups = {}
    for entry in _load(EKS_MODULE / "main.tf")["resource"]:
        for typ, named in entry.items():
            if unquote(typ) != "aws_eks_node_group":
                continue
            for name, body in named.items():
                types = sorted({t for _, value in resolve(body["instance_types"]) for t in value})
                max_sizes = [int(v) for _, v in resolve(body["scaling_config"][0]["max_size"])]
                taints = [
                    {
                        "key": unquote(t["key"]),
                        "value": unquote(t.get("value", "")),
                        "effect": {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute"}.get(unquote(t["effect"])),
                    }
                    for t in body.get("taint", [])
                ]
                groups[unquote(name)] = {
                    "labels": {unquote(k): unquote(v) for k, v in body.get("labels", {}).items()},
                    "instance_types": types,
                    "max_size": min(max_sizes),
                    "taints": [t for t in taints if t["effect"]],
                }
    return groups


def group_for(node_selector: dict[str, str]) -> tuple[str, dict[str, Any]]:
    matches = [
        (name, g) for name, g in node_groups().items() if all(g["labels"].get(k) == v for k, v in node_selector.items())
    ]
    assert len(matches) == 1, f"nodeSelector {node_selector} matches node groups {[n for n, _ in matches]}"
    return matches[0]


# ---------------------------------------------------------------------------- pods


class Pod:
    """What the scheduler sees of a pod template: effective requests, limits, GPUs."""

    def __init__(self, label: str, template: dict[str, Any], count: int = 1):
        self.label, self.template, self.count = label, template, count
        spec = template["spec"]

        def total(cs, kind, key, conv):
            return sum(conv(c.get("resources", {}).get(kind, {}).get(key, 0)) for c in cs)

        def biggest(cs, kind, key, conv):
            return max((conv(c.get("resources", {}).get(kind, {}).get(key, 0)) for c in cs), default=0)

        app, init = spec.get("containers", []), spec.get("initContainers", [])

        # Effective request: the larger of the app containers' sum and the largest init container.
        def effective(key, conv):
            return max(total(app, "requests", key, conv), biggest(init, "requests", key, conv))

        self.cpu_m = effective("cpu", millicores)
        self.memory = effective("memory", quantity)
        self.gpus = int(max(total(app, "limits", GPU_KEY, quantity), biggest(init, "limits", GPU_KEY, quantity)))
        self.memory_limit = max(total(app, "limits", "memory", quantity), biggest(init, "limits", "memory", quantity))
        self.node_selector = spec.get("nodeSelector") or {}
        self.tolerations = spec.get("tolerations") or []

    def __repr__(self) -> str:
        return (
            f"{self.label} (requests {self.cpu_m}m CPU, {show_bytes(self.memory)}, {self.gpus} GPU; "
            f"memory limit {show_bytes(self.memory_limit)})"
        )


def pods(docs: list[dict[str, Any]]) -> list[Pod]:
    """Every pod the rendered objects make, with how many of each run at once."""
    out = []
    for doc in docs:
        for label, template in pod_templates(doc):
            count = 1
            if doc["kind"] in ("Deployment", "StatefulSet", "ReplicaSet"):
                count = doc["spec"].get("replicas", 1)
            elif doc["kind"] == "Job":
                count = doc["spec"].get("parallelism", 1)
            elif doc["kind"] == "RayJob" and " worker group " in label:
                group = label.rsplit(" ", 1)[1]
                spec = next(g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == group)
                count = max(spec.get("replicas", 1), spec.get("maxReplicas", 0))
            out.append(Pod(label, template, count))
    return out


def fits(pod: Pod, node: Node) -> list[str]:
    """Why `pod` cannot run on `node` (empty when it can)."""
    problems = []
    if pod.cpu_m > node.free_cpu_m:
        problems.append(f"CPU request {pod.cpu_m}m > {node.free_cpu_m}m free")
    if pod.memory > node.free_memory:
        problems.append(f"memory request {show_bytes(pod.memory)} > {show_bytes(node.free_memory)} free")
    if pod.memory_limit > node.memory:
        problems.append(f"memory limit {show_bytes(pod.memory_limit)} > {show_bytes(node.memory)} allocatable")
    if pod.gpus > node.gpus:
        problems.append(f"{pod.gpus} GPU(s) > {node.gpus} on the node")
    return problems


def _rayjob(rendered, target) -> dict[str, Any]:
    return one(rendered[target], "RayJob")


def _ray_groups(rayjob: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]  # KubeRay's Ray container is the first


def ray_cpus(group: dict[str, Any]) -> int:
    """`ray start --num-cpus` as KubeRay derives it (limit, else request, rounded up)."""
    params = group.get("rayStartParams") or {}
    if "num-cpus" in params:
        return int(float(params["num-cpus"]))
    resources = ray_container(group).get("resources", {})
    cpu = resources.get("limits", {}).get("cpu") or resources.get("requests", {}).get("cpu") or 0
    return math.ceil(quantity(cpu))


def ray_custom_resources(group: dict[str, Any]) -> dict[str, float]:
    """`ray start --resources` as the Ray container gets it: KubeRay pastes `--resources=VALUE`
    into a bash command line (pod.go convertParamMap), so bash's quote removal applies before
    Ray parses the JSON."""
    value = (group.get("rayStartParams") or {}).get("resources")
    if value is None:
        return {}
    (word,) = shlex.split(f"--resources={value}")
    return json.loads(word.split("=", 1)[1])


def ray_gpus(group: dict[str, Any]) -> int:
    params = group.get("rayStartParams") or {}
    if "num-gpus" in params:
        return int(float(params["num-gpus"]))
    return int(quantity(ray_container(group).get("resources", {}).get("limits", {}).get(GPU_KEY, 0)))


def mounted_config(rendered, target) -> config.Config:
    """The training config the RayJob's entrypoint reads (--config), loaded by the job."""
    rayjob = _rayjob(rendered, target)
    argv = rayjob["spec"]["entrypoint"].split()
    key = Path(argv[argv.index("--config") + 1]).name
    cm = next(c for c in objects(rendered[target], "ConfigMap") if key in c.get("data", {}))
    return config.config_from_dict(yaml.safe_load(cm["data"][key]) or {})


# ---------------------------------------------------------------------------- the table


def test_allocatable_follows_the_eks_ami_formulas():
    # Worked examples of nodeadm's reservations: 8 vCPUs keep 60+10+10+10 m; 58 pods keep
    # 11*58+255 MiB.
    assert eks_kube_reserved_millicores(1) == 60
    assert eks_kube_reserved_millicores(4) == 80
    assert eks_kube_reserved_millicores(8) == 90
    assert eks_kube_reserved_millicores(16) == 110
    assert eks_kube_reserved_memory_mib(58) == 893
    node = eks_node("g5.2xlarge")
    assert node.cpu_m == 7910
    assert node.memory == pytest.approx((32 * 1024 * 0.925 - 893 - 100) * MI)


def test_ray_default_object_store_share_is_what_this_check_assumes():
    from ray._private import ray_constants  # noqa: PLC0415 (only this test needs Ray)

    assert ray_constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION == OBJECT_STORE_PROPORTION


def test_every_instance_type_terraform_offers_is_in_the_table():
    groups = node_groups()
    assert set(groups) >= {"system", "gpu"}
    for name, group in groups.items():
        assert group["instance_types"], name
        for instance_type in group["instance_types"]:
            spec = table()["eks"].get(instance_type)
            assert spec, f"node group {name} may use {instance_type}, which {TABLE_PATH.name} does not list"
            assert spec["max_pods"] >= 8 and spec["vcpus"] >= 2
    # The GPU group's instance types all have GPUs (it runs the NVIDIA AMI).
    assert all(table()["eks"][t]["gpus"] >= 1 for t in groups["gpu"]["instance_types"])


# ---------------------------------------------------------------------------- pods fit nodes


@pytest.mark.parametrize("label", ["head", "worker group gpu", "submitter"])
def test_aws_ray_pods_fit_the_node_group_they_select(rendered, label):
    (pod,) = [p for p in pods([_rayjob(rendered, "aws")]) if p.label.endswith(label)]
    assert pod.node_selector, f"{pod.label} selects no node group: pin it with nodeSelector multilabel.io/pool"
    name, group = group_for(pod.node_selector)
    for taint in group["taints"]:
        assert tolerates(pod.tolerations, taint), f"{pod.label} does not tolerate node group {name}'s taint {taint}"
    for instance_type in group["instance_types"]:
        node = eks_node(instance_type)
        problems = fits(pod, node)
        assert not problems, f"{pod} does not fit node group {name} ({node}): " + "; ".join(problems)


def test_aws_worker_replicas_fit_the_gpu_node_group_size(rendered):
    for pod in [p for p in pods([_rayjob(rendered, "aws")]) if " worker group " in p.label]:
        name, group = group_for(pod.node_selector)
        for instance_type in group["instance_types"]:
            node = eks_node(instance_type)
            per_node = min(
                node.free_cpu_m // max(pod.cpu_m, 1),
                int(node.free_memory // max(pod.memory, 1)),
                node.gpus // pod.gpus if pod.gpus else 10**6,
            )
            assert per_node >= 1, f"{pod} does not fit {node}"
            needed = math.ceil(pod.count / per_node)
            assert needed <= group["max_size"], (
                f"{pod.count} x {pod.label} need {needed} {instance_type} nodes; node group {name} "
                f"is capped at max_size {group['max_size']}"
            )


def test_aws_pods_that_select_no_node_group_do_not_exist(rendered):
    for pod in pods(rendered["aws"]):
        assert pod.node_selector, f"{pod.label}: every pod on EKS names its node group (multilabel.io/pool)"


def test_local_overlay_fits_one_laptop_node(rendered):
    node = local_node()
    everything = pods(rendered["local"])
    assert len(everything) >= 5  # head, workers, submitter, MinIO, bucket-init
    for pod in everything:
        # A laptop node carries none of the EKS pool labels, and no GPUs.
        assert not pod.node_selector, f"{pod.label} selects {pod.node_selector}, which no local node has"
        problems = fits(pod, node)
        assert not problems, f"{pod} does not fit the {node}: " + "; ".join(problems)
    cpu = sum(p.cpu_m * p.count for p in everything)
    memory = sum(p.memory * p.count for p in everything)
    listing = "\n".join(f"  {p.count} x {p}" for p in everything)
    assert cpu <= node.free_cpu_m, f"the local overlay requests {cpu}m CPU; {node}:\n{listing}"
    assert memory <= node.free_memory, f"the local overlay requests {show_bytes(memory)}; {node}:\n{listing}"


# ---------------------------------------------------------------------------- object store and /dev/shm


@pytest.mark.parametrize("target", TARGETS)
def test_dev_shm_holds_the_ray_object_store(rendered, target):
    for role, group in _ray_groups(_rayjob(rendered, target)):
        spec = group["template"]["spec"]
        container = ray_container(group)
        memory_limit = quantity(container["resources"]["limits"]["memory"])
        params = group.get("rayStartParams") or {}
        if "object-store-memory" in params:
            store = quantity(params["object-store-memory"])
            source = f"rayStartParams object-store-memory {show_bytes(store)}"
        else:
            store = OBJECT_STORE_PROPORTION * memory_limit
            source = f"Ray's default, 30% of the {show_bytes(memory_limit)} memory limit"
        mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"), None)
        if mount is None:
            shm = memory_limit  # KubeRay mounts one sized to the container's memory
        else:
            volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
            empty_dir = volume.get("emptyDir")
            assert empty_dir is not None and empty_dir.get("medium") == "Memory", (
                f"{target} {role}: /dev/shm is not tmpfs"
            )
            assert "sizeLimit" in empty_dir, f"{target} {role}: /dev/shm has no sizeLimit"
            shm = quantity(empty_dir["sizeLimit"])
        assert shm >= store, (
            f"{target} {role}: /dev/shm is {show_bytes(shm)}, below the object store ({source}); "
            "Ray would put the store in /tmp on disk"
        )
        # tmpfs pages count against the container's memory limit.
        assert shm <= memory_limit, f"{target} {role}: /dev/shm {show_bytes(shm)} > memory limit"
        assert store <= 0.5 * memory_limit, f"{target} {role}: the object store leaves too little memory for Ray tasks"


# ---------------------------------------------------------------------------- the training config


@pytest.mark.parametrize("target", TARGETS)
def test_training_config_matches_the_worker_pods(rendered, target):
    rayjob = _rayjob(rendered, target)
    s = mounted_config(rendered, target).scaling
    cluster = rayjob["spec"]["rayClusterSpec"]
    workers = cluster["workerGroupSpecs"]
    replicas = 0
    for group in workers:
        where = f"{target} worker group {group['groupName']}"
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"]), where
        replicas += group["replicas"]
        gpus = ray_gpus(group)
        assert s.use_gpu is (gpus > 0), f"{where}: scaling.use_gpu is {s.use_gpu} but the pods have {gpus} GPU(s)"
        if s.use_gpu:
            assert s.gpus_per_worker <= gpus, f"{where}: gpus_per_worker {s.gpus_per_worker} > {gpus} per pod"
        # One Ray Train worker per pod needs its logical CPUs there, and K8s must guarantee them.
        cpus = ray_cpus(group)
        assert s.cpus_per_worker <= cpus, f"{where}: cpus_per_worker {s.cpus_per_worker} > ray --num-cpus {cpus}"
        request = quantity(ray_container(group)["resources"]["requests"]["cpu"])
        assert s.cpus_per_worker <= request, (
            f"{where}: cpus_per_worker {s.cpus_per_worker} exceeds the pod's CPU request {request}"
        )
    # Every worker pod runs exactly one Ray Train worker: none idles, none is shared; an
    # elastic range is the worker groups' minReplicas..maxReplicas.
    assert s.num_workers == replicas, f"{target}: scaling.num_workers {s.num_workers} != {replicas} worker pods"
    low = sum(g.get("minReplicas", g["replicas"]) for g in workers)
    high = sum(g.get("maxReplicas", g["replicas"]) for g in workers)
    assert (s.min_workers or s.num_workers, s.num_workers) == (low, high), (
        f"{target}: scaling.num_workers [{s.min_workers or s.num_workers}, {s.num_workers}] != the worker "
        f"groups' minReplicas..maxReplicas [{low}, {high}]"
    )
    if s.worker_node_resource:
        for name, group in _ray_groups(rayjob):
            offered = ray_custom_resources(group).get(s.worker_node_resource, 0)
            assert offered == (0 if name == "head" else 1), (
                f"{target} {name}: ray start offers {offered} {s.worker_node_resource} "
                f"(scaling.worker_node_resource); a worker pod needs exactly 1, the head none"
            )
    if replicas > 1:
        assert s.placement_strategy in ("SPREAD", "STRICT_SPREAD"), (
            f"{target}: placement_strategy {s.placement_strategy} may pack several workers into one pod"
        )
    # ... and none lands on the head instead of a worker pod.
    head = cluster["headGroupSpec"]
    head_fits_a_worker = ray_cpus(head) >= max(s.cpus_per_worker, 1e-9) and (
        not s.use_gpu or ray_gpus(head) >= s.gpus_per_worker
    )
    assert not head_fits_a_worker, (
        f"{target}: the head offers Ray {ray_cpus(head)} CPU(s), room for a training worker; "
        'set its rayStartParams num-cpus: "0"'
    )
    # Ray Data's read tasks need CPUs beyond the training workers (DESIGN: otherwise the
    # read is never scheduled and the run hangs).
    total = ray_cpus(cluster["headGroupSpec"]) + sum(ray_cpus(g) * g["replicas"] for g in workers)
    spare = total - s.num_workers * s.cpus_per_worker
    assert spare >= s.data_cpus, f"{target}: {spare} Ray CPUs left for Ray Data, below scaling.data_cpus {s.data_cpus}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_capacity_check_fails_a_worker_bigger_than_its_node(rendered, overlay):
    """The fit check above must be able to fail."""
    big = {"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "64", "memory": "1Ti"}}}]}}
    pod = Pod("too big", big)
    node = local_node() if overlay == "local" else eks_node(node_groups()["gpu"]["instance_types"][0])
    assert len(fits(pod, node)) == 2
