"""checkov on the rendered manifests, the Terraform and the Dockerfile: no failed check,
and every skipped check carries its reason where it is skipped.

checkov lives in its own virtualenv (.venv-checkov, made by scripts/install_deploy_tools.sh)
because it pins an old `packaging` that breaks pytest. It is slow, so it runs once per target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli import require, run_command

from .helpers import OVERLAYS, REPO

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"


def _checkov(args: list[str]) -> list[dict[str, Any]]:
    require(CHECKOV.exists(), f"checkov is not installed at {CHECKOV}: run `bash scripts/install_deploy_tools.sh`")
    proc = run_command(
        [str(CHECKOV), *args, "--output", "json", "--skip-download", "--download-external-modules", "false"],
        timeout=600,
        cwd=REPO,
    )
    # Exit 1 means failed checks; anything else non-zero is checkov itself failing.
    assert proc.returncode in (0, 1), f"checkov {args} crashed:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout) if proc.stdout.strip() else []
    reports = out if isinstance(out, list) else [out]
    assert reports, f"checkov {args} printed no report:\n{proc.stderr[-2000:]}"
    return reports


def _summary(reports: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]], int]:
    failed, skipped, passed = [], [], 0
    for report in reports:
        results = report.get("results", {})
        passed += report.get("summary", {}).get("passed", 0)
        failed += [
            f"{c['check_id']} {c['resource']} ({c.get('file_path')}): {c['check_name']}"
            for c in results.get("failed_checks", [])
        ]
        skipped += results.get("skipped_checks", [])
    return failed, skipped, passed


@pytest.fixture(scope="module")
def k8s_reports(rendered_text, tmp_path_factory) -> list[dict[str, Any]]:
    folder: Path = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        (folder / f"{overlay}.yaml").write_text(rendered_text[overlay])
    return _checkov(["--directory", str(folder), "--framework", "kubernetes"])


@pytest.fixture(scope="module")
def terraform_reports() -> list[dict[str, Any]]:
    return _checkov(["--directory", str(REPO / "infra"), "--framework", "terraform"])


@pytest.fixture(scope="module")
def dockerfile_reports() -> list[dict[str, Any]]:
    return _checkov(["--file", str(REPO / "Dockerfile"), "--framework", "dockerfile"])


@pytest.mark.parametrize("which", ["k8s_reports", "terraform_reports", "dockerfile_reports"])
def test_checkov_finds_no_failed_check(request, which):
    failed, skipped, passed = _summary(request.getfixturevalue(which))
    assert passed >= 20, f"checkov ran only {passed} checks: did it read the files?"
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)


@pytest.mark.parametrize("which", ["k8s_reports", "terraform_reports", "dockerfile_reports"])
def test_every_skipped_check_has_a_reason(request, which):
    _, skipped, _ = _summary(request.getfixturevalue(which))
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"


def test_checkov_fails_an_insecure_manifest(tmp_path):
    """The checkov wiring above must be able to fail."""
    (tmp_path / "bad.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: bad, namespace: multilabel}\n"
        "spec:\n  containers:\n    - name: c\n      image: busybox:1.36\n"
        "      securityContext: {privileged: true}\n"
    )
    failed, _, _ = _summary(_checkov(["--directory", str(tmp_path), "--framework", "kubernetes"]))
    assert any(f.startswith("CKV_K8S_16 ") for f in failed)
