"""`terraform fmt` finds nothing to change under infra/ (alignment of `=` included).

Terraform is not installable on every dev/CI image (see DESIGN): without the binary this
test skips. It never needs providers or a network (`fmt` only parses).
"""

from __future__ import annotations

import shutil

import pytest

from tests.cli import run_command

from .helpers import REPO


def test_terraform_files_are_formatted():
    terraform = shutil.which("terraform")
    if not terraform:
        pytest.skip("terraform is not installed; `terraform fmt -check -recursive infra` could not run")
    proc = run_command([terraform, "fmt", "-check", "-recursive", "-diff", "-no-color", "infra"], cwd=REPO, timeout=120)
    assert proc.returncode == 0, f"`terraform fmt -recursive infra` would change these files:\n{proc.stdout[-4000:]}"
