"""The pixel limit as a user meets it: `prepare` and `predict` on a 48 KB, 400 Mpx PNG.

prepare names the CSV row and the size (or skips and reports it with --skip-bad-rows);
predict gives the file an `error:` line (and a JSON error line in its place), predicts the
others, exits 1, and never decodes it: the predict process's peak RSS stays far below the
~1.2 GB one decode would take. The model is a tiny untrained export built in-process
(tests/unit/test_pixel_limit.py's `save_tiny_export`), so no training run is needed.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.cli import assert_clean_error, run_cli, run_command
from tests.unit.test_pixel_limit import BOMB_MESSAGE, bomb_png, encoded, image_folder, save_tiny_export

pytestmark = pytest.mark.integration

# `python -m job ARGS`, then the process's own peak RSS on stderr.
WITH_PEAK_RSS = (
    "import resource, sys\n"
    "from job.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "print(f'peak-rss-kb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(rc)\n"
)
# One decode of the bomb adds >= 1.2 GB to predict's peak; reading its header adds nothing.
MAX_BOMB_SHARE_KB = 400_000


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png()


def test_prepare_names_the_row_of_an_over_limit_image_or_skips_it(tmp_path, bomb):
    images = {f"{i}.png": encoded("PNG", 20, 20, seed=i) for i in range(4)}
    images["bomb.png"] = bomb
    root, csv = image_folder(tmp_path, images)
    common = ("prepare", "--images", root, "--labels", csv, "--num-shards", "1", "--quiet")
    assert_clean_error(
        run_cli(*common, "--out", tmp_path / "out"),
        f"labels.csv row 6 (bomb.png): {BOMB_MESSAGE} (--max-pixels)",
        "1 of 5 rows",
    )
    done = run_cli(*common, "--out", tmp_path / "out", "--skip-bad-rows")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"skipped labels.csv row 6 (bomb.png): {BOMB_MESSAGE} (--max-pixels)" in done.stderr
    assert "wrote 4 images" in done.stdout
    # The flag moves the limit: 20 x 20 = 400 pixels is above 399.
    assert_clean_error(
        run_cli(*common, "--out", tmp_path / "out2", "--max-pixels", "399"),
        "20x20 = 400 px is above the pixel limit of 399 px (--max-pixels)",
    )
    assert_clean_error(run_cli(*common, "--out", tmp_path / "out3", "--max-pixels", "0"), "--max-pixels")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    model = tmp_path_factory.mktemp("pixel-limit") / "model"
    save_tiny_export(model)
    return model


def test_predict_refuses_the_bomb_without_decoding_it_and_predicts_the_others(tmp_path, bomb, export):
    good, big = tmp_path / "good.png", tmp_path / "bomb.png"
    good.write_bytes(encoded("PNG", 20, 20))
    big.write_bytes(bomb)
    predict = [sys.executable, "-c", WITH_PEAK_RSS, "predict", "--model", export]
    # The same command on the good image alone: what TensorFlow and the model cost on this
    # machine (it varies with the environment), so only the bomb's share is compared.
    baseline = run_command([*predict, good, "--format", "json"], check=True)
    done = run_command([*predict, big, good, "--format", "json"])
    assert_clean_error(
        done,
        f"error: {big}: {BOMB_MESSAGE} (the model's data.max_pixels); not predicted",
        "1 of 2 image(s) were not predicted",
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0] == {"image": str(big), "error": f"{BOMB_MESSAGE} (the model's data.max_pixels)"}
    assert lines[1]["image"] == str(good) and set(lines[1]["probabilities"]) == {"sea", "sky"}
    peak_kb, base_kb = (int(r.stderr.rsplit("peak-rss-kb ", 1)[1].split()[0]) for r in (done, baseline))
    assert peak_kb - base_kb < MAX_BOMB_SHARE_KB, f"predict peaked {peak_kb - base_kb} kB above its baseline: decoded?"


def test_predict_takes_the_limit_the_export_recorded(tmp_path, export):
    # export.json's max_pixels (written by `python -m job export` from the run's data.max_pixels).
    info = export / "assets.extra" / "export.json"
    info.parent.mkdir(exist_ok=True)
    info.write_text(json.dumps({"max_pixels": 1000}))
    try:
        small, big = tmp_path / "small.png", tmp_path / "big.jpg"
        small.write_bytes(encoded("PNG", 20, 20))
        big.write_bytes(encoded("JPEG", 40, 30))
        done = run_cli("predict", "--model", export, small, big)
        assert_clean_error(done, f"error: {big}: 40x30 = 1,200 px is above the pixel limit of 1,000 px")
        assert str(small) in done.stdout and str(big) not in done.stdout
    finally:
        info.unlink()
