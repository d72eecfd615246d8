"""Checkpoints: integrity manifest, restore-latest-good, restore-best and retention.

Checkpoints here are fake folders of small files (state.json plus dummy model.ckpt.*), on a
local "run" folder in tmp_path; no TensorFlow is needed to check what a user relies on:
a damaged checkpoint is named and skipped, and pruning keeps the right ones.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from job.storage.run_store import checkpoint_dir_name
from job.training import checkpoints


def _make_local(path, epoch: int, val_loss: float, payload: bytes | None = None) -> str:
    """A finished local checkpoint folder (with manifest.json) for `epoch`."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "state.json"), "w") as fh:
        json.dump({"epoch": epoch, "val_loss": val_loss, "history": {"loss": [1.0] * epoch}}, fh)
    with open(os.path.join(path, "model.ckpt.index"), "wb") as fh:
        fh.write(payload if payload is not None else f"index of epoch {epoch}".encode() * 4)
    with open(os.path.join(path, "model.ckpt.data-00000-of-00001"), "wb") as fh:
        fh.write(bytes(range(256)) * (epoch + 1))
    checkpoints.write_manifest(path)
    return str(path)


def _publish(tmp_path, run: str, epoch: int, val_loss: float) -> str:
    local = _make_local(tmp_path / "staging" / checkpoint_dir_name(epoch), epoch, val_loss)
    uri = os.path.join(run, checkpoint_dir_name(epoch))
    checkpoints.publish(local, uri)
    return uri


def _run(tmp_path, losses: dict[int, float]) -> tuple[str, dict[int, str]]:
    run = str(tmp_path / "run")
    uris = {epoch: _publish(tmp_path, run, epoch, loss) for epoch, loss in losses.items()}
    return run, uris


def _flip_byte(path: str, offset: int = 3) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


# ---------------------------------------------------------------------------- manifest + verify


def test_intact_checkpoint_verifies(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    assert checkpoints.verify(folder) == []
    manifest = json.loads((tmp_path / "ckpt" / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["model.ckpt.data-00000-of-00001", "model.ckpt.index", "state.json"]
    assert manifest["files"]["model.ckpt.data-00000-of-00001"]["size"] == 512


def test_verify_reports_a_truncated_file(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    path = os.path.join(folder, "model.ckpt.data-00000-of-00001")
    os.truncate(path, 100)
    problems = checkpoints.verify(folder)
    assert problems == ["model.ckpt.data-00000-of-00001 is 100 bytes, the manifest lists 512"]


def test_verify_reports_a_changed_byte_of_the_same_size(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    before = os.path.getsize(os.path.join(folder, "model.ckpt.index"))
    _flip_byte(os.path.join(folder, "model.ckpt.index"))
    assert os.path.getsize(os.path.join(folder, "model.ckpt.index")) == before
    assert checkpoints.verify(folder) == ["model.ckpt.index does not match its sha256"]


def test_verify_reports_a_missing_file(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    os.remove(os.path.join(folder, "model.ckpt.index"))
    assert checkpoints.verify(folder) == ["model.ckpt.index is missing"]


def test_verify_reports_a_missing_state_file(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    os.remove(os.path.join(folder, "state.json"))
    assert checkpoints.verify(folder) == ["state.json is missing"]


def test_verify_reports_a_missing_manifest(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    os.remove(os.path.join(folder, "manifest.json"))
    problems = checkpoints.verify(folder)
    assert len(problems) == 1 and "manifest.json is missing" in problems[0]


def test_verify_reports_an_unreadable_manifest(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 1, 0.5)
    with open(os.path.join(folder, "manifest.json"), "w") as fh:
        fh.write('{"files": ')
    problems = checkpoints.verify(folder)
    assert len(problems) == 1 and "manifest.json is unreadable" in problems[0]


def test_verify_reports_every_damaged_file(tmp_path):
    folder = _make_local(tmp_path / "ckpt", 2, 0.5)
    os.remove(os.path.join(folder, "model.ckpt.index"))
    _flip_byte(os.path.join(folder, "model.ckpt.data-00000-of-00001"))
    problems = checkpoints.verify(folder)
    assert sorted(problems) == [
        "model.ckpt.data-00000-of-00001 does not match its sha256",
        "model.ckpt.index is missing",
    ]


# ---------------------------------------------------------------------------- publish, list, restore


def test_publish_writes_every_file_and_the_manifest(tmp_path):
    run, uris = _run(tmp_path, {1: 0.9})
    assert sorted(os.listdir(uris[1])) == [
        "manifest.json",
        "model.ckpt.data-00000-of-00001",
        "model.ckpt.index",
        "state.json",
    ]
    assert checkpoints.verify(uris[1]) == []


def test_list_checkpoints_newest_first_by_epoch_number(tmp_path):
    run, uris = _run(tmp_path, {2: 0.5, 10: 0.4, 9: 0.45})
    # Other things in the run folder are not checkpoints.
    os.makedirs(os.path.join(run, "tensorboard"))
    with open(os.path.join(run, "tensorboard", "events"), "w") as fh:
        fh.write("x")
    with open(os.path.join(run, "config.json"), "w") as fh:
        fh.write("{}")
    os.makedirs(os.path.join(run, "checkpoint_epoch-000011"))  # empty: nothing was uploaded
    assert checkpoints.list_checkpoints(run) == [((10, 0), uris[10]), ((9, 0), uris[9]), ((2, 0), uris[2])]


def test_list_checkpoints_of_a_missing_run_is_empty(tmp_path):
    assert checkpoints.list_checkpoints(str(tmp_path / "nothing")) == []
    assert checkpoints.restore_latest(str(tmp_path / "nothing"), str(tmp_path / "work")) is None


def test_restore_latest_returns_the_newest(tmp_path):
    run, uris = _run(tmp_path, {1: 0.9, 2: 0.7, 3: 0.8})
    restored = checkpoints.restore_latest(run, str(tmp_path / "work"))
    assert restored is not None
    assert restored.epoch == 3
    assert restored.uri == uris[3]
    assert restored.state["val_loss"] == pytest.approx(0.8)
    assert os.path.isfile(restored.weights_prefix + ".index")
    with open(restored.weights_prefix + ".index", "rb") as fh:
        assert fh.read() == b"index of epoch 3" * 4
    assert restored.local_dir.startswith(str(tmp_path / "work"))


def test_restore_latest_skips_a_corrupt_newest_and_says_which_file(tmp_path, caplog):
    run, uris = _run(tmp_path, {1: 0.9, 2: 0.7, 3: 0.8})
    _flip_byte(os.path.join(uris[3], "model.ckpt.index"))
    with caplog.at_level(logging.WARNING, logger="job.training.checkpoints"):
        restored = checkpoints.restore_latest(run, str(tmp_path / "work"))
    assert restored is not None and restored.epoch == 2
    assert restored.uri == uris[2]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert uris[3] in warnings[0]
    assert "model.ckpt.index does not match its sha256" in warnings[0]


def test_restore_latest_skips_a_checkpoint_without_manifest(tmp_path, caplog):
    # An upload interrupted before the manifest (written last) is not a checkpoint.
    run, uris = _run(tmp_path, {4: 0.6, 5: 0.5})
    os.remove(os.path.join(uris[5], "manifest.json"))
    with caplog.at_level(logging.WARNING, logger="job.training.checkpoints"):
        restored = checkpoints.restore_latest(run, str(tmp_path / "work"))
    assert restored is not None and restored.epoch == 4
    assert any(uris[5] in r.getMessage() and "manifest.json is missing" in r.getMessage() for r in caplog.records)


def test_restore_latest_skips_a_checkpoint_with_a_damaged_manifest(tmp_path, caplog):
    # A manifest.json cut short (disk full, interrupted copy) must not stop a resume.
    run, uris = _run(tmp_path, {4: 0.6, 5: 0.5})
    with open(os.path.join(uris[5], "manifest.json"), "w") as fh:
        fh.write('{"files": {"state.json": ')
    with caplog.at_level(logging.WARNING, logger="job.training.checkpoints"):
        restored = checkpoints.restore_latest(run, str(tmp_path / "work"))
    assert restored is not None and restored.epoch == 4
    assert any(uris[5] in r.getMessage() and "manifest.json" in r.getMessage() for r in caplog.records)


def test_restore_latest_skips_several_bad_ones_and_returns_none_when_all_are_bad(tmp_path):
    run, uris = _run(tmp_path, {1: 0.9, 2: 0.7, 3: 0.8})
    os.truncate(os.path.join(uris[3], "model.ckpt.data-00000-of-00001"), 10)
    os.remove(os.path.join(uris[2], "state.json"))
    restored = checkpoints.restore_latest(run, str(tmp_path / "work"))
    assert restored is not None and restored.epoch == 1
    _flip_byte(os.path.join(uris[1], "model.ckpt.index"))
    assert checkpoints.restore_latest(run, str(tmp_path / "work2")) is None


def test_restore_best_picks_the_lowest_val_loss(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.6})
    restored = checkpoints.restore_best(run, str(tmp_path / "work"))
    assert restored is not None
    assert restored.epoch == 2 and restored.uri == uris[2]
    assert restored.state["val_loss"] == pytest.approx(0.3)


def test_restore_best_prefers_the_newest_on_a_tie(tmp_path):
    run, uris = _run(tmp_path, {1: 0.3, 2: 0.5, 3: 0.3})
    restored = checkpoints.restore_best(run, str(tmp_path / "work"))
    assert restored is not None and restored.epoch == 3


def test_restore_best_falls_back_to_the_next_best_when_the_best_is_corrupt(tmp_path, caplog):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.6})
    os.truncate(os.path.join(uris[2], "model.ckpt.index"), 3)
    with caplog.at_level(logging.WARNING, logger="job.training.checkpoints"):
        restored = checkpoints.restore_best(run, str(tmp_path / "work"))
    assert restored is not None and restored.epoch == 3
    assert any(uris[2] in r.getMessage() and "model.ckpt.index" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------- prune


def test_prune_keeps_the_best_k_and_the_latest(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.6, 5: 0.7})
    deleted = checkpoints.prune(run, keep_best=2)
    assert sorted(deleted) == sorted([uris[1], uris[4]])
    assert [epoch for (epoch, _), _ in checkpoints.list_checkpoints(run)] == [5, 3, 2]
    assert not os.path.exists(uris[1]) and not os.path.exists(uris[4])
    # What is left still restores: the latest, and the best.
    assert checkpoints.restore_latest(run, str(tmp_path / "w1")).epoch == 5
    assert checkpoints.restore_best(run, str(tmp_path / "w2")).epoch == 2


def test_prune_when_the_latest_is_also_among_the_best(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.4, 3: 0.6, 4: 0.2})
    deleted = checkpoints.prune(run, keep_best=2)
    assert sorted(deleted) == sorted([uris[1], uris[3]])
    assert [epoch for (epoch, _), _ in checkpoints.list_checkpoints(run)] == [4, 2]


def test_prune_with_few_checkpoints_deletes_nothing(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.6, 3: 0.7})
    assert checkpoints.prune(run, keep_best=2) == []
    assert [epoch for (epoch, _), _ in checkpoints.list_checkpoints(run)] == [3, 2, 1]


def test_prune_counts_a_checkpoint_without_val_loss_as_worst(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.3, 3: 0.4, 4: 0.9})
    with open(os.path.join(uris[2], "state.json"), "w") as fh:
        json.dump({"epoch": 2}, fh)  # no val_loss recorded
    deleted = checkpoints.prune(run, keep_best=1)
    # Best by val_loss is epoch 3 (0.4); epoch 4 is the latest.
    assert sorted(deleted) == sorted([uris[1], uris[2]])
    assert [epoch for (epoch, _), _ in checkpoints.list_checkpoints(run)] == [4, 3]


def test_dir_name_is_zero_padded():
    assert checkpoint_dir_name(7) == "checkpoint_epoch-000007"


def _publish_mid_epoch(tmp_path, run: str, epoch: int, step: int) -> str:
    local = tmp_path / "staging" / checkpoint_dir_name(epoch, step)
    _make_local(local, epoch, 0.0)
    with open(local / "state.json", "w") as fh:  # no validation mid-epoch
        json.dump({"epoch": epoch, "step_in_epoch": step, "val_loss": None, "history": {}}, fh)
    checkpoints.write_manifest(str(local))
    uri = os.path.join(run, checkpoint_dir_name(epoch, step))
    checkpoints.publish(str(local), uri)
    return uri


def test_a_mid_epoch_checkpoint_resumes_but_is_never_the_best(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.4})
    mid = _publish_mid_epoch(tmp_path, run, 2, 17)
    latest = checkpoints.restore_latest(run, str(tmp_path / "w1"))
    assert (latest.uri, latest.epoch, latest.step_in_epoch) == (mid, 2, 17)
    assert checkpoints.restore_best(run, str(tmp_path / "w2")).uri == uris[2]


def test_prune_keeps_a_mid_epoch_checkpoint_only_while_it_is_the_latest(tmp_path):
    run, uris = _run(tmp_path, {1: 0.5, 2: 0.4})
    first = _publish_mid_epoch(tmp_path, run, 2, 10)
    checkpoints.prune(run, keep_best=2)
    assert [p for p, _ in checkpoints.list_checkpoints(run)] == [(2, 10), (2, 0), (1, 0)]
    _publish_mid_epoch(tmp_path, run, 2, 20)
    checkpoints.prune(run, keep_best=2)
    assert [p for p, _ in checkpoints.list_checkpoints(run)] == [(2, 20), (2, 0), (1, 0)]
    assert not os.path.exists(first)
    _publish(tmp_path, run, 3, 0.45)
    checkpoints.prune(run, keep_best=2)
    assert [p for p, _ in checkpoints.list_checkpoints(run)] == [(3, 0), (2, 0)]
