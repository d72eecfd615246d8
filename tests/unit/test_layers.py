"""The wings of job/ and what each may import, checked on the real imports of every module.

Every `import` and `from ... import` in job/ counts, including those inside functions and
under `if TYPE_CHECKING:`. A module may import its own wing and wings of a lower rank
(nothing imports upward or sideways), and the frameworks only where their wing says. A new module must
match a rule, so placing it in a wing is a decision, not an accident. docs/architecture.md's
wing table is checked against the same rules.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "job"


@dataclass(frozen=True)
class Wing:
    folder: str  # as the docs name it
    patterns: tuple[str, ...]  # module names (fnmatch-like: a trailing .* matches submodules)
    rank: int


# Lowest first. Within a wing anything goes; across wings only to a lower rank.
WINGS = (
    # Shared by everyone, so they may import nothing of ours but each other.
    Wing("foundation", ("job.errors", "job.config", "job.console", "job.progress"), 0),
    # Object storage and the run folder: everything that keeps bytes.
    Wing("job/storage/", ("job.storage", "job.storage.*"), 1),
    # Data sets and the tf.data pipeline; telemetry sits beside it (both only need storage).
    Wing("job/data/", ("job.data", "job.data.*"), 2),
    Wing("job/telemetry.py", ("job.telemetry",), 2),
    # The model and one worker's training; talks out through objects passed in.
    Wing("job/training/", ("job.training", "job.training.*"), 3),
    # Judging and exporting a trained run needs the model, not the run orchestration.
    Wing("job/evaluation/", ("job.evaluation", "job.evaluation.*"), 4),
    # Around every run: plan, checks, outputs, the single-process path.
    Wing("job/launch/", ("job.launch", "job.launch.*"), 5),
    # Ray: the distributed path builds on launch.
    Wing("job/cluster/", ("job.cluster", "job.cluster.*"), 6),
    Wing("job/experiments/", ("job.experiments", "job.experiments.*"), 7),
    # The command line wires everything together.
    Wing("job/cli/", ("job", "job.__main__", "job.cli", "job.cli.*"), 8),
)

# Third-party packages that only one wing may import (TensorFlow code thus never touches them).
FRAMEWORK_OWNERS = {
    "ray": "job/cluster/",  # one place to change when Ray's API moves
    "boto3": "job/storage/",
    "botocore": "job/storage/",
    "moto": "job/storage/",
    "pyarrow.fs": "job/storage/",  # plain pyarrow (Parquet) is fine anywhere
    "prometheus_client": "job/telemetry.py",
}


def wing_of(module: str) -> Wing | None:
    for wing in WINGS:
        for pattern in wing.patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return wing
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in `source`, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                # `from job.data import shards` imports the submodule job.data.shards;
                # `from pyarrow import fs` imports pyarrow.fs (a framework some wing owns).
                if candidate.startswith("job."):
                    is_submodule = _exists(candidate, root)
                else:
                    is_submodule = any(candidate == f or candidate.startswith(f + ".") for f in FRAMEWORK_OWNERS)
                found.append((node.lineno, candidate if is_submodule else base))
    return found


def _exists(module: str, root: Path) -> bool:
    path = root.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(root: Path) -> list[str]:
    """Every forbidden edge under the package folder `root`, as 'file:line: what'."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        wing = wing_of(module)
        where = f"{path.relative_to(root.parent)}"
        if wing is None:
            problems.append(f"{where}: module {module} is in no wing; add it to WINGS in tests/unit/test_layers.py")
            continue
        for line, imported in imports_of(path.read_text(), module, path.name == "__init__.py", root):
            for framework, owner in FRAMEWORK_OWNERS.items():
                if (imported == framework or imported.startswith(framework + ".")) and wing.folder != owner:
                    problems.append(f"{where}:{line}: imports {imported}; only {owner} may")
            if imported == "job" or imported.startswith("job."):
                target = wing_of(imported)
                if target is None:
                    problems.append(f"{where}:{line}: imports {imported}, which is in no wing")
                elif target.rank > wing.rank or (target.rank == wing.rank and target != wing):
                    problems.append(f"{where}:{line}: imports {imported} ({target.folder}) upward from {wing.folder}")
    return problems


def test_no_module_imports_upward_or_a_framework_it_does_not_own():
    assert violations(PACKAGE) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "job"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checker_reports_forbidden_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "training/__init__.py": "",
            "training/loop.py": "def f():\n    import ray\n",  # nested, still counted
            "data/__init__.py": "",
            "data/shards.py": "from job.cli import main\nfrom pyarrow import fs\n",
            "cli/__init__.py": "def main(): pass\n",
            "telemetry.py": "import boto3\n",
            "evaluation/__init__.py": "",
            "evaluation/report.py": "from ..training import loop\nfrom job.cluster import driver\n",
            "cluster/__init__.py": "",
            "cluster/driver.py": "",
            "misc.py": "",
        },
    )
    found = "\n".join(violations(root))
    assert "job/training/loop.py:2: imports ray; only job/cluster/ may" in found
    assert "job/data/shards.py:1: imports job.cli (job/cli/) upward from job/data/" in found
    assert "job/data/shards.py:2: imports pyarrow.fs; only job/storage/ may" in found
    assert "job/telemetry.py:1: imports boto3; only job/storage/ may" in found
    assert "job/evaluation/report.py:2: imports job.cluster.driver (job/cluster/) upward" in found
    assert "module job.misc is in no wing" in found
    # A relative import of a lower wing is fine.
    assert "report.py:1" not in found


def test_the_checker_accepts_downward_and_same_wing_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "errors.py": "",
            "storage/__init__.py": "import boto3\nfrom job.errors import UserError\n",
            "data/__init__.py": "",
            "data/shards.py": "from job import storage\nimport pyarrow.parquet\nfrom pyarrow import parquet\n",
            "data/pipeline.py": "from job.data import shards\nimport tensorflow\n",
        },
    )
    assert violations(root) == []


# ---------------------------------------------------------------------------- docs/architecture.md


def _doc_wing_rows() -> dict[str, str]:
    """{wing folder: its "may import" cell} from the wing table of docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"`[^`]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[-1]
    return rows


def test_the_architecture_doc_lists_every_wing_with_the_wings_it_may_import():
    rows = _doc_wing_rows()
    for wing in WINGS:
        assert wing.folder in rows, f"docs/architecture.md has no row for {wing.folder}"
        allowed = {w.folder for w in WINGS if w.rank < wing.rank}
        named = set(re.findall(r"`([^`]+)`", rows[wing.folder]))
        assert named == allowed, (
            f"docs/architecture.md says {wing.folder} may import {sorted(named)}; the rules say {sorted(allowed)}"
        )


@pytest.mark.parametrize("wing", [w for w in WINGS if w.folder.endswith("/")], ids=lambda w: w.folder)
def test_every_wing_folder_says_what_lives_there(wing):
    init = REPO / wing.folder / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and "May import" in doc, f"{init} needs a docstring saying what lives there and what it may import"
