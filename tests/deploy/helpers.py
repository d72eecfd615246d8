"""Helpers for the deployment tests: paths, kustomize rendering, walking pod templates."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.cli import require_tool, run_command

REPO = Path(__file__).resolve().parents[2]
# CI clones the repo into a folder with shared/ beside it; the CRD schemas live there.
SCHEMAS = REPO.parent / "shared" / "schemas"
OVERLAYS = ("local", "aws")
# Read-only actions that take no resource-level permission: "*" is the only resource IAM
# accepts for them (Service Authorization Reference: Amazon EC2 Auto Scaling, Amazon EC2).
# The cluster autoscaler needs them (infra/modules/addons; its README's policy lists them).
STAR_ONLY_READ_ACTIONS = frozenset(
    {
        "autoscaling:DescribeAutoScalingGroups",
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DescribeLaunchConfigurations",
        "autoscaling:DescribeScalingActivities",
        "ec2:DescribeImages",
        "ec2:DescribeInstanceTypes",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:GetInstanceTypesFromInstanceRequirements",
    }
)
TARGETS = ("base",) + OVERLAYS


def target_dir(name: str) -> Path:
    return REPO / "k8s" / ("base" if name == "base" else f"overlays/{name}")


AWS_ENVIRONMENT_EXAMPLE = REPO / "k8s" / "overlays" / "aws" / "environment.env.example"


def render(name: str, environment: str | None = None) -> str:
    """`kubectl kustomize` of k8s/base or k8s/overlays/NAME, as YAML text.

    The aws overlay reads its environment's values from a git-ignored environment.env
    (written by its environment.sh): it is rendered from a copy of k8s/ with `environment`
    (default: the committed example) there, never from whatever a developer's checkout holds.
    """
    if name != "aws":
        return _kustomize(target_dir(name))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(REPO / "k8s", copy, ignore=shutil.ignore_patterns("environment.env"))
        text = AWS_ENVIRONMENT_EXAMPLE.read_text() if environment is None else environment
        (copy / "overlays" / "aws" / "environment.env").write_text(text)
        return _kustomize(copy / "overlays" / "aws")


def _kustomize(folder: Path) -> str:
    proc = run_command([require_tool("kubectl"), "kustomize", str(folder)], timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
    return proc.stdout


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = objects(docs, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, pod template) for every pod a workload object makes, RayJob included."""
    kind, name = doc.get("kind"), doc["metadata"]["name"]
    spec = doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield f"{kind}/{name}", spec["template"]
    elif kind == "CronJob":
        yield f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]
    elif kind == "Pod":
        yield f"{kind}/{name}", {"metadata": doc["metadata"], "spec": spec}
    elif kind == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield f"{kind}/{name} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{kind}/{name} worker group {group['groupName']}", group["template"]
        if "submitterPodTemplate" in spec:
            yield f"{kind}/{name} submitter", spec["submitterPodTemplate"]


def all_pod_templates(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [pt for d in docs for pt in pod_templates(d)]


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def tolerates(tolerations: list[dict[str, Any]] | None, taint: dict[str, str]) -> bool:
    """Whether a pod with `tolerations` may run on a node with `taint` (Kubernetes' matching:
    the effect must match when given; Exists matches the key, or every key when it has none;
    Equal matches key and value)."""
    for t in tolerations or []:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator", "Equal") == "Exists" and t.get("key") in (None, "", taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value", "") == taint["value"]:
            return True
    return False


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of string literals (and of keys): drop them, in lists too."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    return value
