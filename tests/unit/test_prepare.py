"""prepare: a folder of images + labels.csv -> a data set that validates, on local paths.

Images are tiny PIL drawings in tmp_path; each test states the outcome a user would see:
the shards validate, the class order and label counts, the split is reproducible, and bad
input stops with the CSV row number (or is skipped and counted with --skip-bad-rows).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from job.data import shards
from job.data.prepare import PrepareOptions, parse_classes, prepare_dataset, read_rows
from job.data.validate import validate_dataset
from job.errors import UserError
from tests.cli import assert_clean_error, run_cli

# (image, labels) rows; the labels cover every case: one, several, repeated, none.
ROWS = [
    (f"img/{i:03d}.{'png' if i % 3 == 0 else 'jpg'}", labels)
    for i, labels in enumerate(
        [
            "sea",
            "sea sunset",
            "trees",
            "sunset",
            "trees sea",
            "",
            "sea",
            "sunset sunset",
            "trees",
            "sea trees sunset",
            "sea",
            "trees",
            "sunset",
            "sea sunset",
            "trees",
            "sea",
            "",
            "trees",
            "sunset",
            "sea",
        ]
    )
]


def _write_image(path, index: int, size=(24, 16)) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(index)
    pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)  # format from the file extension


def _write_csv(path, rows, header="image,labels") -> None:
    with open(path, "w", newline="") as fh:
        fh.write(header + "\n")
        for image, labels in rows:
            fh.write(f"{image},{labels}\n")


@pytest.fixture
def source(tmp_path):
    """(images folder, labels.csv) with ROWS, every image present and valid."""
    images = tmp_path / "images"
    for i, (name, _) in enumerate(ROWS):
        _write_image(images / name, i)
    csv_path = tmp_path / "labels.csv"
    _write_csv(csv_path, ROWS)
    return str(images), str(csv_path)


def _prepare(source, out, **options):
    images, csv_path = source
    return prepare_dataset(images, csv_path, str(out), PrepareOptions(**options), progress=False)


def _expected_counts(rows, class_names):
    counts = dict.fromkeys(class_names, 0)
    for _, labels in rows:
        for name in set(labels.split()):
            counts[name] += 1
    return [counts[n] for n in class_names]


# ---------------------------------------------------------------------------- good input


@pytest.mark.parametrize("fmt", ["tfrecord", "parquet"])
def test_output_validates_with_full_hash_and_counts_match_csv(source, tmp_path, fmt):
    out = tmp_path / "ds"
    result = _prepare(source, out, fmt=fmt, num_shards=2)

    report = validate_dataset(str(out), full_hash=True, sample_records=100)
    assert report.ok, report.render()
    manifest = shards.load_manifest(str(out))
    assert manifest.format == fmt
    assert manifest.class_names == ["sea", "sunset", "trees"]  # sorted unique names
    assert sum(manifest.num_examples(s) for s in shards.SPLITS) == len(ROWS) == result.num_images
    assert len(manifest.splits["train"]) == 2
    total = np.sum([manifest.label_counts(s) for s in shards.SPLITS], axis=0).tolist()
    assert total == _expected_counts(ROWS, manifest.class_names)
    assert result.skipped == []


def test_images_pass_through_byte_for_byte_with_ids_and_labels(source, tmp_path):
    images, _ = source
    out = tmp_path / "ds"
    _prepare(source, out, fmt="parquet")
    manifest = shards.load_manifest(str(out))
    seen = {}
    for split in shards.SPLITS:
        for _, example in shards.read_split(str(out), manifest, split):
            seen[example.id] = example
    assert sorted(seen) == sorted(name for name, _ in ROWS)
    for name, labels in ROWS:
        with open(os.path.join(images, name), "rb") as fh:
            assert seen[name].image == fh.read()
        names = [c for c, v in zip(manifest.class_names, seen[name].labels) if v]
        assert names == sorted(set(labels.split()))


def test_classes_option_sets_the_order_and_keeps_unused_classes(source, tmp_path):
    out = tmp_path / "ds"
    _prepare(source, out, classes=("trees", "sunset", "sea", "desert"))
    manifest = shards.load_manifest(str(out))
    assert manifest.class_names == ["trees", "sunset", "sea", "desert"]
    total = np.sum([manifest.label_counts(s) for s in shards.SPLITS], axis=0).tolist()
    assert total == _expected_counts(ROWS, manifest.class_names)
    assert total[3] == 0


def test_same_seed_same_shards_other_seed_other_split(source, tmp_path):
    def shard_hashes(out):
        manifest = shards.load_manifest(str(out))
        return {split: [s.sha256 for s in shards] for split, shards in manifest.splits.items()}

    _prepare(source, tmp_path / "a", seed=7)
    _prepare(source, tmp_path / "b", seed=7)
    _prepare(source, tmp_path / "c", seed=8)
    assert shard_hashes(tmp_path / "a") == shard_hashes(tmp_path / "b")
    assert shard_hashes(tmp_path / "a") != shard_hashes(tmp_path / "c")


def test_split_fractions_are_respected(source, tmp_path):
    out = tmp_path / "ds"
    _prepare(source, out, val_fraction=0.25, test_fraction=0.1)
    manifest = shards.load_manifest(str(out))
    assert [manifest.num_examples(s) for s in shards.SPLITS] == [13, 5, 2]


def test_target_shard_mb_sets_the_train_shard_count(source, tmp_path):
    images, _ = source
    train_bytes_upper = sum(os.path.getsize(os.path.join(images, n)) for n, _ in ROWS)
    out = tmp_path / "ds"
    # About a third of all bytes per shard -> the train split (70 %) needs 2 or 3 shards.
    _prepare(source, out, target_shard_mb=train_bytes_upper / 3 / 1e6)
    train_shards = shards.load_manifest(str(out)).splits["train"]
    assert len(train_shards) in (2, 3)
    assert max(s.size_bytes for s in train_shards) < train_bytes_upper / 2


def test_manifest_names_the_encodings_in_the_shards(source, tmp_path):
    # The source folder holds PNGs and JPEGs: pass-through keeps both, --reencode makes JPEGs.
    _prepare(source, tmp_path / "kept", fmt="tfrecord")
    assert shards.load_manifest(str(tmp_path / "kept")).image_encoding == "jpeg+png"
    _prepare(source, tmp_path / "jpeg", fmt="tfrecord", reencode=True)
    assert shards.load_manifest(str(tmp_path / "jpeg")).image_encoding == "jpeg"


def test_reencode_resizes_to_jpeg(source, tmp_path):
    out = tmp_path / "ds"
    _prepare(source, out, reencode=True, image_size=8, jpeg_quality=80, fmt="parquet")
    manifest = shards.load_manifest(str(out))
    assert validate_dataset(str(out), full_hash=True).ok
    for split in shards.SPLITS:
        for _, example in shards.read_split(str(out), manifest, split):
            with Image.open(io.BytesIO(example.image)) as im:
                assert im.format == "JPEG"
                assert min(im.size) == 8 and im.size == (12, 8)  # 24x16 -> shorter side 8, aspect kept
    assert manifest.source["prepare"]["reencode"] is True


def test_reencode_flattens_transparency_and_converts_other_formats(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(images / "clear.png")
    Image.new("RGB", (10, 10), (10, 200, 10)).save(images / "green.tiff")
    Image.new("RGB", (10, 10), (200, 10, 10)).save(images / "red.jpg")
    _write_csv(tmp_path / "l.csv", [("clear.png", "a"), ("green.tiff", "b"), ("red.jpg", "a b")])
    out = tmp_path / "ds"
    # TIFF cannot pass through (TensorFlow does not decode it) ...
    with pytest.raises(UserError, match=r"row 3 \(green.tiff\).*--reencode"):
        prepare_dataset(
            str(images),
            str(tmp_path / "l.csv"),
            str(out),
            PrepareOptions(val_fraction=0.34, test_fraction=0.0),
            progress=False,
        )
    # ... but re-encodes fine, and a transparent pixel becomes white, not black.
    prepare_dataset(
        str(images),
        str(tmp_path / "l.csv"),
        str(out),
        PrepareOptions(val_fraction=0.34, test_fraction=0.0, reencode=True),
        progress=False,
    )
    manifest = shards.load_manifest(str(out))
    found = {e.id: e.image for s in shards.SPLITS for _, e in shards.read_split(str(out), manifest, s)}
    clear = np.asarray(Image.open(io.BytesIO(found["clear.png"])).convert("RGB"))
    assert clear.min() > 240


def test_blank_lines_bom_extra_columns_and_quoted_fields(tmp_path):
    images = tmp_path / "images"
    for i, name in enumerate(["a b.jpg", "c.jpg", "d.jpg"]):
        _write_image(images / name, i)
    with open(tmp_path / "l.csv", "w", encoding="utf-8-sig", newline="") as fh:
        fh.write('id,labels,image\n1,"x y",a b.jpg\n\n2,y,"c.jpg"\n3,x,d.jpg\n')
    rows = read_rows(str(tmp_path / "l.csv"), str(images))
    assert [(r.number, r.image, r.labels) for r in rows] == [
        (2, "a b.jpg", ("x", "y")),
        (4, "c.jpg", ("y",)),
        (5, "d.jpg", ("x",)),
    ]


# ---------------------------------------------------------------------------- bad input


def _write_bad_rows(source):
    """Rows 4, 7 and 10 (header = row 1) become a missing file, an undecodable file and an unknown label."""
    images, csv_path = source
    rows = list(ROWS)
    os.remove(os.path.join(images, rows[2][0]))  # row 4
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png, format="PNG")
    with open(os.path.join(images, rows[5][0]), "wb") as fh:  # row 7: a PNG cut in half
        fh.write(png.getvalue()[: len(png.getvalue()) // 2])
    rows[8] = (rows[8][0], "trees volcano")  # row 10
    _write_csv(csv_path, rows)
    return rows


def test_bad_rows_stop_with_row_numbers_and_write_nothing(source, tmp_path):
    _write_bad_rows(source)
    out = tmp_path / "ds"
    with pytest.raises(UserError) as info:
        _prepare(source, out, classes=("sea", "sunset", "trees"))
    message = str(info.value)
    assert "3 of 20 rows" in message
    assert "row 1" in message and "header" in message
    assert "labels.csv row 4 (img/002.jpg): image file not found" in message
    assert "labels.csv row 7 (img/005.jpg): the image does not decode" in message
    assert "labels.csv row 10 (img/008.jpg): unknown label(s) 'volcano'" in message
    assert "--skip-bad-rows" in message
    assert not out.exists()


def test_truncated_jpeg_is_a_bad_row(source):
    images, csv_path = source
    path = os.path.join(images, ROWS[1][0])
    data = open(path, "rb").read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) - 40])
    with pytest.raises(UserError, match=r"row 3 \(img/001.jpg\): the image does not decode"):
        _prepare(source, "unused")


def test_skip_bad_rows_reports_the_count_and_writes_the_rest(source, tmp_path):
    rows = _write_bad_rows(source)
    out = tmp_path / "ds"
    result = _prepare(source, out, classes=("sea", "sunset", "trees"), skip_bad_rows=True)
    assert [b.number for b in result.skipped] == [4, 7, 10]
    assert validate_dataset(str(out), full_hash=True).ok
    manifest = shards.load_manifest(str(out))
    kept = [r for i, r in enumerate(rows) if i + 2 not in (4, 7, 10)]
    assert sum(manifest.num_examples(s) for s in shards.SPLITS) == len(kept) == 17
    total = np.sum([manifest.label_counts(s) for s in shards.SPLITS], axis=0).tolist()
    assert total == _expected_counts(kept, manifest.class_names)
    assert manifest.source["prepare"]["skipped_rows"] == [4, 7, 10]


def test_without_classes_an_unknown_label_is_a_new_class(source, tmp_path):
    _, csv_path = source
    rows = list(ROWS)
    rows[0] = (rows[0][0], "volcano")
    _write_csv(csv_path, rows)
    _prepare(source, tmp_path / "ds")
    assert shards.load_manifest(str(tmp_path / "ds")).class_names == ["sea", "sunset", "trees", "volcano"]


def test_repeated_image_is_a_bad_row(source):
    _, csv_path = source
    _write_csv(csv_path, ROWS + [(ROWS[3][0], "sea")])
    with pytest.raises(UserError, match=r"row 22 \(img/003.png\): the same file as row 5"):
        _prepare(source, "unused")


@pytest.mark.parametrize(
    "header, fragment",
    [
        ("file,labels", "lacks column(s) image"),
        ("image,tags", "lacks column(s) labels"),
        ("path,tags", "lacks column(s) image, labels"),
    ],
)
def test_missing_columns_are_named(source, header, fragment):
    _, csv_path = source
    _write_csv(csv_path, ROWS, header=header)
    with pytest.raises(UserError, match=r"lacks column") as info:
        _prepare(source, "unused")
    assert fragment in str(info.value)
    assert "image,labels" in str(info.value)  # shows the expected header


def test_empty_csv_and_header_only_csv(source):
    _, csv_path = source
    open(csv_path, "w").close()
    with pytest.raises(UserError, match="is empty"):
        _prepare(source, "unused")
    _write_csv(csv_path, [])
    with pytest.raises(UserError, match="no rows"):
        _prepare(source, "unused")


def test_all_rows_bad_with_skip_is_still_an_error(source):
    _, csv_path = source
    _write_csv(csv_path, [("nope1.jpg", "a"), ("nope2.jpg", "b")])
    with pytest.raises(UserError, match="None of the 2 rows"):
        _prepare(source, "unused", skip_bad_rows=True)


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"num_shards": 0}, "--num-shards must be at least 1"),
        ({"num_shards": 2, "target_shard_mb": 1.0}, "not both"),
        ({"image_size": 64}, "only apply with --reencode"),
        ({"reencode": True, "jpeg_quality": 100}, "--jpeg-quality must be in 1..95"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "must be below 1"),
        ({"fmt": "csv"}, "--format"),
    ],
)
def test_bad_options_are_user_errors(source, options, fragment):
    with pytest.raises(UserError, match=fragment):
        _prepare(source, "unused", **options)


def test_parse_classes():
    assert parse_classes(" sea, sunset ,trees,") == ("sea", "sunset", "trees")
    with pytest.raises(UserError, match="more than once"):
        parse_classes("sea,sea")
    with pytest.raises(UserError, match="empty"):
        parse_classes(" , ")


# ---------------------------------------------------------------------------- the command


def _cli(*args, timeout=120):
    return run_cli("prepare", *args, timeout=timeout)


def test_cli_bad_row_exits_1_with_row_number_and_no_traceback(source, tmp_path):
    images, csv_path = source
    _write_bad_rows(source)
    proc = _cli(
        "--images",
        images,
        "--labels",
        csv_path,
        "--out",
        str(tmp_path / "ds"),
        "--quiet",
        "--classes",
        "sea,sunset,trees",
    )
    assert_clean_error(proc, "row 4", "row 7", "row 10")
    assert not (tmp_path / "ds").exists()


def test_cli_skip_bad_rows_prints_the_count(source, tmp_path):
    images, csv_path = source
    _write_bad_rows(source)
    out = tmp_path / "ds"
    proc = _cli(
        "--images",
        images,
        "--labels",
        csv_path,
        "--out",
        str(out),
        "--quiet",
        "--format",
        "parquet",
        "--classes",
        "sea,sunset,trees",
        "--skip-bad-rows",
        "--seed",
        "3",
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 17 images" in proc.stdout
    assert "skipped 3 bad row(s) of 20" in proc.stdout
    assert "skipped labels.csv row 7 (img/005.jpg)" in proc.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["format"] == "parquet" and manifest["class_names"] == ["sea", "sunset", "trees"]


# ---------------------------------------------------------------------------- hostile input


def test_rows_that_leave_the_images_folder_are_bad_rows(source, tmp_path):
    images, csv_path = source
    secret = tmp_path / "secret.png"
    _write_image(secret, 99)
    os.symlink(secret, os.path.join(images, "img", "link.png"))
    _write_csv(
        csv_path,
        ROWS + [("../secret.png", "sea"), (str(secret), "sea"), ("img/link.png", "sea"), ("img/../../secret.png", "")],
    )
    with pytest.raises(UserError) as info:
        _prepare(source, tmp_path / "ds")
    message = str(info.value)
    for row, image in ((22, "../secret.png"), (23, str(secret)), (24, "img/link.png"), (25, "img/../../secret.png")):
        assert f"row {row} ({image}): resolves to {secret}, outside --images" in message
    assert not (tmp_path / "ds").exists()


def test_allow_outside_accepts_a_folder_of_symlinks(source, tmp_path):
    images, csv_path = source
    store = tmp_path / "store"
    _write_image(store / "far.png", 99)
    os.symlink(store / "far.png", os.path.join(images, "img", "link.png"))
    _write_csv(csv_path, ROWS + [("img/link.png", "sea")])
    result = _prepare(source, tmp_path / "ds", allow_outside=True)
    assert result.num_images == len(ROWS) + 1


def test_one_file_under_three_names_and_a_copy_are_found(source, tmp_path):
    images, csv_path = source
    os.symlink(os.path.join(images, "img", "001.jpg"), os.path.join(images, "img", "alias.jpg"))
    with open(os.path.join(images, "img", "001.jpg"), "rb") as src, open(os.path.join(images, "copy.jpg"), "wb") as dst:
        dst.write(src.read())
    _write_csv(csv_path, ROWS + [("img/./001.jpg", "trees"), ("img/alias.jpg", "sea"), ("copy.jpg", "sunset")])
    with pytest.raises(UserError) as info:
        _prepare(source, tmp_path / "ds")
    message = str(info.value)
    assert "row 22 (img/./001.jpg): the same file as row 3 (img/001.jpg)" in message
    assert "row 23 (img/alias.jpg): the same file as row 3 (img/001.jpg)" in message
    assert "row 24 (copy.jpg): the same content as row 3 (img/001.jpg)" in message
    assert message.startswith("3 of 23 rows")


@pytest.mark.parametrize("where", ["images", "images/img/ds"])
def test_output_inside_the_images_folder_is_refused(source, tmp_path, where):
    with pytest.raises(UserError, match=r"is inside --images .*Choose an --out outside the images folder"):
        _prepare(source, tmp_path / where)
    assert not (tmp_path / "images" / "img" / "ds").exists()
