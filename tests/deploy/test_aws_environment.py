"""The aws overlay gets its environment's values from Terraform's outputs, with no tracked
file edited: `k8s/overlays/aws/environment.sh TAG [RUN] [DATASET]` writes the git-ignored
environment.env from `terraform output`, and kustomize's replacements put the values into
the rendered objects. Run here with a `terraform` stand-in that answers `output -raw NAME`
for the outputs infra/envs/dev really declares.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import hcl2
import pytest
import yaml

from tests.cli import run_command

from .helpers import REPO, one, render, unquote

SCRIPT = REPO / "k8s" / "overlays" / "aws" / "environment.sh"
OUTPUTS = REPO / "infra" / "envs" / "dev" / "outputs.tf"
# What `terraform output` would print for a made-up account.
FAKE_OUTPUTS = {
    "bucket_name": "multilabel-dev-210987654321",
    "ecr_repository_url": "210987654321.dkr.ecr.ap-south-1.amazonaws.com/multilabel-job",
    "job_role_arn": "arn:aws:iam::210987654321:role/multilabel-dev-job",
    "region": "ap-south-1",
}


def _declared_outputs() -> set[str]:
    with open(OUTPUTS) as f:
        return {unquote(name) for block in hcl2.load(f).get("output", []) for name in block}


@pytest.fixture
def fake_terraform(tmp_path):
    """A `terraform` on PATH that answers `-chdir=DIR output -raw NAME` for declared outputs only."""
    declared = _declared_outputs()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cases = "\n".join(f'  "{name}") printf %s "{value}" ;;' for name, value in FAKE_OUTPUTS.items() if name in declared)
    script = bin_dir / "terraform"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$2" = output ] && [ "$3" = -raw ] || { echo "unexpected: $*" >&2; exit 2; }\n'
        f'case "$4" in\n{cases}\n  *) echo "Error: Output \\"$4\\" not found" >&2; exit 1 ;;\nesac\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _write_environment(tmp_path, fake_terraform, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    overlay = tmp_path / "aws"
    shutil.copytree(SCRIPT.parent, overlay, ignore=shutil.ignore_patterns("environment.env"))
    env = {"PATH": f"{fake_terraform}{os.pathsep}{os.environ['PATH']}", "TF_DIR": str(REPO / "infra/envs/dev")}
    return run_command(["sh", str(overlay / "environment.sh"), *args], env=env, timeout=30), overlay


def test_environment_script_fills_every_value_from_terraform_outputs(tmp_path, fake_terraform):
    proc, overlay = _write_environment(tmp_path, fake_terraform, "0.2.1", "resnet-try2", "photos")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(render("aws", (overlay / "environment.env").read_text())) if d]
    account = "210987654321"
    rayjob = one(docs, "RayJob")
    cluster = rayjob["spec"]["rayClusterSpec"]
    images = [c["image"] for c in rayjob["spec"]["submitterPodTemplate"]["spec"]["containers"]]
    images += [c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    images += [c["image"] for g in cluster["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]]
    assert set(images) == {f"{FAKE_OUTPUTS['ecr_repository_url']}:0.2.1"}
    words = rayjob["spec"]["entrypoint"].split()
    assert words[words.index("--data") + 1] == f"s3://multilabel-dev-{account}/datasets/photos"
    assert words[words.index("--output") + 1] == f"s3://multilabel-dev-{account}/runs/resnet-try2"
    account_sa = one(docs, "ServiceAccount")
    assert account_sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == FAKE_OUTPUTS["job_role_arn"]
    storage_cm = [d for d in docs if d["metadata"]["name"].startswith("multilabel-storage")]
    assert [cm["data"]["AWS_REGION"] for cm in storage_cm] == ["ap-south-1"]
    # Nothing is left unfilled, and the values' carrier is not applied to the cluster.
    text = yaml.safe_dump_all(docs)
    assert "set-from-environment.env" not in text and "REPLACE_WITH" not in text
    assert not [d for d in docs if d["metadata"]["name"] == "aws-environment"]


def test_environment_script_fails_on_a_missing_terraform_output(tmp_path, fake_terraform):
    (fake_terraform / "terraform").write_text('#!/bin/sh\necho "Error: No outputs found" >&2\nexit 1\n')
    proc, overlay = _write_environment(tmp_path, fake_terraform, "0.2.1")
    assert proc.returncode != 0
    assert "No outputs found" in proc.stderr
    assert not (overlay / "environment.env").exists(), "a half-written environment.env was left behind"


def test_aws_overlay_without_environment_file_names_the_missing_file(tmp_path):
    copy = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", copy, ignore=shutil.ignore_patterns("environment.env"))
    proc = run_command(["kubectl", "kustomize", str(copy / "overlays" / "aws")], timeout=60)
    assert proc.returncode != 0 and "environment.env" in proc.stderr
