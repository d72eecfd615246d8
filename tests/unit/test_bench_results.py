"""bench/results.json, when present, follows the benchmark output contract in DESIGN.md.

A structure check only: every contract key is there and every figure is a positive number.
Whether a ratio meets its target is the benchmark's own report (bench/results.md), not a
test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.cli import require

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results.json"
IMAGES_PER_SECOND = ("decode_ceiling", "local_tfrecord", "local_parquet", "s3_tfrecord", "s3_parquet")
RATIOS = ("local_over_decode", "s3_over_local", "parquet_over_tfrecord", "trainer_over_fit", "checkpoint_over_epoch")


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def results() -> dict:
    require(RESULTS.is_file(), "bench/results.json is absent; run `make bench` to create it")
    return json.loads(RESULTS.read_text())


def test_results_have_the_contract_header(results):
    assert isinstance(results["date"], str) and results["date"][:2] == "20"
    machine = results["machine"]
    assert isinstance(machine["cores"], int) and machine["cores"] > 0
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    assert "gpu" in machine and (machine["gpu"] is None or isinstance(machine["gpu"], str))
    assert _positive(results["image_size"])


@pytest.mark.parametrize("key", IMAGES_PER_SECOND)
def test_every_throughput_is_a_positive_number(results, key):
    assert _positive(results["images_per_second"][key]), results["images_per_second"]


@pytest.mark.parametrize("key", RATIOS)
def test_every_ratio_is_a_positive_number(results, key):
    assert _positive(results["ratios"][key]), results["ratios"]


def test_peak_rss_is_a_positive_byte_count(results):
    assert _positive(results["peak_rss_bytes"]) and results["peak_rss_bytes"] > 2**20


def test_results_file_stays_small():
    require(RESULTS.is_file(), "bench/results.json is absent; run `make bench` to create it")
    assert RESULTS.stat().st_size < 20_000  # seven sections, each with its per-pair figures
