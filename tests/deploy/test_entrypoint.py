"""The RayJob runs the same command as the README's `ray job submit` line."""

from __future__ import annotations

import re
import shlex

import pytest

from .helpers import REPO, one


def _fenced_lines(text: str) -> list[str]:
    """Command lines inside ``` fences, with backslash continuations joined."""
    lines: list[str] = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    return lines


def _job_command(argv: list[str]) -> tuple[list[str], set[str]]:
    """(program words up to the subcommand, option names) of `python -m job train ...`."""
    start = argv.index("python")
    words = argv[start : start + 4]
    options = {a.split("=")[0] for a in argv[start + 4 :] if a.startswith("--")}
    return words, options


@pytest.mark.parametrize("target", ["base", "local", "aws"])
def test_rayjob_entrypoint_is_the_train_command(rendered, target):
    argv = shlex.split(one(rendered[target], "RayJob")["spec"]["entrypoint"])
    words, options = _job_command(argv)
    assert words == ["python", "-m", "job", "train"]
    assert {"--config", "--data", "--output"} <= options


def test_rayjob_entrypoint_matches_the_readme_ray_job_submit_line(rendered):
    readme = REPO / "README.md"
    text = readme.read_text() if readme.exists() else ""
    submits = [line for line in _fenced_lines(text) if "ray job submit" in line and " -- " in line]
    # The README's submit line is what users copy; its absence is a broken README, not a skip.
    assert submits, "README.md has no fenced `ray job submit ... -- python -m job train ...` line"
    readme_argv = shlex.split(submits[0].split(" -- ", 1)[1])
    rayjob_argv = shlex.split(one(rendered["base"], "RayJob")["spec"]["entrypoint"])
    assert _job_command(readme_argv) == _job_command(rayjob_argv), (
        f"README runs {' '.join(readme_argv)!r}, the RayJob {' '.join(rayjob_argv)!r}"
    )
    # Same run layout: an s3:// run under runs/ (the run name may differ).
    for argv in (readme_argv, rayjob_argv):
        assert re.fullmatch(r"s3://[^/]+/runs/[^/]+", argv[argv.index("--output") + 1])
