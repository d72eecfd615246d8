"""Fixtures for the deployment tests: every kustomize target rendered once per session
(`kubectl kustomize`, offline)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from .helpers import TARGETS, render


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    """YAML text of k8s/base and of every overlay."""
    return {name: render(name) for name in TARGETS}


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Parsed objects of k8s/base and of every overlay."""
    return {name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered_text.items()}
