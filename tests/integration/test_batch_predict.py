"""`predict --data URI --output URI`: batch inference on a real local Ray, against the embedded S3.

What a user would check: 2,000 images on S3 come back once each, with the scores the
single-process `predict` gives; a bad image is named and counted and the job still ends; a
job killed half-way and run again writes every image exactly once; a data set split keeps
its example ids. Shares the session's tiny trained run (tests/trained_run.py).
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job import storage
from tests.cli import assert_clean_error, kill_group, run_cli, start_cli
from tests.trained_run import shared_run

pytestmark = pytest.mark.integration

NUM_IMAGES = 2000
BAD_IMAGE = "zz-broken.jpg"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(data set, exported model) of the session's tiny run."""
    data, run = shared_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("batch") / "model"
    run_cli("export", "--run", str(run), "--out", str(out), check=True)
    return data, out


@pytest.fixture(scope="module")
def photos(s3_server, tmp_path_factory) -> tuple[str, dict[str, bytes]]:
    """An s3:// prefix holding 2,000 JPEGs and one file that is not an image; (prefix, {uri: bytes})."""
    from job.data import shards

    data = tmp_path_factory.mktemp("photos-data") / "data"
    run_cli("synth", "--out", str(data), "--num-images", str(NUM_IMAGES), "--seed", "7", "--quiet", check=True)
    bucket = "batch-photos"
    storage.ensure_bucket(f"s3://{bucket}")
    prefix = f"s3://{bucket}/photos"
    manifest = shards.load_manifest(str(data))
    images = {}
    for split in shards.SPLITS:
        for _, example in shards.read_split(str(data), manifest, split):
            uri = f"{prefix}/{split}/{example.id}.jpg"
            storage.write_bytes(uri, example.image)
            images[uri] = example.image
    storage.write_bytes(f"{prefix}/{BAD_IMAGE}", b"these bytes are not an image")
    storage.write_bytes(f"{prefix}/notes.txt", b"not listed: not an image suffix")
    return prefix, images


def read_output(output: str, key: str = "image") -> pa.Table:
    parts = [u for u in storage.list_files(output, ".parquet")]
    assert parts, f"no part files under {output}"
    return pa.concat_tables(pq.read_table(io.BytesIO(storage.read_bytes(u))) for u in parts)


def scores_of(table: pa.Table) -> tuple[list[str], np.ndarray]:
    names = json.loads(table.schema.metadata[b"multilabel"])["class_names"]
    return names, np.stack([table.column(f"score_{n}").to_numpy(zero_copy_only=False) for n in names], axis=1)


def test_2000_images_on_s3_match_single_process_predict_and_the_bad_one_is_listed(model, photos):
    _, export = model
    prefix, images = photos
    output = f"{prefix.rsplit('/', 1)[0]}/predictions/all"
    done = run_cli(
        "predict", "--model", str(export), "--data", prefix, "--output", output, "--images-per-part", "500", timeout=420
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert BAD_IMAGE in done.stderr and "could not be predicted" in done.stderr

    table = read_output(output)
    keys = table.column("image").to_pylist()
    assert sorted(keys) == sorted([*images, f"{prefix}/{BAD_IMAGE}"]), "every image exactly once, nothing else"
    errors = dict(zip(keys, table.column("error").to_pylist()))
    assert "not an image" in errors.pop(f"{prefix}/{BAD_IMAGE}")
    assert set(errors.values()) == {None}

    success = json.loads(storage.read_bytes(f"{output}/_SUCCESS"))
    assert (success["images"], success["predicted"], success["bad_images"]) == (NUM_IMAGES + 1, NUM_IMAGES, 1)
    assert success["bad_listed"][0]["image"] == f"{prefix}/{BAD_IMAGE}"

    # The same images through the single-process predictor (the SavedModel's own decode).
    from job.evaluation.export import load_predictor

    names, batch = scores_of(table)
    good = [i for i, k in enumerate(keys) if errors.get(k, "x") is None]
    predictor = load_predictor(str(export))
    single = predictor.predict([images[keys[i]] for i in good])
    assert names == predictor.class_names
    assert np.abs(batch[good] - single.probabilities).max() <= 1e-5
    predicted = table.column("predicted").to_pylist()
    for row, decisions in zip(good, single.decisions):
        assert predicted[row] == [n for n, d in zip(names, decisions) if d]


def test_a_killed_job_run_again_writes_each_image_exactly_once(model, photos):
    _, export = model
    prefix, images = photos
    # The test split's 300 images in 30 parts: short, and still many parts to kill it among.
    data = f"{prefix}/test"
    wanted = {uri for uri in images if uri.startswith(data + "/")}
    parts = -(-len(wanted) // 10)
    output = f"{prefix.rsplit('/', 1)[0]}/predictions/resumed"
    args = ("predict", "--model", str(export), "--data", data, "--output", output, "--images-per-part", "10")
    first = start_cli(*args)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and first.poll() is None:
            if len(storage.list_files(output, ".parquet")) >= 3:
                break
            time.sleep(0.05)
    finally:
        log = kill_group(first)
    written = len(storage.list_files(output, ".parquet"))
    assert 3 <= written < parts, f"the kill should land mid-job ({written} of {parts} parts written):\n{log[-3000:]}"
    assert not storage.exists(f"{output}/_SUCCESS")

    again = run_cli(*args, timeout=420)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming: {written} of {parts} part(s) already written" in again.stdout + again.stderr
    keys = read_output(output).column("image").to_pylist()
    assert len(keys) == len(set(keys)) == len(wanted)
    assert set(keys) == wanted
    assert json.loads(storage.read_bytes(f"{output}/_SUCCESS"))["images"] == len(wanted)

    # Another input into the same output would mix two jobs: refused, before any work.
    other = run_cli("predict", "--model", str(export), "--data", f"{prefix}/val", "--output", output)
    assert_clean_error(other, "holds the results of another predict job")


def test_a_data_set_split_keeps_its_example_ids(model, tmp_path):
    from job.data import shards

    data, export = model
    output = tmp_path / "test-split"
    done = run_cli(
        "predict", "--model", str(export), "--data", str(data), "--split", "test", "--output", str(output), timeout=420
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = read_output(str(output))
    manifest = shards.load_manifest(str(data))
    expected = [example.id for _, example in shards.read_split(str(data), manifest, "test")]
    assert sorted(table.column("id").to_pylist()) == sorted(expected)
    assert set(table.column("error").to_pylist()) == {None}
    assert {p.name for p in output.glob("*.parquet")} == {
        f"test-{i:05d}.parquet" for i in range(len(manifest.splits["test"]))
    }
