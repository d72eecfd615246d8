"""One tiny trained run shared by the evaluation, export and predict tests.

Trained once per test session, on first use, by whichever module asks first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cli import run_cli


def shared_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run) of the session's tiny trained run (200 images, 2 local epochs)."""
    base = tmp_path_factory.getbasetemp() / "shared-evaluation-run"
    data, run = base / "data", base / "run"
    if not (base / "ready").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir()
        run_cli("synth", "--out", str(data), "--num-images", "200", "--quiet", timeout=300, check=True)
        run_cli(
            "train",
            "--local",
            "--config",
            "configs/demo.yaml",
            "--data",
            str(data),
            "--output",
            str(run),
            "--set",
            "training.epochs=2",
            "--set",
            "telemetry.enabled=false",
            "--set",
            "training.tensorboard=false",
            timeout=300,
            check=True,
        )
        (base / "ready").touch()
    return data, run
