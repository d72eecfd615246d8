"""prepare into s3:// on the embedded S3 server, then `python -m job validate` on it.

Fixtures ``s3_server`` and ``bucket`` come from ``tests/s3_fixtures.py``; the commands run
as subprocesses that inherit the server's S3_ENDPOINT_URL and dummy keys.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from job import storage
from job.data import shards
from tests.cli import assert_clean_error, run_cli

pytestmark = pytest.mark.integration

LABELS = [
    "sea",
    "sea sunset",
    "trees",
    "",
    "sunset trees",
    "sea",
    "trees",
    "sunset",
    "sea trees",
    "sunset",
    "sea",
    "trees",
]


@pytest.fixture
def source(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    lines = ["image,labels"]
    for i, labels in enumerate(LABELS):
        name = f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        pixels = np.random.default_rng(i).integers(0, 255, size=(20, 30, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / name)
        lines.append(f"{name},{labels}")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return str(images), str(tmp_path / "labels.csv")


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_prepare_to_s3_then_validate_full_hash(source, bucket, fmt):
    images, csv_path = source
    uri = f"s3://{bucket}/datasets/mine"
    proc = run_cli(
        "prepare",
        "--images",
        images,
        "--labels",
        csv_path,
        "--out",
        uri,
        "--format",
        fmt,
        "--num-shards",
        "2",
        "--val-fraction",
        "0.25",
        "--test-fraction",
        "0.25",
        "--quiet",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {len(LABELS)} images (train 6, val 3, test 3) with 3 classes" in proc.stdout

    files = storage.list_files(uri)
    assert f"{uri}/dataset.json" in files
    assert sum(f.endswith(f".{fmt}") for f in files) == 4  # 2 train + 1 val + 1 test
    manifest = shards.load_manifest(uri)
    assert manifest.class_names == ["sea", "sunset", "trees"]

    proc = run_cli("validate", uri, "--full-hash", "--quiet", "--sample-records", "100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{uri}: OK" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_prepare_to_missing_bucket_fails_before_checking_images(source, s3_server):
    images, csv_path = source
    proc = run_cli(
        "prepare", "--images", images, "--labels", csv_path, "--out", "s3://no-such-bucket-xyz/ds", "--quiet"
    )
    assert_clean_error(proc, "bucket 'no-such-bucket-xyz' does not exist")
