"""The Terraform under infra/, parsed with python-hcl2 (no terraform binary needed)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2

from .helpers import REPO, STAR_ONLY_READ_ACTIONS, unquote

INFRA = REPO / "infra"
TF_FILES = sorted(INFRA.rglob("*.tf"))


def _load(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return hcl2.load(f)


def _blocks(doc: dict[str, Any], kind: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(type, name, body) of every `kind "type" "name" {}` block (resource, data)."""
    for entry in doc.get(kind, []):
        for typ, named in entry.items():
            for name, body in named.items():
                yield unquote(typ), unquote(name), body


def _all(kind: str, typ: str) -> list[tuple[Path, str, dict[str, Any]]]:
    return [(p, n, b) for p in TF_FILES for t, n, b in _blocks(_load(p), kind) if t == typ]


def test_every_file_parses_and_modules_have_the_standard_files():
    assert TF_FILES, "no Terraform under infra/"
    for path in TF_FILES:
        _load(path)
    modules = [p for p in (INFRA / "modules").iterdir() if p.is_dir()]
    assert {m.name for m in modules} >= {"eks", "storage", "irsa", "ecr", "addons"}
    for folder in modules + [INFRA / "envs" / "dev"]:
        for name in ("main.tf", "variables.tf", "outputs.tf", "versions.tf"):
            assert (folder / name).is_file(), f"{folder.relative_to(REPO)} lacks {name}"


def test_every_variable_has_a_type_and_a_description():
    count = 0
    for path in TF_FILES:
        for entry in _load(path).get("variable", []):
            for name, body in entry.items():
                count += 1
                where = f"{path.relative_to(REPO)}: variable {unquote(name)}"
                assert body.get("type"), f"{where} has no type"
                assert len(unquote(body.get("description", "")).strip()) >= 10, f"{where} has no description"
    assert count >= 20


def test_every_output_has_a_description():
    for path in TF_FILES:
        for entry in _load(path).get("output", []):
            for name, body in entry.items():
                assert unquote(body.get("description", "")).strip(), f"{path}: output {unquote(name)}"


def _statements(body: dict[str, Any]) -> list[dict[str, Any]]:
    return body.get("statement", [])


def test_no_iam_policy_grants_s3_star_or_star_resources():
    documents = _all("data", "aws_iam_policy_document")
    assert documents
    for path, name, body in documents:
        for st in _statements(body):
            if unquote(st.get("effect", '"Allow"')) != "Allow":
                continue  # a Deny on s3:* (TLS-only bucket policy) takes rights away
            actions = [unquote(a) for a in st.get("actions", [])]
            resources = [unquote(r) for r in st.get("resources", [])]
            assert "s3:*" not in actions and "*" not in actions, f"{path}: {name} allows {actions}"
            assert not any(a.endswith("*") for a in actions), f"{path}: {name} allows a wildcard action {actions}"
            if "*" in resources:
                extra = set(actions) - STAR_ONLY_READ_ACTIONS
                assert not extra, f"{path}: {name} allows {sorted(extra)} on resource *"
    # Policies written as JSON (jsonencode) grant no S3 rights at all: only KMS key policies are.
    for path in TF_FILES:
        for block in re.findall(r"jsonencode\((.*?)\n  \}\)", path.read_text(), re.S):
            assert "s3:" not in block, path


def test_job_role_reads_datasets_and_writes_runs_only():
    ((path, _, body),) = [d for d in _all("data", "aws_iam_policy_document") if d[1] == "job"]
    by_action: dict[str, list[str]] = {}
    for st in _statements(body):
        assert unquote(st.get("effect", '"Allow"')) == "Allow"
        for action in st["actions"]:
            by_action.setdefault(unquote(action), []).extend(unquote(r) for r in st["resources"])
    s3 = {a: r for a, r in by_action.items() if a.startswith("s3:")}
    assert set(s3) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
    datasets, runs = "${var.bucket_arn}/${var.datasets_prefix}/*", "${var.bucket_arn}/${var.runs_prefix}/*"
    assert sorted(s3["s3:GetObject"]) == sorted([datasets, runs])
    for write in ("s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
        assert s3[write] == [runs], f"{write} reaches beyond the runs prefix: {s3[write]}"
    # ListBucket only under the two prefixes.
    (listing,) = [st for st in _statements(body) if [unquote(a) for a in st["actions"]] == ["s3:ListBucket"]]
    (cond,) = listing["condition"]
    assert unquote(cond["variable"]) == "s3:prefix" and unquote(cond["test"]) == "StringLike"
    assert {unquote(v).split("/")[0] for v in cond["values"]} == {"${var.datasets_prefix}", "${var.runs_prefix}"}
    # Only the job's ServiceAccount may take the role.
    ((_, _, trust),) = [d for d in _all("data", "aws_iam_policy_document") if d[1] == "trust"]
    subs = [c for st in _statements(trust) for c in st["condition"] if unquote(c["variable"]).endswith(":sub")]
    assert [unquote(v) for v in subs[0]["values"]] == ["system:serviceaccount:${var.namespace}:${var.service_account}"]


def test_bucket_is_encrypted_versioned_private_tls_only_and_expires_old_versions():
    resources = {t for p in TF_FILES for t, _, _ in _blocks(_load(p), "resource")}
    assert {
        "aws_s3_bucket",
        "aws_s3_bucket_server_side_encryption_configuration",
        "aws_s3_bucket_versioning",
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_policy",
        "aws_s3_bucket_lifecycle_configuration",
    } <= resources
    ((_, _, pab),) = _all("resource", "aws_s3_bucket_public_access_block")
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"):
        assert pab[flag] is True, flag
    ((_, _, ver),) = _all("resource", "aws_s3_bucket_versioning")
    assert unquote(ver["versioning_configuration"][0]["status"]) == "Enabled"
    ((_, _, sse),) = _all("resource", "aws_s3_bucket_server_side_encryption_configuration")
    algo = unquote(sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"])
    assert algo in ("aws:kms", "AES256")
    ((_, _, pol),) = [d for d in _all("data", "aws_iam_policy_document") if d[1] == "bucket"]
    deny = [st for st in _statements(pol) if unquote(st.get("effect")) == "Deny"]
    assert any(
        unquote(c["variable"]) == "aws:SecureTransport" and [unquote(v) for v in c["values"]] == ["false"]
        for st in deny
        for c in st["condition"]
    )
    ((_, _, life),) = _all("resource", "aws_s3_bucket_lifecycle_configuration")
    assert any(
        "noncurrent_version_expiration" in rule
        and unquote(rule["filter"][0]["prefix"]).startswith("${var.runs_prefix}")
        for rule in life["rule"]
    )


def test_cluster_has_oidc_a_cpu_group_and_a_gpu_group_from_zero():
    assert _all("resource", "aws_iam_openid_connect_provider")
    groups = {n: b for _, n, b in _all("resource", "aws_eks_node_group")}
    assert set(groups) == {"system", "gpu"}
    gpu = groups["gpu"]
    assert "NVIDIA" in unquote(gpu["ami_type"])
    assert gpu["scaling_config"][0]["min_size"] == 0
    # (Who sizes it: tests/deploy/test_autoscaling.py.)
    assert any(unquote(t["key"]) == "nvidia.com/gpu" and unquote(t["effect"]) == "NO_SCHEDULE" for t in gpu["taint"])
    assert "NVIDIA" not in unquote(groups["system"]["ami_type"])


def test_addons_install_kuberay_and_kube_prometheus_stack():
    charts = {unquote(b["chart"]): b for _, _, b in _all("resource", "helm_release")}
    assert {"kuberay-operator", "kube-prometheus-stack", "nvidia-device-plugin", "cluster-autoscaler"} <= set(charts)
    for chart in charts.values():
        assert unquote(chart["version"]).startswith("${var."), "chart versions are variables, pinned by default"


def test_dev_outputs_feed_the_aws_overlay():
    outputs = {unquote(n) for e in _load(INFRA / "envs/dev/outputs.tf")["output"] for n in e}
    assert {"job_role_arn", "bucket_name", "ecr_repository_url", "region"} <= outputs
    # (k8s/overlays/aws/environment.sh reads them: tests/deploy/test_aws_environment.py runs it.)
    modules = {unquote(n): b for e in _load(INFRA / "envs/dev/main.tf")["module"] for n, b in e.items()}
    for name, body in modules.items():
        assert (INFRA / "envs/dev" / unquote(body["source"])).resolve().is_dir(), name
    # The role trusts the ServiceAccount the manifests use.
    assert unquote(modules["irsa"]["namespace"]) == "multilabel"
    assert unquote(modules["irsa"]["service_account"]) == "multilabel-job"
    # Every variable a module requires (no default) is passed by the dev environment.
    for name, body in modules.items():
        folder = (INFRA / "envs/dev" / unquote(body["source"])).resolve()
        for entry in _load(folder / "variables.tf").get("variable", []):
            for var, spec in entry.items():
                if "default" not in spec:
                    assert unquote(var) in body, (
                        f"module {name} needs {unquote(var)}, which infra/envs/dev does not pass"
                    )
        for arg in body:
            if arg not in ("source", "depends_on", "providers") and not arg.startswith("__"):
                known = {unquote(v) for e in _load(folder / "variables.tf").get("variable", []) for v in e}
                assert arg in known, f"infra/envs/dev passes {arg} to module {name}, which has no such variable"
    # The addons module scales this cluster's node groups.
    assert unquote(modules["addons"]["cluster_name"]) == "${module.eks.cluster_name}"


def test_providers_used_by_modules_are_configured_and_required():
    """A module resource of a provider the environment neither requires nor configures fails
    at `terraform init`/`plan` (e.g. kubernetes_storage_class_v1 without a kubernetes provider)."""
    required = {}
    for versions in INFRA.rglob("versions.tf"):
        for block in _load(versions).get("terraform", []):
            for rp in block.get("required_providers", []):
                required[versions.parent] = {k for k in rp if not k.startswith("__")}
    dev = INFRA / "envs/dev"
    configured = {unquote(k) for e in _load(dev / "main.tf").get("provider", []) for k in e}
    for folder in [dev, *(INFRA / "modules").iterdir()]:
        used = {
            t.split("_")[0]
            for p in folder.glob("*.tf")
            for kind in ("resource", "data")
            for t, _, _ in _blocks(_load(p), kind)
        }
        assert used <= required.get(folder, set()), (
            f"{folder.relative_to(REPO)} uses {used - required.get(folder, set())} without requiring them"
        )
        assert used <= required[dev], f"infra/envs/dev does not require {used - required[dev]}"
    # Each needs a provider block with the cluster's endpoint and credentials (tls needs none).
    assert required[dev] - {"tls"} <= configured, f"infra/envs/dev configures no {required[dev] - {'tls'} - configured}"
