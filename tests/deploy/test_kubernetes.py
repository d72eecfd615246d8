"""The rendered Kubernetes manifests: schema-valid, secure, and wired the way the job needs."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from job import config
from tests.cli import require

from .helpers import (
    OVERLAYS,
    REPO,
    SCHEMAS,
    TARGETS,
    all_pod_templates,
    containers,
    objects,
    one,
)

K8S_VERSION = "1.32.0"
CUSTOM_KINDS = {
    "RayJob": "kuberay/ray.io_rayjobs.yaml",
    "RayCluster": "kuberay/ray.io_rayclusters.yaml",
    "PodMonitor": "prometheus-operator/monitoring.coreos.com_podmonitors.yaml",
    "ServiceMonitor": "prometheus-operator/monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "prometheus-operator/monitoring.coreos.com_prometheusrules.yaml",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "RayJob"}


# ------------------------------------------------------------------ rendering and schemas


@pytest.mark.parametrize("target", TARGETS)
def test_target_renders_the_job(rendered, target):
    kinds = {d["kind"] for d in rendered[target]}
    assert {"Namespace", "ServiceAccount", "NetworkPolicy", "RayJob", "ConfigMap"} <= kinds
    # k8s/monitoring comes in through the base.
    assert {"PodMonitor", "PrometheusRule"} <= kinds
    # Every namespaced object lands in the job's namespace (the PodMonitor only sees pods
    # in its own namespace).
    for doc in rendered[target]:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "multilabel", f"{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_core_objects_are_valid_kubernetes(rendered, target):
    checked = 0
    for doc in rendered[target]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{target}: {doc['kind']}/{doc['metadata']['name']} is invalid for "
                f"Kubernetes {K8S_VERSION}: {exc.message} at {list(exc.path)}"
            )
        checked += 1
    assert checked >= 5


@functools.cache
def _crd_schema(kind: str) -> dict[str, Any]:
    path = SCHEMAS / CUSTOM_KINDS[kind]
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields where the API server would (strict field validation), so a
    misspelt field fails here instead of being dropped silently in the cluster."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for key, value in schema.items():
            if key in ("properties", "patternProperties"):
                for sub in value.values():
                    _closed(sub)
            elif isinstance(value, dict):
                _closed(value)
            elif isinstance(value, list):
                for item in value:
                    _closed(item)
    return schema


@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_match_their_crd_schema(rendered, target):
    require(
        SCHEMAS.is_dir(),
        f"CRD schemas not found at {SCHEMAS} (shared/schemas beside the repo); "
        "cannot validate RayJob/PodMonitor/PrometheusRule",
    )
    custom = [d for d in rendered[target] if d["kind"] in CUSTOM_KINDS]
    assert {d["kind"] for d in custom} >= {"RayJob", "PodMonitor", "PrometheusRule"}
    for doc in custom:
        validator = jsonschema.Draft7Validator(_crd_schema(doc["kind"]))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
        assert not errors, f"{target}: {doc['kind']}/{doc['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )


def test_crd_validation_catches_a_misspelt_field(rendered):
    """The CRD check above must be able to fail."""
    require(SCHEMAS.is_dir(), f"CRD schemas not found at {SCHEMAS}")
    rayjob = copy.deepcopy(one(rendered["base"], "RayJob"))
    rayjob["spec"]["shutdownAfterJobFinish"] = True
    rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
    errors = list(jsonschema.Draft7Validator(_crd_schema("RayJob")).iter_errors(rayjob))
    assert len(errors) >= 2


# ------------------------------------------------------------------------------ security


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_runs_restricted(rendered, target):
    templates = all_pod_templates(rendered[target])
    workloads = [d for d in rendered[target] if d["kind"] in WORKLOAD_KINDS]
    assert templates and len(templates) >= len(workloads)
    for label, template in templates:
        pod = template["spec"].get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, f"{label}: pod runAsNonRoot"
        assert isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] >= 10000, f"{label}: numeric UID"
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{label}: pod seccomp"
        assert template["spec"].get("automountServiceAccountToken") is False, f"{label}: SA token mounted"
        assert not template["spec"].get("hostNetwork") and not template["spec"].get("hostPID")
        for c in containers(template):
            where = f"{label} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities"
            assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
            assert sc.get("privileged") in (None, False), f"{where}: privileged"
            assert sc.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
            assert sc.get("seccompProfile", pod.get("seccompProfile", {})).get("type") == "RuntimeDefault"
            assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            limits = c.get("resources", {}).get("limits", {})
            assert "memory" in limits and "cpu" in limits, f"{where}: resource limits"
            assert "memory" in c.get("resources", {}).get("requests", {}), f"{where}: requests"


@pytest.mark.parametrize("target", TARGETS)
def test_namespace_enforces_restricted_pod_security(rendered, target):
    ns = one(rendered[target], "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("target", TARGETS)
def test_nothing_is_exposed_outside_the_cluster(rendered, target):
    for svc in objects(rendered[target], "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", svc["metadata"]["name"]
    for rayjob in objects(rendered[target], "RayJob"):
        head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]
        assert head.get("serviceType") == "ClusterIP"
    assert not objects(rendered[target], "Ingress")


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_values_in_the_manifests(rendered, rendered_text, target):
    # Secrets are created by the user with kubectl, never rendered from git.
    assert not objects(rendered[target], "Secret")
    for _, template in all_pod_templates(rendered[target]):
        for c in containers(template):
            for env in c.get("env", []):
                if re.search(r"KEY|SECRET|TOKEN|PASSWORD", env["name"]) and env["name"] != "RAY_AUTH_MODE":
                    assert "value" not in env, f"{c['name']}: {env['name']} is inline"
    for cm in objects(rendered[target], "ConfigMap"):
        assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)", str(cm.get("data")))
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", rendered_text[target])


def test_no_credentials_in_deploy_files():
    tops = ("k8s/base", "k8s/overlays", "infra")
    paths = [p for top in tops for p in (REPO / top).rglob("*") if p.is_file()]
    paths += [REPO / "Dockerfile", REPO / "docs" / "deploy.md"]
    for path in [p for p in paths if p.exists()]:
        text = path.read_text(errors="replace")
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), path
        # A literal secret key (40 base64 characters), not a $VARIABLE or a placeholder.
        assert not re.search(r"secret_access_key\W{1,4}[A-Za-z0-9/+]{40}\b", text, re.I), path


# ------------------------------------------------------------------------------ the RayJob


def _rayjob(rendered, target) -> dict[str, Any]:
    return one(rendered[target], "RayJob")


def _ray_containers(rayjob) -> list[tuple[str, dict[str, Any]]]:
    spec = rayjob["spec"]
    cluster = spec["rayClusterSpec"]
    out = [("head", cluster["headGroupSpec"]["template"]["spec"]["containers"][0])]
    out += [(g["groupName"], g["template"]["spec"]["containers"][0]) for g in cluster["workerGroupSpecs"]]
    out += [("submitter", spec["submitterPodTemplate"]["spec"]["containers"][0])]
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_rayjob_cleans_up_and_retries(rendered, target):
    spec = _rayjob(rendered, target)["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert 0 < spec["ttlSecondsAfterFinished"] <= 24 * 3600
    assert spec["backoffLimit"] >= 1
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"
    # A cluster that never starts (unpullable image, unschedulable pods) fails early.
    assert 0 < spec["preRunningDeadlineSeconds"] < spec["activeDeadlineSeconds"]


@pytest.mark.parametrize("target", TARGETS)
def test_rayjob_run_name_is_stable_so_retries_resume(rendered, target):
    argv = _rayjob(rendered, target)["spec"]["entrypoint"].split()
    output = argv[argv.index("--output") + 1]
    data = argv[argv.index("--data") + 1]
    assert re.fullmatch(r"s3://[^/]+/runs/[a-z0-9][a-z0-9._-]*", output), output
    assert re.fullmatch(r"s3://[^/]+/datasets/[a-z0-9][a-z0-9._-]*", data), data
    # No shell expansion or timestamps: the same RayJob always names the same run.
    assert not re.search(r"[$`]|date|\{\{", " ".join(argv))


@pytest.mark.parametrize("target", TARGETS)
def test_the_driver_s_lease_chain_is_this_rayjob(rendered, target):
    # The driver runs on the head; its JOB_RUN_CHAIN lets a KubeRay retry of this RayJob take
    # over the lease at once. It must name this RayJob and no other: a renamed or prefixed
    # copy with the old chain would take over a live run's lease.
    rayjob = _rayjob(rendered, target)
    head = dict(_ray_containers(rayjob))["head"]
    env = {e["name"]: e.get("value") for e in head.get("env", [])}
    meta = rayjob["metadata"]
    assert env.get("JOB_RUN_CHAIN") == f"{meta['namespace']}/{meta['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_rayjob_config_file_is_the_mounted_configmap(rendered, target):
    rayjob = _rayjob(rendered, target)
    argv = rayjob["spec"]["entrypoint"].split()
    config_path = Path(argv[argv.index("--config") + 1])
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["mountPath"] == str(config_path.parent))
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    cm_name = volume["configMap"]["name"]
    cm = next(c for c in objects(rendered[target], "ConfigMap") if c["metadata"]["name"] == cm_name)
    assert config_path.name in cm["data"], f"{cm_name} has no key {config_path.name}"


@pytest.mark.parametrize("target", TARGETS)
def test_rayjob_train_config_loads_with_the_job(rendered, target, tmp_path):
    rayjob = _rayjob(rendered, target)
    argv = rayjob["spec"]["entrypoint"].split()
    key = Path(argv[argv.index("--config") + 1]).name
    cm = next(c for c in objects(rendered[target], "ConfigMap") if key in c.get("data", {}))
    path = tmp_path / key
    path.write_text(cm["data"][key])
    cfg = config.load_config(path)
    workers = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = sum(
        int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) * g["replicas"]
        for g in workers
    )
    # The config asks for what the worker group provides.
    assert cfg.scaling.use_gpu is (gpus > 0)
    if cfg.scaling.use_gpu:
        assert cfg.scaling.num_workers * cfg.scaling.gpus_per_worker <= gpus
    # The pods declare the ports the config serves metrics on.
    head_ports = {
        p["containerPort"]
        for p in rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    worker_ports = {p["containerPort"] for g in workers for p in g["template"]["spec"]["containers"][0]["ports"]}
    assert cfg.telemetry.driver_port in head_ports
    assert cfg.telemetry.worker_port_base in worker_ports


@pytest.mark.parametrize("target", TARGETS)
def test_rayjob_uses_ray_token_auth_from_a_secret(rendered, target):
    """Token auth through authOptions only. KubeRay v1.6.2 (common/pod.go
    SetContainerTokenAuthEnvVars) gives the Ray containers and the submitter RAY_AUTH_MODE
    and RAY_AUTH_TOKEN from the Secret, but only where a container does not set them itself:
    a hand-written copy would silently win over authOptions, so none may be there. (That
    the token then works end to end is the KubeRay emulation test's job.)"""
    rayjob = _rayjob(rendered, target)
    auth = rayjob["spec"]["rayClusterSpec"]["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    for role, c in _ray_containers(rayjob):
        hand_written = {e["name"] for e in c.get("env", [])} & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
        assert not hand_written, f"{role} sets {hand_written} itself; authOptions already does"


@pytest.mark.parametrize("target", TARGETS)
def test_ray_pods_have_shared_memory_and_writable_scratch(rendered, target):
    cluster = _rayjob(rendered, target)["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for group in groups:
        spec = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "emptyDir" in volumes[mounts["/tmp"]]


@pytest.mark.parametrize("target", TARGETS)
def test_ray_pods_get_s3_settings_from_secret_or_role_only(rendered, target):
    for role, c in _ray_containers(_rayjob(rendered, target)):
        names = {e["name"] for e in c.get("env", [])}
        assert not names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL"}, role
    for role, c in _ray_containers(_rayjob(rendered, target))[:-1]:
        refs = [e.get("secretRef", {}).get("name") for e in c.get("envFrom", [])]
        assert "multilabel-s3" in refs, role


def test_s3_endpoint_only_in_the_local_overlay(rendered_text):
    assert "S3_ENDPOINT_URL" in rendered_text["local"]
    assert "S3_ENDPOINT_URL" not in rendered_text["base"]
    assert "S3_ENDPOINT_URL" not in rendered_text["aws"]


@pytest.mark.parametrize("target", ["base", "aws"])
def test_gpu_workers_request_gpus_and_tolerate_the_taint(rendered, target):
    workers = _rayjob(rendered, target)["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    for group in workers:
        spec = group["template"]["spec"]
        limits = spec["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in spec["tolerations"])


def test_local_overlay_is_cpu_only_with_minio_and_demo_data(rendered):
    docs = rendered["local"]
    rayjob = one(docs, "RayJob")
    assert "nvidia.com/gpu" not in str(rayjob)
    assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "minio" for d in docs)
    assert any(d["kind"] == "PersistentVolumeClaim" for d in docs)
    svc = next(s for s in objects(docs, "Service") if s["metadata"]["name"] == "minio")
    storage = next(c for c in objects(docs, "ConfigMap") if "S3_ENDPOINT_URL" in c.get("data", {}))
    assert storage["data"]["S3_ENDPOINT_URL"] == (
        f"http://{svc['metadata']['name']}.multilabel.svc.cluster.local:{svc['spec']['ports'][0]['port']}"
    )
    job = next(j for j in objects(docs, "Job") if j["metadata"]["name"] == "minio-bucket-init")
    bucket = re.search(r"s3://([^/]+)/", rayjob["spec"]["entrypoint"]).group(1)
    assert f'bucket = "{bucket}"' in job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    init = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["initContainers"]
    data_uri = rayjob["spec"]["entrypoint"].split("--data")[1].split()[0]
    assert any(f"python -m job synth --out {data_uri}" in " ".join(c["command"]) for c in init)
    # Workers leave CPU for Ray Data: more CPUs per pod than the training worker takes.
    cfg = yaml.safe_load(
        next(c for c in objects(docs, "ConfigMap") if "train-config.yaml" in c.get("data", {}))["data"][
            "train-config.yaml"
        ]
    )
    worker_cpus = float(
        rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]["cpu"]
    )
    assert worker_cpus > cfg["scaling"]["cpus_per_worker"]


def test_aws_overlay_uses_irsa_gpu_nodes_and_ecr(rendered):
    docs = rendered["aws"]
    sa = one(docs, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in sa["metadata"]["annotations"]
    cluster = one(docs, "RayJob")["spec"]["rayClusterSpec"]
    for group in cluster["workerGroupSpecs"]:
        assert group["template"]["spec"]["nodeSelector"] == {"multilabel.io/pool": "gpu"}
    assert cluster["headGroupSpec"]["template"]["spec"]["nodeSelector"] == {"multilabel.io/pool": "system"}
    for _, template in all_pod_templates(docs):
        assert template["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    # The node pool labels are the ones Terraform puts on the node groups.
    eks = (REPO / "infra/modules/eks/main.tf").read_text()
    assert '"multilabel.io/pool" = "gpu"' in eks and '"multilabel.io/pool" = "system"' in eks


# ------------------------------------------------------------------------------ network


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        if expr["operator"] == "In" and labels.get(expr["key"]) not in expr["values"]:
            return False
    return True


@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_limits_ray_and_metrics_ports(rendered, target):
    docs = rendered[target]
    policies = objects(docs, "NetworkPolicy")
    assert any(
        p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and not p["spec"].get("ingress")
        for p in policies
    ), "no default deny"
    rayjob = one(docs, "RayJob")
    ray_labels = [t["metadata"]["labels"] for label, t in all_pod_templates([rayjob])]
    ray_policies = [
        p
        for p in policies
        if p["spec"]["podSelector"] and all(_selects(p["spec"]["podSelector"], lab) for lab in ray_labels)
    ]
    assert len(ray_policies) == 1
    rules = ray_policies[0]["spec"]["ingress"]
    for rule in rules:
        for peer in rule["from"]:
            assert "ipBlock" not in peer
            if "namespaceSelector" not in peer:
                # Same namespace: only the job's own Ray pods.
                assert all(_selects(peer["podSelector"], lab) for lab in ray_labels)
                assert not _selects(
                    peer["podSelector"],
                    {"app.kubernetes.io/name": "multilabel-job", "app.kubernetes.io/component": "minio"},
                )
    from_monitoring = [
        r
        for r in rules
        if any(
            p.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == "monitoring"
            for p in r["from"]
        )
    ]
    assert len(from_monitoring) == 1
    ports = from_monitoring[0]["ports"]
    assert [(p["port"], p.get("endPort", p["port"])) for p in ports] == [(9400, 9409), (8080, 8080)]
    # Anything from another namespace is limited to named ports.
    for rule in rules:
        if any("namespaceSelector" in p for p in rule["from"]):
            assert rule.get("ports"), rule


@pytest.mark.parametrize("target", TARGETS)
def test_podmonitor_finds_the_metrics_ports(rendered, target):
    docs = rendered[target]
    monitor = one(docs, "PodMonitor")
    rayjob = one(docs, "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]
    templates = [head] + [group["template"] for group in cluster["workerGroupSpecs"]]
    scraped = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    served: dict[str, set[int]] = {}
    for template in templates:
        assert _selects(monitor["spec"]["selector"], template["metadata"]["labels"])
        declared = template["spec"]["containers"][0].get("ports", [])
        # The job must leave the name `metrics` to KubeRay, which adds it (8080, Ray's own
        # metrics) to every Ray container that has no port of that name.
        assert "metrics" not in {p["name"] for p in declared}, "a job port named `metrics` hides Ray's metrics"
        for port in _with_kuberay_metrics_port(declared):
            served.setdefault(port["name"], set()).add(port["containerPort"])
    assert scraped <= set(served), f"PodMonitor scrapes ports {scraped - set(served)} no Ray pod has"
    assert set().union(*(served[name] for name in scraped)) >= {9400, 9401, 8080}


def _with_kuberay_metrics_port(ports: list[dict]) -> list[dict]:
    """A Ray container's ports as KubeRay creates the pod: a `metrics` port (8080) added when
    none has that name (ray-operator/controllers/ray/common/pod.go, DefaultMetricsPort)."""
    if any(p["name"] == "metrics" for p in ports):
        return ports
    return [*ports, {"name": "metrics", "containerPort": 8080}]


# ------------------------------------------------------------------------------ overlays' docs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_readme_says_how_to_apply_watch_and_fetch(overlay):
    text = (REPO / "k8s" / "overlays" / overlay / "README.md").read_text()
    assert f"kubectl apply -k k8s/overlays/{overlay}" in text
    # The Secrets are made by the user, with the names the manifests use.
    assert re.search(r"kubectl (-n multilabel )?create secret generic multilabel-ray-auth", text)
    if overlay == "local":
        assert re.search(r"kubectl (-n multilabel )?create secret generic multilabel-s3", text)
    for heading in ("Purpose", "Apply", "Watch", "Results", "Do not"):
        assert re.search(rf"^#+ .*{heading}", text, re.M | re.I), f"{overlay} README lacks '{heading}'"
