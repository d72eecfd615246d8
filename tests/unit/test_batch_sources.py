"""What `predict --data` lists, cuts into parts and writes, on local folders (no Ray, no model)."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from job.errors import UserError
from job.evaluation import batch_outputs
from job.evaluation.batch_sources import resolve_inputs


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_a_folder_is_listed_recursively_by_image_suffix_and_cut_into_parts(tmp_path):
    names = ["a/1.jpg", "a/2.JPEG", "b/3.png", "4.gif", "5.bmp"]
    for name in names:
        touch(tmp_path / name)
    touch(tmp_path / "notes.txt")
    touch(tmp_path / "a" / "labels.csv")
    inputs = resolve_inputs(str(tmp_path), images_per_part=2)
    assert inputs.key_column == "image"
    assert [p.name for p in inputs.parts] == ["part-00000", "part-00001", "part-00002"]
    listed = [u for p in inputs.parts for u in p.uris]
    assert listed == sorted(str(tmp_path / n) for n in names)
    assert [p.count for p in inputs.parts] == [2, 2, 1] and inputs.total_images == 5


def test_the_fingerprint_changes_with_the_input_and_the_part_size(tmp_path):
    for i in range(3):
        touch(tmp_path / f"{i}.jpg")
    same = resolve_inputs(str(tmp_path), images_per_part=2).fingerprint
    assert resolve_inputs(str(tmp_path), images_per_part=2).fingerprint == same
    assert resolve_inputs(str(tmp_path), images_per_part=3).fingerprint != same
    touch(tmp_path / "3.jpg")
    assert resolve_inputs(str(tmp_path), images_per_part=2).fingerprint != same


def test_a_csv_lists_images_in_its_image_column_relative_to_its_folder(tmp_path):
    csv = tmp_path / "lists" / "photos.csv"
    touch(csv, b"labels,image\nsea,../img/a.jpg\n\nsun,/abs/b.jpg\nx,s3://bucket/c.png\n")
    inputs = resolve_inputs(str(csv))
    assert list(inputs.parts[0].uris) == [
        str(tmp_path / "lists" / ".." / "img" / "a.jpg"),
        "/abs/b.jpg",
        "s3://bucket/c.png",
    ]


def test_a_csv_without_a_header_keeps_its_first_image(tmp_path):
    csv = touch(tmp_path / "list.csv", b"a.jpg\nb.png\n")
    assert list(resolve_inputs(str(csv)).parts[0].uris) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]


def test_only_part_files_directly_under_the_output_count(tmp_path):
    out = str(tmp_path / "out")
    table = batch_outputs.part_table("image", ["a"], np.array([[0.7]]), [None], ["sea"], np.array([0.5]))
    batch_outputs.write_part(out + "/older-job", "part-00000", table)
    assert batch_outputs.completed_parts(out) == set()
    batch_outputs.write_part(out, "part-00001", table)
    assert batch_outputs.completed_parts(out) == {"part-00001"}


@pytest.mark.parametrize(
    "content, words",
    [
        (b"image\n", ["No images listed in"]),
        (b"image,labels\na.jpg,sea\n,sun\n", ["line 3", "no image path"]),
    ],
)
def test_a_csv_without_images_is_refused(tmp_path, content, words):
    csv = touch(tmp_path / "x.csv", content)
    with pytest.raises(UserError) as err:
        resolve_inputs(csv)
    for word in words:
        assert word in str(err.value)


def test_a_folder_without_images_and_a_split_for_a_folder_are_refused(tmp_path):
    touch(tmp_path / "readme.txt")
    with pytest.raises(UserError, match="No images under"):
        resolve_inputs(str(tmp_path))
    with pytest.raises(UserError, match="--split applies to a data set"):
        resolve_inputs(str(tmp_path), splits=("test",))
    with pytest.raises(UserError, match="--images-per-part"):
        resolve_inputs(str(tmp_path), images_per_part=0)


def test_a_part_table_has_null_scores_and_labels_for_a_bad_image():
    probabilities = np.array([[0.9, 0.2], [np.nan, np.nan], [0.4, 0.6]], np.float32)
    table = batch_outputs.part_table(
        "image", ["a", "b", "c"], probabilities, [None, "not an image", None], ["sea", "sun"], np.array([0.5, 0.5])
    )
    assert table.column("score_sea").to_pylist()[1] is None
    assert table.column("predicted").to_pylist() == [["sea"], None, ["sun"]]
    assert table.column("error").to_pylist() == [None, "not an image", None]


def test_a_rerun_resumes_the_same_job_and_refuses_another(tmp_path):
    out = str(tmp_path / "out")
    plan = {"model": "m", "inputs_fingerprint": "f1", "key_column": "image", "class_names": ["sea"]}
    batch_outputs.start_or_resume(out, {**plan, "model": "another, before any part was written"})
    batch_outputs.start_or_resume(out, plan)
    table = batch_outputs.part_table("image", ["a"], np.array([[0.7]]), [None], ["sea"], np.array([0.5]))
    batch_outputs.write_part(out, "part-00000", table)
    assert batch_outputs.completed_parts(out) == {"part-00000"}
    batch_outputs.start_or_resume(out, plan)  # the same job: resumes
    for changed in ({"inputs_fingerprint": "f2"}, {"model_identity": "re-exported"}, {"thresholds": [0.4]}):
        with pytest.raises(UserError, match="another predict job"):
            batch_outputs.start_or_resume(out, {**plan, **changed})
    written = pq.read_table(io.BytesIO((tmp_path / "out" / "part-00000.parquet").read_bytes()))
    assert written.column("score_sea").to_pylist() == pytest.approx([0.7])


def test_a_missing_image_is_a_bad_row_not_a_failed_job(tmp_path):
    from job.cluster.batch_predict import _read_image

    assert _read_image(str(tmp_path / "gone.jpg")) == (b"", "does not exist")
    assert _read_image(touch(tmp_path / "here.jpg", b"abc")) == (b"abc", None)


def test_a_pool_that_cannot_fit_is_named_not_waited_for():
    from job.cluster.batch_predict import PoolSettings, pool_shortfall

    cpus_only = {"CPU": 2.0}
    assert pool_shortfall(PoolSettings(actors=1, gpus_per_actor=0.0), cpus_only) is None
    assert "need 1 GPU(s), there are 0" in pool_shortfall(PoolSettings(actors=1, gpus_per_actor=1.0), cpus_only)
    # Two 1-CPU actors take both CPUs and leave none for the decode tasks.
    assert "decode tasks" in pool_shortfall(PoolSettings(actors=2, gpus_per_actor=0.0), cpus_only)
    assert pool_shortfall(PoolSettings(actors=2, gpus_per_actor=1.0), {"CPU": 8.0, "GPU": 2.0}) is None
