"""TensorFlow's fast CPU kernels (oneDNN) are on in every process that imports the job, on any x86 CPU.

TensorFlow enables oneDNN by itself only on CPUs with AVX-512 VNNI/BF16 or AMX; on an AVX2
AMD EPYC the demo model's epoch is 2.6x slower without it (docs/performance.md "oneDNN").
"""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = (
    "import job\nfrom tensorflow.python.util import _pywrap_util_port as port\nprint('onednn', port.IsMklEnabled())\n"
)


def env_without_the_setting() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}


def onednn_in_fresh_process(env_value: str | None) -> bool:
    env = env_without_the_setting()
    if env_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("onednn "))
    return line.split()[1] == "True"


def test_importing_the_job_turns_onednn_on_and_passes_it_to_child_processes():
    assert onednn_in_fresh_process(None)
    # The setting is in the environment, so a local Ray's workers (children of the driver) get it too.
    child = "import os; print('onednn', os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1')"
    code = f"import job, subprocess, sys; sys.exit(subprocess.call([sys.executable, '-c', {child!r}]))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env_without_the_setting(), capture_output=True, text=True, timeout=120
    ).stdout
    assert "onednn True" in out


def test_a_users_own_choice_is_kept():
    assert not onednn_in_fresh_process("0")
