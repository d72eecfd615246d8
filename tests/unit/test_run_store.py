"""job.storage.run_store: the one place that names a run's files; round trips on a real folder."""

from __future__ import annotations

import os

import pytest

from job.config import load_config
from job.errors import UserError
from job.launch.plan import resolve_run
from job.storage.run_store import RunStore, checkpoint_dir_name, checkpoint_position


def test_config_round_trip_keeps_the_config_labels_and_data(tmp_path):
    store = RunStore(str(tmp_path / "run"))
    cfg = load_config(None, ["training.epochs=3", "model.width=24"])
    store.write_config(cfg, run_name="r1", data_uri="s3://b/data", class_names=["sea", "sun"], facts={"x": 1})
    saved = store.read_config()
    assert saved.config == cfg
    assert saved.class_names == ["sea", "sun"] and saved.data_uri == "s3://b/data"
    assert os.path.isfile(tmp_path / "run" / "config.json")


def test_a_folder_without_config_is_not_a_run(tmp_path):
    store = RunStore(str(tmp_path))
    assert not store.is_run()
    with pytest.raises(UserError, match="is not a run folder .no config.json.*--output of a `train` run"):
        store.read_config()


def test_history_and_thresholds_are_none_until_written(tmp_path):
    store = RunStore(str(tmp_path))
    assert store.read_history() is None and store.read_thresholds() is None
    store.write_history([{"epoch": 1, "loss": 0.5}])
    store.write_thresholds({"thresholds": [0.3]})
    assert store.read_history() == [{"epoch": 1, "loss": 0.5}]
    assert store.read_thresholds() == {"thresholds": [0.3]}


def test_attempt_markers_count_worker_group_starts(tmp_path):
    store = RunStore(str(tmp_path))
    assert store.count_attempts() == 0
    store.record_attempt()
    store.record_attempt()
    assert store.count_attempts() == 2


def test_checkpoint_names_round_trip_and_reject_other_folders():
    assert checkpoint_dir_name(7) == "checkpoint_epoch-000007"
    assert checkpoint_position(checkpoint_dir_name(123)) == (123, 0)
    assert checkpoint_dir_name(2, 17) == "checkpoint_epoch-000002-step-00000017"
    assert checkpoint_position(checkpoint_dir_name(2, 17)) == (2, 17)
    assert checkpoint_position("checkpoint_epoch-000002-step-") is None
    # Names sort like positions, so a listing's order is the training order.
    names = [checkpoint_dir_name(e, s) for e, s in [(2, 0), (1, 500), (2, 3), (1, 0)]]
    assert sorted(names) == [checkpoint_dir_name(e, s) for e, s in [(1, 0), (1, 500), (2, 0), (2, 3)]]
    assert checkpoint_position("tensorboard") is None and checkpoint_position("checkpoint_epoch-12x") is None
    assert RunStore("s3://b/runs/r/").checkpoint_uri(2) == "s3://b/runs/r/checkpoint_epoch-000002"


def test_only_known_plots_can_be_written(tmp_path):
    with pytest.raises(ValueError, match="unknown plot"):
        RunStore(str(tmp_path)).write_plot("other.png", b"")


# ---------------------------------------------------------------------------- --output and --run-name


def test_output_is_the_run_folder_and_run_name_only_names_it():
    cfg = load_config(None, [])
    assert resolve_run("s3://b/runs/exp", "trial", cfg) == ("s3://b/runs/exp", "trial")
    assert resolve_run("s3://b/runs/exp/", None, cfg) == ("s3://b/runs/exp", "exp")
    assert resolve_run("/tmp/runs/local", None, load_config(None, ["run_name=nightly"])) == (
        "/tmp/runs/local",
        "nightly",
    )


def test_an_output_with_no_folder_is_refused():
    with pytest.raises(UserError, match="names no run folder"):
        resolve_run("/", None, load_config(None, []))


@pytest.mark.parametrize("name", ["../../x", "/abs/run", "a b", "", "x" * 65, "-flag", "run/1", "é"])
def test_run_names_outside_the_safe_set_are_refused_naming_the_rule(name):
    cfg = load_config(None, [])
    if name == "":
        assert resolve_run("s3://b/runs/exp", name, cfg)[1] == "exp"  # empty: the folder's name
        return
    with pytest.raises(UserError, match="letters, digits"):
        resolve_run("s3://b/runs/exp", name, cfg)
    with pytest.raises(UserError, match="letters, digits"):
        resolve_run("s3://b/runs/exp", None, load_config(None, [f"run_name={name}"]))
