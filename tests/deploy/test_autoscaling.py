"""GPU nodes come and go with the cluster autoscaler (infra/modules/addons), not with
`terraform apply`: the GPU node group is left to it, it can scale that group up from zero for
the RayJob's GPU workers, and its IAM role can do that and little else.

No AWS or cluster here. The scale-from-zero check builds the node template the autoscaler
builds for an Auto Scaling group with no node (cluster-autoscaler 1.32,
cloudprovider/aws/aws_manager.go buildNodeFromTemplate: labels from the ASG's
k8s.io/cluster-autoscaler/node-template/label/* tags, taints from .../taint/* tags,
capacity from the instance type and .../resources/* tags) from the tags Terraform puts on the
GPU group's ASG, and asks whether the aws overlay's GPU worker pod would fit it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from .helpers import REPO, STAR_ONLY_READ_ACTIONS, one, pod_templates, tolerates, unquote
from .test_addons import (
    ADDONS,
    DEV,
    EKS,
    _hcl,
    _locals,
    _release,
    _resources,
    _variables,
    addon_setting,
    gpu_node,
    render_values,
    templatefile_args,
)

INSTANCE_TYPES = REPO / "infra" / "instance_types.yaml"
TEMPLATE = "k8s.io/cluster-autoscaler/node-template/"
GPU = "nvidia.com/gpu"


def _gpu_group() -> dict[str, Any]:
    return _resources(EKS / "main.tf", "aws_eks_node_group")["gpu"]


def _dev_default(name: str) -> Any:
    return unquote(_variables(DEV)[name]["default"])


# ---------------------------------------------------------------------------- the node group


def test_gpu_group_size_is_the_autoscalers_not_terraforms():
    """Finding 8a of issue 14: desired size was a Terraform variable, re-applied by hand."""
    for name, group in _resources(EKS / "main.tf", "aws_eks_node_group").items():
        ignored = [unquote(x) for lc in group.get("lifecycle", []) for x in lc.get("ignore_changes", [])]
        assert "${scaling_config[0].desired_size}" in ignored, f"an apply would reset node group {name}'s size"
    scaling = _gpu_group()["scaling_config"][0]
    assert scaling["min_size"] == 0 and scaling["desired_size"] == 0, "the GPU group starts and idles at zero"
    assert unquote(scaling["max_size"]) == "${var.gpu_node_max_size}"
    # No knob left that suggests starting GPU nodes with terraform apply.
    for folder in (EKS, DEV):
        assert not [v for v in _variables(folder) if "desired" in v and "gpu" in v], folder
    example = _hcl(DEV / "terraform.tfvars.example")
    assert not [k for k in example if "desired" in k], example


# ---------------------------------------------------------------------------- scale from zero


def asg_tags() -> dict[str, str]:
    """Tags Terraform puts on the GPU node group's Auto Scaling group (aws_autoscaling_group_tag
    over a local map), with var/locals resolved to the dev environment's defaults."""
    tags = _resources(EKS / "main.tf", "aws_autoscaling_group_tag")
    (resource,) = [r for r in tags.values() if "aws_eks_node_group.gpu" in str(r["autoscaling_group_name"])]
    # The ASG EKS made for the GPU node group (EKS does not copy node group tags to it).
    assert resource["autoscaling_group_name"] == "${aws_eks_node_group.gpu.resources[0].autoscaling_groups[0].name}"
    (tag,) = resource["tag"]
    assert tag["key"] == "${each.key}" and tag["value"] == "${each.value}"
    match = re.fullmatch(r"\$\{local\.(\w+)\}", resource["for_each"])
    assert match, resource["for_each"]
    literal = _locals(EKS / "main.tf")[match.group(1)]
    gpus = min(yaml.safe_load(INSTANCE_TYPES.read_text())["eks"][t]["gpus"] for t in _dev_default("gpu_instance_types"))
    values = {
        "${var.gpu_accelerator}": _dev_default("gpu_accelerator"),
        # local.gpus_per_gpu_node: the fewest GPUs of the group's instance types (EC2 GpuInfo,
        # as in infra/instance_types.yaml).
        "${tostring(local.gpus_per_gpu_node)}": str(gpus),
    }
    out = {}
    for key, value in literal.items():
        if key.startswith("__"):
            continue
        value = unquote(value)
        out[unquote(key)] = values.get(value, value)
    return out


def template_node(tags: dict[str, str], instance_gpus: int) -> dict[str, Any]:
    """The node cluster-autoscaler imagines for a group with no node, from its ASG tags."""
    labels = {k[len(TEMPLATE + "label/") :]: v for k, v in tags.items() if k.startswith(TEMPLATE + "label/")}
    taints = []
    for key, value in tags.items():
        if key.startswith(TEMPLATE + "taint/") and re.fullmatch(r"(.*):(NoSchedule|NoExecute|PreferNoSchedule)", value):
            taint_value, effect = value.split(":", 1)
            taints.append({"key": key[len(TEMPLATE + "taint/") :], "value": taint_value, "effect": effect})
    capacity = {GPU: instance_gpus}
    for key, value in tags.items():
        if key.startswith(TEMPLATE + "resources/"):
            capacity[key[len(TEMPLATE + "resources/") :]] = int(value)
    return {"labels": labels, "taints": taints, "capacity": capacity}


def _worker_template(rendered) -> dict[str, Any]:
    rayjob = one(rendered["aws"], "RayJob")
    ((_, template),) = [(label, t) for label, t in pod_templates(rayjob) if " worker group " in label]
    return template


def admits(node: dict[str, Any], template: dict[str, Any]) -> list[str]:
    """Why the scheduler would not put this pod on the node (empty when it would)."""
    spec, problems = template["spec"], []
    for key, value in (spec.get("nodeSelector") or {}).items():
        if node["labels"].get(key) != value:
            problems.append(f"nodeSelector {key}={value} but the node has {key}={node['labels'].get(key)}")
    for taint in node["taints"]:
        if taint["effect"] != "PreferNoSchedule" and not tolerates(spec.get("tolerations"), taint):
            problems.append(f"taint {taint} not tolerated")
    gpus = sum(int(c.get("resources", {}).get("requests", {}).get(GPU, 0)) for c in spec["containers"])
    if gpus > node["capacity"].get(GPU, 0):
        problems.append(f"{gpus} GPUs requested, the node has {node['capacity'].get(GPU, 0)}")
    return problems


def _instance_gpus() -> int:
    table = yaml.safe_load(INSTANCE_TYPES.read_text())["eks"]
    return min(table[t]["gpus"] for t in _dev_default("gpu_instance_types"))


def test_autoscaler_sees_that_a_new_gpu_node_fits_the_worker_pod(rendered):
    node = template_node(asg_tags(), _instance_gpus())
    worker = _worker_template(rendered)
    assert worker["spec"]["nodeSelector"] == {"multilabel.io/pool": "gpu"}
    problems = admits(node, worker)
    assert not problems, "the autoscaler would not start a GPU node for the worker pod: " + "; ".join(problems)


def test_autoscaler_template_is_what_a_real_gpu_node_looks_like():
    """Tags that promise labels or taints the node group does not set make the autoscaler start
    nodes the pods then cannot use (and miss a taint: start nodes for pods that cannot go)."""
    node = template_node(asg_tags(), _instance_gpus())
    real = gpu_node("gpu")
    real_labels = {k: v for k, v in real["labels"].items() if k != "eks.amazonaws.com/nodegroup"}
    real_labels["k8s.amazonaws.com/accelerator"] = _dev_default("gpu_accelerator")
    assert node["labels"] == real_labels
    assert node["taints"] == real["taints"]
    # The autoscaler's GPU label is there: a node that has joined but whose device plugin has
    # not yet advertised nvidia.com/gpu counts as coming, not as a reason to add another.
    assert "k8s.amazonaws.com/accelerator" in node["labels"]


def test_the_fit_check_fails_the_old_node_group_tags(rendered):
    """Before: the template tags sat on aws_eks_node_group.tags, which EKS does not copy to the
    ASG, so the autoscaler's template had no pool label and no taint."""
    worker = _worker_template(rendered)
    bare = template_node({}, _instance_gpus())
    assert any("nodeSelector" in p for p in admits(bare, worker))
    untainted = {k: v for k, v in asg_tags().items() if "/taint/" not in k}
    assert template_node(untainted, _instance_gpus())["taints"] != gpu_node("gpu")["taints"]
    no_gpu = {**asg_tags(), TEMPLATE + "resources/" + GPU: "0"}
    assert any("GPUs requested" in p for p in admits(template_node(no_gpu, _instance_gpus()), worker))


# ---------------------------------------------------------------------------- the autoscaler


# cluster-autoscaler chart minor -> app minor (kubernetes/autoscaler charts/cluster-autoscaler/
# Chart.yaml at tags cluster-autoscaler-chart-9.43.0 ... 9.49.0). The autoscaler's minor must
# be the cluster's Kubernetes minor.
CHART_APP_MINOR = {
    "9.43": "1.31",
    "9.44": "1.31",
    "9.45": "1.32",
    "9.46": "1.32",
    "9.47": "1.33",
    "9.48": "1.33",
    "9.49": "1.33",
}


def cluster_autoscaler_values() -> dict[str, Any]:
    expr = str(_release("cluster-autoscaler")["values"])
    return render_values("cluster-autoscaler.yaml", templatefile_args(expr, "cluster-autoscaler.yaml"))


def test_autoscaler_release_matches_the_cluster():
    release = _release("cluster-autoscaler")
    assert unquote(release["repository"]) == "https://kubernetes.github.io/autoscaler"
    # The module's default and the dev environment's, each against the Kubernetes version that
    # comes with it.
    pairs = [
        ("infra/modules", unquote(_variables(ADDONS)["cluster_autoscaler_version"]["default"]), _variables(EKS)),
        ("infra/envs/dev", addon_setting("cluster_autoscaler_version"), _variables(DEV)),
    ]
    for where, chart, kube_vars in pairs:
        minor = ".".join(chart.split(".")[:2])
        assert minor in CHART_APP_MINOR, f"{where}: chart {chart}: its values were not read (add it to CHART_APP_MINOR)"
        kubernetes = unquote(kube_vars["kubernetes_version"]["default"])
        assert CHART_APP_MINOR[minor] == kubernetes, (
            f"{where}: chart {chart} is cluster-autoscaler {CHART_APP_MINOR[minor]}, the cluster {kubernetes}"
        )
    values = cluster_autoscaler_values()
    assert values["cloudProvider"] == "aws"
    assert values["autoDiscovery"]["clusterName"] == _dev_default("name"), "discovers another cluster's groups"
    assert values["awsRegion"] == _dev_default("region")
    args = values["extraArgs"]
    assert args["balance-similar-node-groups"] is True
    assert args["skip-nodes-with-system-pods"] is True
    assert args["expander"] in {"least-waste", "random", "most-pods", "price", "priority", "least-nodes"}
    assert re.fullmatch(r"[0-9]+[smh]", args["scale-down-unneeded-time"])
    assert values["nodeSelector"] == {"multilabel.io/pool": "system"}


def test_autoscaler_pod_gets_its_iam_role():
    """The Pod Identity association must name the ServiceAccount the chart runs the pod as, in
    the release's namespace, or the autoscaler has no AWS credentials at all."""
    release = _release("cluster-autoscaler")
    (assoc,) = _resources(ADDONS / "main.tf", "aws_eks_pod_identity_association").values()
    local = _locals(ADDONS / "main.tf")

    def value(expr: str) -> str:
        match = re.fullmatch(r"\$\{local\.(\w+)\}", expr)
        return unquote(local[match.group(1)]) if match else unquote(expr)

    sa = cluster_autoscaler_values()["rbac"]["serviceAccount"]
    assert sa["create"] is True
    assert value(assoc["service_account"]) == sa["name"]
    assert value(assoc["namespace"]) == value(release["namespace"])
    assert assoc["role_arn"] == "${aws_iam_role.cluster_autoscaler.arn}"
    assert "${aws_eks_pod_identity_association.cluster_autoscaler}" in release["depends_on"]
    # The role trusts EKS Pod Identity (the agent is an EKS add-on of infra/modules/eks).
    role = _resources(ADDONS / "main.tf", "aws_iam_role")["cluster_autoscaler"]
    trust_name = re.fullmatch(r"\$\{data\.aws_iam_policy_document\.(\w+)\.json\}", role["assume_role_policy"]).group(1)
    trust = _data(trust_name)
    (statement,) = trust["statement"]
    assert {unquote(a) for a in statement["actions"]} == {"sts:AssumeRole", "sts:TagSession"}
    assert [unquote(i) for p in statement["principals"] for i in p["identifiers"]] == ["pods.eks.amazonaws.com"]


def _data(name: str) -> dict[str, Any]:
    docs = {
        unquote(n): b
        for e in _hcl(ADDONS / "main.tf").get("data", [])
        for t, named in e.items()
        if unquote(t) == "aws_iam_policy_document"
        for n, b in named.items()
    }
    return docs[name]


# cluster-autoscaler 1.32 cloudprovider/aws/README.md, "Full Cluster Autoscaler Features Policy".
README_ACTIONS = STAR_ONLY_READ_ACTIONS | {
    "eks:DescribeNodegroup",
    "autoscaling:SetDesiredCapacity",
    "autoscaling:TerminateInstanceInAutoScalingGroup",
}
WRITES = {"autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"}


def test_autoscaler_policy_is_the_readme_policy_narrowed_to_this_cluster():
    policy = _data("cluster_autoscaler")
    role_policy = _resources(ADDONS / "main.tf", "aws_iam_role_policy")["cluster_autoscaler"]
    assert role_policy["policy"] == "${data.aws_iam_policy_document.cluster_autoscaler.json}"
    granted: dict[str, list[dict[str, Any]]] = {}
    for st in policy["statement"]:
        assert unquote(st.get("effect", '"Allow"')) == "Allow"
        for action in st["actions"]:
            granted.setdefault(unquote(action), []).append(st)
    # Everything the autoscaler calls, nothing else.
    assert set(granted) == README_ACTIONS
    for action, statements in granted.items():
        for st in statements:
            resources = [unquote(r) for r in st["resources"]]
            if action in WRITES:
                # Only the Auto Scaling groups of this cluster's managed node groups: EKS tags
                # them eks:cluster-name (cluster-autoscaler reads that tag back, aws_manager.go).
                assert all(":autoScalingGroup:" in r for r in resources), resources
                conditions = {
                    (unquote(c["variable"]), unquote(c["test"])): [unquote(v) for v in c["values"]]
                    for c in st["condition"]
                }
                key = ("aws:ResourceTag/eks:cluster-name", "StringEquals")
                assert conditions.get(key) == ["${var.cluster_name}"], conditions
            elif action == "eks:DescribeNodegroup":
                assert all("nodegroup/${var.cluster_name}/" in r for r in resources), resources
            else:
                assert action.split(":")[1].startswith(("Describe", "Get")), f"{action} is not read-only"
