"""`python -m job drain` (a worker pod's preStop hook) on bad input: one error line, quickly,
never a hang. Its real work is tested on the KubeRay emulation (test_preemption.py)."""

from __future__ import annotations

import os

import pytest

from tests.cli import assert_clean_error, run_cli

pytestmark = pytest.mark.integration


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **extra}


def test_no_ray_address_is_named():
    assert_clean_error(run_cli("drain", "--deadline-seconds", "30", env=_env(), timeout=60), "RAY_ADDRESS")


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:1", "192.0.2.1:6379", "no-such-host.invalid:6379"],
    ids=["refused", "unroutable", "unresolvable"],
)
def test_an_unreachable_head_fails_in_seconds(address):
    # The connect timeout is 5 s; ray.init alone would retry for minutes. The test's own
    # timeout (60 s) is the "never hangs" bound.
    result = run_cli("drain", "--deadline-seconds", "30", env=_env(RAY_ADDRESS=address), timeout=60)
    assert_clean_error(result, "Cannot reach the Ray head", address)


def test_a_deadline_that_is_not_positive_is_refused():
    assert_clean_error(run_cli("drain", "--deadline-seconds", "0", env=_env(), timeout=60), "--deadline-seconds")
