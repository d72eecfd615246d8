"""Run config: presets load, `--set` overrides are typed, and every bad value names its key.

Each failure test checks the message a user reads: the full dotted key, and the bound or the
close match that tells them what to type instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

from job.config import (
    PRESET_DIR_ENV,
    Config,
    ConfigError,
    config_from_dict,
    config_to_dict,
    describe,
    find_preset,
    load_config,
)
from job.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Every YAML in the repo that is a training config (the k8s ConfigMaps are mounted as
# --config on the Ray head, so a key the job does not know would fail the RayJob).
TRAINING_CONFIGS = [
    "configs/demo.yaml",
    "configs/transfer-efficientnet.yaml",
    "configs/transfer-inception.yaml",
    "k8s/base/train-config.yaml",
    "k8s/overlays/local/train-config.yaml",
]


# ---------------------------------------------------------------------------- loading


def test_defaults_load_and_match_the_dataclass():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.data.image_size == 64
    assert cfg.training.learning_rate == pytest.approx(0.002)
    assert cfg.model.backbone == "small_vgg"


def test_every_yaml_under_configs_is_in_the_list():
    # A new preset must be added to TRAINING_CONFIGS so it is loaded below.
    found = sorted(f"configs/{n}" for n in os.listdir(os.path.join(REPO, "configs")) if n.endswith((".yaml", ".yml")))
    assert found, "configs/ holds no presets"
    assert set(found) <= set(TRAINING_CONFIGS)


@pytest.mark.parametrize("rel", TRAINING_CONFIGS)
def test_training_config_files_load(rel):
    cfg = load_config(os.path.join(REPO, rel))
    assert isinstance(cfg, Config)
    # The file's values win over the defaults (each file sets the worker count and image size).
    assert cfg.scaling.num_workers == 2
    assert cfg.data.image_size in (64, 224, 299)


def test_demo_preset_values_are_applied():
    cfg = load_config(os.path.join(REPO, "configs/demo.yaml"))
    assert (cfg.model.backbone, cfg.model.width) == ("small_vgg", 16)
    assert (cfg.training.epochs, cfg.training.schedule) == (16, "cosine")
    assert cfg.data.augment == ("flip_left_right", "brightness:0.08", "contrast:0.15")
    assert cfg.training.learning_rate == pytest.approx(0.003)
    # Keys the preset does not set keep their defaults.
    assert cfg.training.precision == "float32"


def test_base_overlay_preset_values_are_applied():
    cfg = load_config(os.path.join(REPO, "k8s/base/train-config.yaml"))
    assert cfg.model.backbone == "resnet50"
    assert cfg.training.precision == "mixed_float16"
    assert cfg.scaling.use_gpu is True


def test_empty_yaml_file_gives_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing set\n")
    assert load_config(path) == Config()


def test_overrides_apply_on_top_of_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 16\ntraining:\n  epochs: 3\n")
    cfg = load_config(path, ["training.epochs=7"])
    assert cfg.model.width == 16
    assert cfg.training.epochs == 7


def test_missing_file_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_preset_name_loads_the_repository_preset():
    assert load_config("demo") == load_config(os.path.join(REPO, "configs", "demo.yaml"))


def test_preset_folder_from_the_environment_wins(tmp_path, monkeypatch):
    # As in the image, where the package sits in site-packages and the presets elsewhere.
    (tmp_path / "demo.yaml").write_text("training:\n  epochs: 3\n")
    monkeypatch.setenv(PRESET_DIR_ENV, str(tmp_path))
    assert find_preset("demo") == tmp_path / "demo.yaml"
    assert load_config("demo").training.epochs == 3


def test_unknown_preset_name_says_where_presets_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv(PRESET_DIR_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config("no-such-preset")
    assert str(tmp_path) in str(info.value)
    assert os.path.join(REPO, "configs") in str(info.value)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_file_is_refused(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must hold a mapping") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_yaml_file_is_refused(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_config_error_is_a_user_error():
    # The CLI prints UserErrors without a traceback; a config mistake must be one.
    assert issubclass(ConfigError, UserError)


# ---------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "override, section, key, expected",
    [
        ("model.width=48", "model", "width", 48),
        ("training.epochs=3", "training", "epochs", 3),
        ("training.learning_rate=0.01", "training", "learning_rate", 0.01),
        # YAML 1.1 reads "1e-3" as a string; it must still become a float.
        ("training.learning_rate=1e-3", "training", "learning_rate", 0.001),
        ("training.learning_rate=2.5E-4", "training", "learning_rate", 0.00025),
        # An int where a float is meant is fine.
        ("model.dropout_rate=0", "model", "dropout_rate", 0.0),
        ("data.augment=false", "data", "augment", ()),
        ("scaling.use_gpu=true", "scaling", "use_gpu", True),
        ("model.backbone=resnet50", "model", "backbone", "resnet50"),
        ("model.weights=/tmp/w.h5", "model", "weights", "/tmp/w.h5"),
        ("training.precision=mixed_bfloat16", "training", "precision", "mixed_bfloat16"),
    ],
)
def test_override_of_each_type(override, section, key, expected):
    cfg = load_config(None, [override])
    value = getattr(getattr(cfg, section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_float_override_in_scientific_notation_is_a_float():
    cfg = load_config(None, ["training.min_learning_rate=1e-7"])
    assert isinstance(cfg.training.min_learning_rate, float)
    assert cfg.training.min_learning_rate == pytest.approx(1e-7)


def test_top_level_string_override():
    assert load_config(None, ["run_name=nightly"]).run_name == "nightly"
    # An empty value means the empty string, not "missing".
    assert load_config(None, ["run_name="]).run_name == ""


def test_later_override_wins():
    cfg = load_config(None, ["model.width=8", "model.width=64"])
    assert cfg.model.width == 64


def test_float_from_yaml_file_in_scientific_notation(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 3e-4\n")
    cfg = load_config(path)
    assert cfg.training.learning_rate == pytest.approx(3e-4)


@pytest.mark.parametrize("override", ["model.width", "model.width 16", ""])
def test_malformed_override_says_how_to_write_it(override):
    with pytest.raises(ConfigError, match="section.key=value") as info:
        load_config(None, [override])
    assert repr(override) in str(info.value)


def test_override_with_empty_key_part_is_refused():
    with pytest.raises(ConfigError, match="empty key part"):
        load_config(None, ["model..width=3"])


def test_override_below_a_value_is_refused():
    # run_name is a value, not a section: "run_name.x=1" must not create a section.
    with pytest.raises(ConfigError, match="run_name"):
        load_config(None, ["run_name=abc", "run_name.x=1"])


# ---------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("modle.width=3", "modle", "model"),
        ("trainig.epochs=3", "trainig", "training"),
        ("model.widht=3", "model.widht", "model.width"),
        ("training.learning_rat=0.1", "training.learning_rat", "training.learning_rate"),
        ("data.batch_size=8", "data.batch_size", "data.batch_size_per_worker"),
    ],
)
def test_unknown_key_names_it_and_suggests_the_close_match(override, key, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"Unknown config key {key}." in message
    assert f"Did you mean {suggestion}?" in message


def test_unknown_key_without_a_close_match_lists_the_known_keys():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["checkpoint.zzzzzz=1"])
    message = str(info.value)
    assert "checkpoint.zzzzzz" in message
    assert "Did you mean" not in message
    assert "checkpoint.every_epochs" in message and "checkpoint.keep_best" in message


def test_unknown_key_in_a_yaml_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  width: 16\n  dropout: 0.1\n")
    with pytest.raises(ConfigError, match=r"model\.dropout\. Did you mean model\.dropout_rate\?"):
        load_config(path)


def test_section_that_is_not_a_mapping_names_the_section():
    with pytest.raises(ConfigError, match="model must be a mapping"):
        load_config(None, ["model=5"])


# ---------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    "override, key, expected_type",
    [
        ("model.width=wide", "model.width", "int"),  # str for int
        ("model.width=true", "model.width", "int"),  # bool for int (bool is an int in Python)
        ("model.width=16.5", "model.width", "int"),  # float for int
        ("training.jit_compile=1", "training.jit_compile", "bool"),  # int for bool
        ("training.jit_compile=maybe", "training.jit_compile", "bool"),  # str for bool
        ("training.learning_rate=fast", "training.learning_rate", "float"),  # str for float
        ("training.learning_rate=true", "training.learning_rate", "float"),  # bool for float
        ("model.backbone=5", "model.backbone", "str"),  # int for str
    ],
)
def test_wrong_type_names_the_key_and_the_type(override, key, expected_type):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"Config key {key} must be {expected_type}" in message


# ---------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("data.image_size=8", "data.image_size", "below its minimum 16"),
        ("data.image_size=2048", "data.image_size", "above its maximum 1024"),
        ("data.batch_size_per_worker=0", "data.batch_size_per_worker", "below its minimum 1"),
        ("model.dropout_rate=0.95", "model.dropout_rate", "above its maximum 0.9"),
        ("training.learning_rate=0", "training.learning_rate", "below its minimum 1e-08"),
        ("training.learning_rate=-1e-3", "training.learning_rate", "below its minimum 1e-08"),
        ("training.learning_rate=.inf", "training.learning_rate", "above its maximum 10.0"),
        ("telemetry.driver_port=80", "telemetry.driver_port", "below its minimum 1024"),
        ("checkpoint.keep_best=0", "checkpoint.keep_best", "below its minimum 1"),
    ],
)
def test_out_of_range_names_the_key_and_the_bound(override, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"Config key {key} = " in message
    assert fragment in message


@pytest.mark.parametrize(
    "override, key, choice",
    [
        ("model.backbone=vgg16", "model.backbone", "small_cnn"),
        ("training.precision=float16", "training.precision", "mixed_float16"),
        ("evaluation.threshold_objective=accuracy", "evaluation.threshold_objective", "f1"),
    ],
)
def test_value_not_in_choices_names_the_key_and_the_choices(override, key, choice):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert f"Config key {key} = " in message
    assert "is not one of" in message and choice in message


@pytest.mark.parametrize("override", ["training.learning_rate=nan", "model.dropout_rate=.nan"])
def test_nan_is_out_of_range(override):
    # NaN compares False with every bound, so a plain `value < min` check lets it through;
    # a NaN learning rate or dropout rate only shows up later as a NaN loss.
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


def test_bounds_themselves_are_accepted():
    cfg = load_config(
        None, ["data.image_size=16", "data.image_size=1024", "model.dropout_rate=0.9", "checkpoint.keep_best=1"]
    )
    assert cfg.data.image_size == 1024
    assert cfg.model.dropout_rate == pytest.approx(0.9)


# ---------------------------------------------------------------------------- dict round trip, frozen


def test_dict_round_trip_is_identical():
    cfg = load_config(
        os.path.join(REPO, "configs/demo.yaml"),
        ["run_name=r1", "training.learning_rate=1e-3", "data.augment=false", "model.backbone=xception"],
    )
    as_dict = config_to_dict(cfg)
    again = config_from_dict(as_dict)
    assert again == cfg
    assert config_to_dict(again) == as_dict
    # ... and through JSON, as a saved run's config.json is read back (lists, not tuples).
    assert config_from_dict(json.loads(json.dumps(as_dict))) == cfg
    # Plain nested dicts, as saved to config.json.
    assert as_dict["training"]["learning_rate"] == pytest.approx(1e-3)
    assert as_dict["model"]["backbone"] == "xception"


def test_describe_is_yaml_that_loads_back(tmp_path):
    cfg = load_config(None, ["model.width=24", "run_name=abc"])
    path = tmp_path / "resolved.yaml"
    path.write_text(describe(cfg))
    assert load_config(path) == cfg


def test_config_from_dict_validates_like_load_config():
    with pytest.raises(ConfigError, match="model.width = 2 is below its minimum 4"):
        config_from_dict({"model": {"width": 2}})


@pytest.mark.parametrize("target, attr", [("config", "run_name"), ("model", "width"), ("training", "epochs")])
def test_config_is_frozen(target, attr):
    cfg = load_config()
    obj = cfg if target == "config" else getattr(cfg, target)
    before = getattr(obj, attr)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, 1)
    assert getattr(obj, attr) == before


def test_every_field_has_help_text():
    # The help text is what error messages and --help show; an empty one is a mistake.
    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
                yield from walk(f.default_factory, prefix + f.name + ".")
            else:
                yield prefix + f.name, f.metadata.get("help", "")

    missing = [key for key, text in walk(Config) if not text]
    assert missing == []


def test_an_elastic_worker_range_is_min_and_max_workers():
    cfg = load_config(None, ["scaling.num_workers=[1,4]"])
    assert (cfg.scaling.min_workers, cfg.scaling.num_workers) == (1, 4)
    # The resolved config (config.json) loads back to the same range.
    assert config_from_dict(config_to_dict(cfg)).scaling == cfg.scaling
    assert load_config(None, ["scaling.num_workers=3"]).scaling.min_workers == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("scaling.num_workers=[3,2]", "1 <= min <= max"),
        ("scaling.num_workers=[0,2]", "1 <= min <= max"),
        ("scaling.num_workers=[1,2,3]", "integer or [min, max]"),
        ("scaling.num_workers=[1.5,2]", "integer or [min, max]"),
    ],
)
def test_a_bad_worker_range_is_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_min_workers_above_num_workers_is_refused():
    with pytest.raises(ConfigError, match="min_workers"):
        load_config(None, ["scaling.min_workers=3", "scaling.num_workers=2"])
