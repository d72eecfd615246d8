"""Cluster add-ons from infra/: the NVIDIA device plugin lands on the GPU nodes, the EKS
managed add-ons include the VPC CNI with network policy enforcement, the job's alerts reach the
receiver an operator chooses, Prometheus and Alertmanager keep their data on EBS volumes, and
Prometheus scrapes the KubeRay operator.

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
import pytest
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


# ---------------------------------------------------------------------------- Helm values rendered by Terraform
#
# Values files under infra/modules/addons/values/ that main.tf renders with templatefile(),
# each placeholder ${NAME} given by the call's `NAME = EXPR` arguments. They are rendered here
# the same way, every EXPR resolved to what `terraform apply` in infra/envs/dev sets by default.

DEV = REPO / "infra" / "envs" / "dev"


def _hcl(path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f)


def _variables(folder) -> dict[str, dict[str, Any]]:
    return {unquote(n): b for e in _hcl(folder / "variables.tf").get("variable", []) for n, b in e.items()}


def _dev_module_args(name: str) -> dict[str, Any]:
    return next(b for e in _hcl(DEV / "main.tf")["module"] for n, b in e.items() if unquote(n) == name)


def _dev_value(expr: str) -> Any:
    """An expression of infra/envs/dev/main.tf: var.X (its default) or module.eks.cluster_name."""
    if expr == "module.eks.cluster_name":
        return _dev_value(str(_dev_module_args("eks")["cluster_name"]).strip("${}"))
    match = re.fullmatch(r"var\.(\w+)", expr)
    assert match, f"cannot resolve {expr} in infra/envs/dev"
    return unquote(_variables(DEV)[match.group(1)]["default"])


def addon_setting(name: str) -> Any:
    """var.NAME of the addons module as the dev environment sets it by default."""
    args = _dev_module_args("addons")
    if name in args:
        return _dev_value(str(args[name]).strip("${}"))
    variable = _variables(ADDONS)[name]
    assert "default" in variable, f"the dev environment does not set addons variable {name}, which has no default"
    return unquote(variable["default"])


def _resolve(expr: str) -> Any:
    expr = expr.strip()
    if expr.startswith('"') and expr.endswith('"'):
        return expr[1:-1]
    if match := re.fullmatch(r"var\.(\w+)", expr):
        return addon_setting(match.group(1))
    if match := re.fullmatch(r"(\w+)\.(\w+)\.metadata\[0\]\.name", expr):
        resource = _resources(ADDONS / "main.tf", match.group(1))[match.group(2)]
        return _resolve(str(resource["metadata"][0]["name"]).strip("${}"))
    raise AssertionError(f"cannot resolve {expr}")


def templatefile_args(expr: str, filename: str) -> dict[str, str]:
    """NAME -> EXPR of the `templatefile(".../values/FILENAME", {NAME = EXPR, ...})` in `expr`."""
    match = re.search(r'templatefile\("\$\{path\.module\}/values/' + re.escape(filename) + r'",\s*\{(.*?)\}\)', expr)
    assert match, f"{filename} is not rendered with templatefile() in {expr}"
    return dict(re.findall(r"(\w+)\s*=\s*([^,]+?)\s*(?:,|$)", match.group(1)))


def render_values(filename: str, args: dict[str, str], **overrides: Any) -> dict[str, Any]:
    """The values file as templatefile() renders it, parsed as YAML."""
    text = (ADDONS / "values" / filename).read_text()
    # Plain ${NAME} placeholders only (no directives, no escapes): then templatefile() is
    # substitution, as done here.
    assert "%{" not in text and "$${" not in text, f"{filename} uses template syntax this check does not model"
    names = set(re.findall(r"\$\{([^}]*)\}", text))
    assert names <= set(args), f"{filename}: placeholders {names - set(args)} are not given by templatefile()"
    values = {n: overrides[n] if n in overrides else _resolve(args[n]) for n in names}
    return yaml.safe_load(re.sub(r"\$\{(\w+)\}", lambda m: str(values[m.group(1)]), text))


def _release(chart: str) -> dict[str, Any]:
    (release,) = [b for b in _resources(ADDONS / "main.tf", "helm_release").values() if unquote(b["chart"]) == chart]
    return release


def _locals(path) -> dict[str, Any]:
    return {k: v for e in _hcl(path).get("locals", []) for k, v in e.items() if not k.startswith("__")}


# kube-prometheus-stack 75.15.1 values.yaml (prometheus-community/helm-charts, tag
# kube-prometheus-stack-75.15.1): the parts these checks read.
KPS_DEFAULTS: dict[str, Any] = {
    "alertmanager": {
        "config": {
            "route": {
                "group_by": ["namespace"],
                "receiver": "null",
                "routes": [{"receiver": "null", "matchers": ['alertname = "Watchdog"']}],
            },
            "receivers": [{"name": "null"}],
        },
        "alertmanagerSpec": {"secrets": [], "storage": {}},
    },
    "prometheus": {
        "prometheusSpec": {
            "retentionSize": "",
            "storageSpec": {},
            "serviceMonitorSelectorNilUsesHelmValues": True,
            "serviceMonitorSelector": {},
            "serviceMonitorNamespaceSelector": {},
        }
    },
}


def kps_values(alert_receiver: str | None = None) -> dict[str, Any]:
    """kube-prometheus-stack's values after Helm merges ours over the chart's, for a setting of
    var.alert_receiver (default: what the dev environment sets)."""
    expr = str(_release("kube-prometheus-stack")["values"])
    merged = helm_merge(
        KPS_DEFAULTS, render_values("kube-prometheus-stack.yaml", templatefile_args(expr, "kube-prometheus-stack.yaml"))
    )
    receiver = addon_setting("alert_receiver") if alert_receiver is None else alert_receiver
    # local.alert_receiver_values: nothing for "none", else values/alertmanager-<receiver>.yaml.
    (local_expr,) = [v for k, v in _locals(ADDONS / "main.tf").items() if k == "alert_receiver_values"]
    assert "local.alert_receiver_values" in expr
    assert re.search(r'var\.alert_receiver == "none" \? \[\] :', local_expr), local_expr
    if receiver != "none":
        args = templatefile_args(local_expr.replace("${var.alert_receiver}", receiver), f"alertmanager-{receiver}.yaml")
        merged = helm_merge(merged, render_values(f"alertmanager-{receiver}.yaml", args))
    return merged


# ---------------------------------------------------------------------------- Alertmanager routing


def _matches_matcher(matcher: str, labels: dict[str, str]) -> bool:
    """One Alertmanager matcher `label op "value"` (regexes anchored, as Alertmanager does)."""
    match = re.fullmatch(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*', matcher)
    assert match, f"matcher not modelled: {matcher}"
    label, op, value = match.groups()
    actual = labels.get(label, "")
    if op in ("=~", "!~"):
        hit = re.fullmatch(f"(?:{value})", actual) is not None
        return hit if op == "=~" else not hit
    return (actual == value) if op == "=" else (actual != value)


def route(config: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The receiver Alertmanager sends an alert with these labels to: the first matching child
    route of the root (no `continue` here), else the root's receiver."""
    root = config["route"]
    for child in root.get("routes", []):
        assert not child.get("continue") and not child.get("routes"), "nested or continued routes not modelled"
        if all(_matches_matcher(m, labels) for m in child.get("matchers", [])):
            name = child["receiver"]
            break
    else:
        name = root["receiver"]
    (receiver,) = [r for r in config["receivers"] if r["name"] == name]
    return receiver


def job_alerts() -> list[dict[str, str]]:
    rules = yaml.safe_load((REPO / "monitoring" / "alerts.rules.yml").read_text())
    return [{"alertname": r["alert"], **r["labels"]} for g in rules["groups"] for r in g["rules"]]


def _receiver_variable() -> dict[str, Any]:
    return _variables(ADDONS)["alert_receiver"]


def test_alert_receiver_choices_each_have_values():
    condition = unquote(_receiver_variable()["validation"][0]["condition"])
    choices = set(re.findall(r'"(\w+)"', re.search(r"contains\(\[(.*?)\]", condition).group(1)))
    assert choices == {"none", "slack", "webhook"}
    assert addon_setting("alert_receiver") == "none", "the default must work without a Secret"
    for choice in choices - {"none"}:
        assert (ADDONS / "values" / f"alertmanager-{choice}.yaml").is_file(), choice


def test_without_a_receiver_alerts_stay_in_alertmanager():
    """The documented default: Alertmanager keeps the chart's `null` receiver, mounts no Secret
    (so it starts without one), and the job's alerts notify nobody."""
    values = kps_values("none")
    assert values["alertmanager"]["alertmanagerSpec"]["secrets"] == []
    for alert in job_alerts():
        assert route(values["alertmanager"]["config"], alert) == {"name": "null"}


@pytest.mark.parametrize("receiver", ["slack", "webhook"])
def test_critical_and_warning_job_alerts_reach_the_receiver_url_from_a_mounted_secret(receiver):
    values = kps_values(receiver)
    config, spec = values["alertmanager"]["config"], values["alertmanager"]["alertmanagerSpec"]
    secret = addon_setting("alert_receiver_secret_name")
    alerts = job_alerts()
    assert {a["severity"] for a in alerts} >= {"critical", "warning", "info"}
    for alert in alerts:
        got = route(config, alert)
        if alert["severity"] == "info":
            assert got == {"name": "null"}, f"{alert['alertname']} (info) should not page anyone"
            continue
        key = {"slack": "slack_configs", "webhook": "webhook_configs"}[receiver]
        assert got.get(key), f"{alert['alertname']} goes to {got}, not to the {receiver} receiver"
        for notifier in got[key]:
            # The URL comes from a file of the operator's Secret, never from the values.
            assert "api_url" not in notifier and "url" not in notifier, notifier
            path = notifier["api_url_file" if receiver == "slack" else "url_file"]
            # alertmanagerSpec.secrets mounts each Secret at /etc/alertmanager/secrets/NAME/KEY.
            assert path == f"/etc/alertmanager/secrets/{secret}/url", path
            assert secret in spec["secrets"], f"Secret {secret} is not mounted into Alertmanager"
    # Other alerts (the chart's own, Watchdog the always-firing heartbeat included) still end in null.
    assert route(config, {"alertname": "Watchdog", "severity": "none"}) == {"name": "null"}
    assert route(config, {"alertname": "KubePodCrashLooping", "severity": "warning"}) == {"name": "null"}


def test_the_routing_check_fails_the_chart_default_config():
    """Finding 8b of issue 14: with the chart's config alone every alert ends in `null`."""
    critical = {"alertname": "MultilabelRunFailed", "severity": "critical"}
    assert route(KPS_DEFAULTS["alertmanager"]["config"], critical) == {"name": "null"}


# ---------------------------------------------------------------------------- persistent storage


def _size_bytes(quantity: str) -> float:
    """A Kubernetes quantity (50Gi) or a Prometheus size (40GB: Prometheus' units are powers of 2)."""
    match = re.fullmatch(r"([0-9.]+)\s*([KMGTP]i?|[KMGTP]B|B)?", quantity)
    assert match, quantity
    number, unit = float(match.group(1)), (match.group(2) or "B")
    power = "BKMGTP".index(unit[0])
    return number * 1024**power


def test_prometheus_and_alertmanager_keep_their_data_on_encrypted_gp3_volumes():
    values = kps_values()
    (storage_class,) = _resources(ADDONS / "main.tf", "kubernetes_storage_class_v1").values()
    name = _resolve(str(storage_class["metadata"][0]["name"]).strip("${}"))
    assert unquote(storage_class["storage_provisioner"]) == "ebs.csi.aws.com"
    params = {unquote(k): unquote(v) for k, v in storage_class["parameters"].items()}
    assert params["type"] == "gp3" and params["encrypted"] == "true", params
    # EBS volumes live in one zone: the volume must be made where the pod is scheduled.
    assert unquote(storage_class["volume_binding_mode"]) == "WaitForFirstConsumer"
    claims = {
        "prometheus": values["prometheus"]["prometheusSpec"]["storageSpec"],
        "alertmanager": values["alertmanager"]["alertmanagerSpec"]["storage"],
    }
    for who, storage in claims.items():
        assert storage, f"{who} keeps its data in an emptyDir: lost with the pod"
        spec = storage["volumeClaimTemplate"]["spec"]
        assert spec["storageClassName"] == name, f"{who} asks for StorageClass {spec['storageClassName']}"
        assert spec["accessModes"] == ["ReadWriteOnce"]
        assert _size_bytes(spec["resources"]["requests"]["storage"]) >= 1024**3
    # Prometheus trims its data before the volume is full (a full volume stops it).
    prom = values["prometheus"]["prometheusSpec"]
    volume = _size_bytes(prom["storageSpec"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"])
    assert prom["retentionSize"] and _size_bytes(prom["retentionSize"]) <= 0.9 * volume, prom["retentionSize"]
    module = {
        n: unquote(_variables(ADDONS)[n]["default"]) for n in ("prometheus_retention_size", "prometheus_storage_size")
    }
    assert _size_bytes(module["prometheus_retention_size"]) <= 0.9 * _size_bytes(module["prometheus_storage_size"]), (
        module
    )
    # The dev environment can reach the StorageClass: the kubernetes provider is configured.
    providers = {unquote(k) for e in _hcl(DEV / "main.tf")["provider"] for k in e}
    assert "kubernetes" in providers


# ---------------------------------------------------------------------------- KubeRay's own metrics

# ray-project/kuberay helm-chart/kuberay-operator/values.yaml at v1.6.2: metrics.
KUBERAY_DEFAULTS: dict[str, Any] = {
    "metrics": {
        "enabled": True,
        "serviceMonitor": {"enabled": False, "interval": "30s", "honorLabels": True, "selector": {}, "namespace": ""},
    }
}


def test_prometheus_scrapes_the_kuberay_operator():
    """MultilabelRayJobFailed reads kuberay_job_deployment_status: the operator must export it
    (--enable-metrics), its chart must make a ServiceMonitor, Prometheus must select it."""
    release = _release("kuberay-operator")
    assert release["values"] == ['${file("${path.module}/values/kuberay-operator.yaml")}'], release["values"]
    values = helm_merge(KUBERAY_DEFAULTS, yaml.safe_load((ADDONS / "values" / "kuberay-operator.yaml").read_text()))
    assert values["metrics"]["enabled"] is True
    monitor = values["metrics"]["serviceMonitor"]
    assert monitor["enabled"] is True
    # honorLabels keeps the RayJob's namespace label (not the operator Service's).
    assert monitor["honorLabels"] is True
    prom = kps_values()["prometheus"]["prometheusSpec"]
    assert prom["serviceMonitorSelectorNilUsesHelmValues"] is False or all(
        monitor["selector"].get(k) == v for k, v in prom["serviceMonitorSelector"].get("matchLabels", {}).items()
    )
    assert prom["serviceMonitorNamespaceSelector"] == {}, "Prometheus must look in the operator's namespace"
    # The ServiceMonitor kind exists only once kube-prometheus-stack's CRDs are installed.
    assert "${helm_release.kube_prometheus_stack}" in release.get("depends_on", [])
    # The values were read at 1.6.x.
    assert unquote(_variables(ADDONS)["kuberay_operator_version"]["default"]).startswith("1.6.")
