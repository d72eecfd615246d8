"""Cluster add-ons from infra/: the NVIDIA device plugin lands on the GPU nodes, and the EKS
managed add-ons include the VPC CNI with network policy enforcement.

No Helm or cluster here: the device plugin check merges the chart's default values (an
excerpt of chart 0.17.x's values.yaml, below) with ours the way Helm does, and schedules its
DaemonSets onto a node of the GPU node group the way the scheduler would (nodeSelector,
required node affinity, taints), letting NFD and GFD add their labels first.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import hcl2
import yaml

from .helpers import REPO, tolerates, unquote

ADDONS = REPO / "infra" / "modules" / "addons"
EKS = REPO / "infra" / "modules" / "eks"
DEVICE_PLUGIN_VALUES = ADDONS / "values" / "nvidia-device-plugin.yaml"

# NVIDIA/k8s-device-plugin deployments/helm/nvidia-device-plugin/values.yaml at v0.17.1 (the
# parts that decide where its DaemonSets run). The device plugin and GFD DaemonSets both use
# .Values.nodeSelector/.affinity/.tolerations; NFD (subchart alias `nfd`, condition
# "nfd.enabled,gfd.enabled") uses .Values.nfd.worker.*.
CHART_DEFAULTS: dict[str, Any] = {
    "nodeSelector": {},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "feature.node.kubernetes.io/pci-10de.present", "operator": "In", "values": ["true"]}
                        ]
                    },
                    {
                        "matchExpressions": [
                            {
                                "key": "feature.node.kubernetes.io/cpu-model.vendor_id",
                                "operator": "In",
                                "values": ["NVIDIA"],
                            }
                        ]
                    },
                    {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]},
                ]
            }
        }
    },
    "tolerations": [
        {"key": "CriticalAddonsOnly", "operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ],
    "devicePlugin": {"enabled": True},
    "gfd": {"enabled": False},
    "nfd": {
        "worker": {
            "tolerations": [
                {"key": "node-role.kubernetes.io/master", "operator": "Equal", "value": "", "effect": "NoSchedule"},
                {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
            ],
        },
    },
}
# The labels NFD's worker puts on a node with an NVIDIA PCI device (vendor 10de) under the
# chart's NFD config (deviceClassWhitelist 02/03, deviceLabelFields [vendor]), and GFD's.
NFD_GPU_LABEL = ("feature.node.kubernetes.io/pci-10de.present", "true")
GFD_GPU_LABEL = ("nvidia.com/gpu.present", "true")


def _resources(path, typ: str) -> dict[str, dict[str, Any]]:
    with path.open() as f:
        doc = hcl2.load(f)
    return {
        unquote(n): b
        for e in doc.get("resource", [])
        for t, named in e.items()
        if unquote(t) == typ
        for n, b in named.items()
    }


# ---------------------------------------------------------------------------- Helm and the scheduler


def helm_merge(defaults: Any, override: Any) -> Any:
    """Helm's coalescing of user values over chart defaults: maps merge key by key, a null
    removes the key, anything else (lists included) replaces the default."""
    if isinstance(defaults, dict) and isinstance(override, dict):
        out = copy.deepcopy(defaults)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = helm_merge(out.get(key), value)
        return out
    return copy.deepcopy(override)


def _matches(expr: dict[str, Any], labels: dict[str, str]) -> bool:
    op, key = expr["operator"], expr["key"]
    if op == "In":
        return labels.get(key) in expr["values"]
    if op == "NotIn":
        return labels.get(key) not in expr["values"]
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise AssertionError(f"operator {op} not modelled")


def schedules(pod: dict[str, Any], node: dict[str, Any]) -> bool:
    """Would the scheduler put this pod (nodeSelector, affinity, tolerations) on the node?"""
    labels = node["labels"]
    if any(labels.get(k) != v for k, v in (pod.get("nodeSelector") or {}).items()):
        return False
    required = (pod.get("affinity") or {}).get("nodeAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    if required and not any(
        all(_matches(e, labels) for e in term.get("matchExpressions", [])) for term in required["nodeSelectorTerms"]
    ):
        return False
    return all(tolerates(pod.get("tolerations"), t) for t in node["taints"] if t["effect"] != "PreferNoSchedule")


def gpu_node(name: str = "gpu") -> dict[str, Any]:
    """A fresh node of an infra/modules/eks node group: its labels (plus EKS's own) and taints."""
    group = _resources(EKS / "main.tf", "aws_eks_node_group")[name]
    labels = {unquote(k): unquote(v) for k, v in group.get("labels", {}).items()}
    labels["eks.amazonaws.com/nodegroup"] = name
    effects = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
    taints = [
        {"key": unquote(t["key"]), "value": unquote(t.get("value", "")), "effect": effects[unquote(t["effect"])]}
        for t in group.get("taint", [])
    ]
    return {"labels": labels, "taints": taints, "has_nvidia_pci_device": "NVIDIA" in unquote(group["ami_type"])}


def device_plugin_lands(values: dict[str, Any], node: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """Run NFD, GFD and the device plugin DaemonSets against the node until nothing changes.
    Returns whether the device plugin runs there, and the node's labels by then."""
    v = helm_merge(CHART_DEFAULTS, values)
    node = copy.deepcopy(node)
    nfd_on = v.get("nfd", {}).get("enabled", v.get("gfd", {}).get("enabled", False))
    workload = {
        "nodeSelector": v.get("nodeSelector"),
        "affinity": v.get("affinity"),
        "tolerations": v.get("tolerations"),
    }
    for _ in range(3):
        if nfd_on and node["has_nvidia_pci_device"] and schedules(v["nfd"]["worker"], node):
            node["labels"].setdefault(*NFD_GPU_LABEL)
        if v["gfd"]["enabled"] and schedules(workload, node):
            node["labels"].setdefault(*GFD_GPU_LABEL)
    return v["devicePlugin"]["enabled"] and schedules(workload, node), node["labels"]


# ---------------------------------------------------------------------------- device plugin


def _device_plugin_release() -> dict[str, Any]:
    releases = [
        b
        for b in _resources(ADDONS / "main.tf", "helm_release").values()
        if unquote(b["chart"]) == "nvidia-device-plugin"
    ]
    assert len(releases) == 1
    return releases[0]


def test_device_plugin_values_come_from_the_checked_file():
    values = _device_plugin_release()["values"]
    assert values == ['${file("${path.module}/values/nvidia-device-plugin.yaml")}'], values
    # The chart defaults above are 0.17.x's: a new chart version must be re-read before use.
    with (ADDONS / "variables.tf").open() as f:
        variables = {unquote(n): b for e in hcl2.load(f)["variable"] for n, b in e.items()}
    assert unquote(variables["nvidia_device_plugin_version"]["default"]).startswith("0.17.")


def test_device_plugin_lands_on_the_gpu_node_group():
    values = yaml.safe_load(DEVICE_PLUGIN_VALUES.read_text())
    lands, labels = device_plugin_lands(values, gpu_node("gpu"))
    assert lands, f"the NVIDIA device plugin schedules on no GPU node (node labels {labels})"
    assert labels.get(NFD_GPU_LABEL[0]) == "true" and labels.get(GFD_GPU_LABEL[0]) == "true"


def test_device_plugin_stays_off_the_system_nodes():
    values = yaml.safe_load(DEVICE_PLUGIN_VALUES.read_text())
    lands, _ = device_plugin_lands(values, gpu_node("system"))
    assert not lands


def test_the_check_fails_the_values_with_only_a_node_selector():
    """Finding 2 of issue 14: nodeSelector and tolerations alone leave the chart's default
    affinity unmet (no NFD/GFD labels), so no node advertises nvidia.com/gpu."""
    old = {
        "nodeSelector": {"multilabel.io/pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    }
    assert device_plugin_lands(old, gpu_node("gpu"))[0] is False
    # GFD with the chart's own NFD worker tolerations does not help either: they tolerate
    # nvidia.com/gpu=present, and the node group's taint is nvidia.com/gpu=true.
    assert device_plugin_lands({**old, "gfd": {"enabled": True}}, gpu_node("gpu"))[0] is False


# ---------------------------------------------------------------------------- EKS managed add-ons


def _hcl_object(expr: str) -> dict[str, Any]:
    """The flat object literal inside `${jsonencode({k = "v", ...})}` as a dict."""
    match = re.fullmatch(r"\$\{jsonencode\(\{(.*)\}\)\}", expr.strip(), re.S)
    assert match, f"not a jsonencode of an object literal: {expr}"
    pairs = re.findall(r'"?([A-Za-z0-9_.-]+)"?\s*=\s*("(?:[^"\\]|\\.)*"|true|false|[0-9.]+)', match.group(1))
    return {k: json.loads(v) for k, v in pairs}


def test_eks_managed_addons_with_network_policy_enforcement():
    addons = {unquote(b["addon_name"]): b for b in _resources(EKS / "main.tf", "aws_eks_addon").values()}
    assert set(addons) >= {"vpc-cni", "kube-proxy", "coredns", "eks-pod-identity-agent", "aws-ebs-csi-driver"}
    # Without the VPC CNI's network policy agent, k8s/base's NetworkPolicies are not enforced.
    cni = _hcl_object(addons["vpc-cni"]["configuration_values"])
    assert cni.get("enableNetworkPolicy") == "true", cni
    for name, addon in addons.items():
        assert unquote(addon["resolve_conflicts_on_create"]) == "OVERWRITE", name
    # The EBS CSI controller gets an IAM role (Pod Identity), and the nodes start with the CNI.
    associations = _resources(EKS / "main.tf", "aws_eks_pod_identity_association")
    assert any(unquote(a["service_account"]) == "ebs-csi-controller-sa" for a in associations.values())
    for name, group in _resources(EKS / "main.tf", "aws_eks_node_group").items():
        assert "${aws_eks_addon.vpc_cni}" in group.get("depends_on", []), f"node group {name} may start before vpc-cni"
