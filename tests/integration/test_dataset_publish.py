"""`prepare --overwrite` replaces a data set atomically: a kill at any point leaves a whole set.

Each case prepares an "old" set, then runs `python -m job prepare --overwrite` with a
different CSV and shard count in a child process that SIGKILLs itself at one point of the
publish (after the first shard, after all shards, just before dataset.json, after it, in
the middle of the clean-up). The kill is real (no handler runs); the hook only chooses the
moment. Afterwards `python -m job validate --full-hash` must pass and the manifest must be
the old set's or the new set's, never a mix. A last, unkilled run then publishes and
removes what the killed ones left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from job import storage
from job.data import shards
from job.data.validate import validate_dataset
from tests.cli import assert_clean_error, run_cli, run_command

pytestmark = pytest.mark.integration

# Runs `python -m job ARGS` with one hook that SIGKILLs the process at KILL_AT.
KILLING_CLI = r"""
import os, signal, sys
from job import cli, storage
from job.data import shards, splits

point = os.environ["KILL_AT"]
written = []

def die():
    os.kill(os.getpid(), signal.SIGKILL)

real_write = storage.write_bytes
def write_bytes(uri, data):
    real_write(uri, data)
    if shards.SHARD_NAME_PATTERN.match(storage.basename(uri)):
        written.append(uri)
        if point == "first-shard" or (point == "all-shards" and len(written) == int(os.environ["SHARDS"])):
            die()
storage.write_bytes = write_bytes

real_manifest = shards.write_manifest
def write_manifest(root, manifest):
    if point == "before-manifest":
        die()
    real_manifest(root, manifest)
    if point == "after-manifest":
        die()
shards.write_manifest = write_manifest

real_delete = storage.delete
def delete(uri):
    real_delete(uri)
    if point == "cleanup":
        die()
storage.delete = delete

sys.exit(cli.main(sys.argv[1:]))
"""

KILL_POINTS = ["first-shard", "all-shards", "before-manifest", "after-manifest", "cleanup"]


def _images(folder, count: int, seed: int) -> str:
    """A folder of `count` small distinct PNGs and a labels CSV; returns the CSV path."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = ["image,labels"]
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(os.path.join(folder, f"{i}.png"))
        lines.append(f"{i}.png,{['sea', 'trees', 'sea trees'][i % 3]}")
    csv_path = os.path.join(folder, "..", f"labels-{seed}.csv")
    with open(csv_path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return csv_path


def _prepare_args(images, csv_path, out, num_shards):
    return ["prepare", "--images", images, "--labels", csv_path, "--out", out, "--num-shards", str(num_shards)]


def _manifest(out) -> dict:
    return storage.read_json(shards.manifest_uri(out))


def _shard_files(out) -> set[str]:
    return {
        uri[len(out.rstrip("/")) + 1 :]
        for uri in storage.list_files(out)
        if shards.SHARD_NAME_PATTERN.match(storage.basename(uri))
    }


def _assert_valid(out) -> None:
    """What `python -m job validate OUT --full-hash` checks (the same function, in this process)."""
    report = validate_dataset(out, full_hash=True, sample_records=100)
    assert report.ok, report.render()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """(old, new, template): two image folders with their CSVs (the new set has other images
    and fewer shards), and a data set prepared twice from the old one, so that it has an
    older generation for a clean-up to remove."""
    base = tmp_path_factory.mktemp("publish")
    old_images, new_images = str(base / "old"), str(base / "new")
    old, new = (old_images, _images(old_images, 40, seed=1)), (new_images, _images(new_images, 30, seed=2))
    template = str(base / "template")
    run_cli(*_prepare_args(*old, template, 4), "--quiet", timeout=300, check=True)
    run_cli(*_prepare_args(*old, template, 4), "--overwrite", "--quiet", timeout=300, check=True)
    return old, new, template


def _kill_during_overwrite(sources, out, point):
    _, (new_images, new_csv), template = sources
    if storage.is_s3(out):
        storage.upload_dir(template, out)
    else:
        shutil.copytree(template, out)
    old = _manifest(out)
    result = run_command(
        [sys.executable, "-c", KILLING_CLI, *_prepare_args(new_images, new_csv, out, 2), "--overwrite", "--quiet"],
        env={"KILL_AT": point, "SHARDS": "4"},  # 2 train + 1 val + 1 test shards
        timeout=300,
    )
    assert result.returncode == -9, f"the hook did not kill the run at {point}: {result.stderr[-2000:]}"
    return old


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_kill_during_overwrite_leaves_the_old_or_the_new_set_whole(sources, tmp_path, point):
    out = str(tmp_path / "ds")
    old = _kill_during_overwrite(sources, out, point)

    _assert_valid(out)
    now = _manifest(out)
    expect_new = point in ("after-manifest", "cleanup")
    if expect_new:
        assert now["generation"] != old["generation"]
        assert now["splits"]["train"]["num_examples"] + now["splits"]["val"]["num_examples"] < 30
    else:
        assert now == old, f"a kill at {point} changed the published data set"

    # A clean re-run publishes the new set and removes the killed run's and the oldest shards.
    new_images, new_csv = sources[1]
    run_cli(*_prepare_args(new_images, new_csv, out, 2), "--overwrite", "--quiet", timeout=300, check=True)
    _assert_valid(out)
    final = _manifest(out)
    listed = {s["path"] for body in final["splits"].values() for s in body["shards"]}
    kept = {s["path"] for body in now["splits"].values() for s in body["shards"]}
    assert _shard_files(out) == listed | kept, "shards of older generations or killed runs were left behind"
    assert not [n for _, _, files in os.walk(out) for n in files if ".partial-" in n]


def test_a_kill_on_s3_leaves_the_old_set_whole(sources, bucket):
    out = f"s3://{bucket}/datasets/mine"
    old = _kill_during_overwrite(sources, out, "before-manifest")
    _assert_valid(out)
    assert _manifest(out) == old


def test_without_overwrite_an_existing_set_is_left_alone(sources, tmp_path):
    _, (new_images, new_csv), template = sources
    out = str(tmp_path / "ds")
    shutil.copytree(template, out)
    before = json.dumps(_manifest(out))
    result = run_cli(*_prepare_args(new_images, new_csv, out, 2), "--quiet", timeout=300)
    assert_clean_error(result, "already holds a data set (40 examples)", "--overwrite")
    assert json.dumps(_manifest(out)) == before
    result = run_cli("synth", "--out", out, "--num-images", "20", "--quiet", timeout=300)
    assert_clean_error(result, "already holds a data set", "--overwrite")


def test_shrinking_the_shard_count_leaves_no_stale_shards_after_two_overwrites(sources, tmp_path):
    (old_images, old_csv), (new_images, new_csv), _ = sources
    out = str(tmp_path / "ds")
    run_cli(*_prepare_args(old_images, old_csv, out, 4), "--quiet", timeout=300, check=True)
    for _ in range(2):
        run_cli(*_prepare_args(new_images, new_csv, out, 2), "--overwrite", "--quiet", timeout=300, check=True)
    manifests = _manifest(out)
    listed = {s["path"] for body in manifests["splits"].values() for s in body["shards"]}
    # Two publishes of the 4-shard set's successor: the first generation is gone, the
    # previous one (same shape) is kept for readers that loaded it.
    assert len(_shard_files(out)) == 2 * len(listed)
    assert all("part-00003-of-00004" not in p for p in _shard_files(out))
