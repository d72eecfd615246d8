"""Run configuration: frozen dataclasses, YAML presets, `--set a.b=v` overrides, validation.

Every field carries a one-line help text and, where it matters, its allowed range. A config
that names an unknown key, has a value of the wrong type or out of range is refused before
any work starts, with an error that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from job.errors import UserError


class ConfigError(UserError):
    """The configuration is invalid; the message names the key."""


def setting(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    parse: Callable[[str, Any], Any] | None = None,
) -> Any:
    """A dataclass field with its help text and allowed values in metadata.

    `parse(key, value)`, where given, replaces the type and range checks: it returns the
    field's value or raises ConfigError (for values that are not a plain scalar).
    """
    return field(default=default, metadata={"help": help, "min": min, "max": max, "choices": choices, "parse": parse})


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# Below the Linux ephemeral range (32768+), so Ray's own listeners cannot take them.
DEFAULT_DRIVER_PORT = 9400
DEFAULT_WORKER_PORT_BASE = 9401
DEFAULT_LEASE_TIMEOUT_SECONDS = 60.0
SCHEDULES = ("plateau", "constant", "cosine")
# Ray placement group strategies for the worker group (ray.train.ScalingConfig.placement_strategy).
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
LOSSES = ("bce", "asymmetric")
# How a Ray run's workers get their training examples (docs/performance.md, "Ingest paths").
INGEST_PATHS = ("direct", "ray_data")
BACKBONES = (
    "small_vgg",
    "small_cnn",
    "xception",
    "inception_v3",
    "resnet50",
    "efficientnet_b0",
    "mobilenet_v3_small",
)


# ---------------------------------------------------------------------------- augmentation policy

# Every augmentation op: its default strength (None: it has none) and the strength's range.
# job/data/augment.py implements them; a unit test keeps the two lists the same.
AUGMENT_OPS: dict[str, tuple[float | None, tuple[float, float] | None]] = {
    "flip_left_right": (None, None),
    "flip_up_down": (None, None),
    "brightness": (0.08, (0.0, 1.0)),  # max shift, as a share of the pixel range
    "contrast": (0.15, (0.0, 0.9)),  # max relative change of contrast
    "random_resized_crop": (0.5, (0.05, 1.0)),  # smallest share of the image area kept
}
# Label-preserving for most photos (not for text, digits or left/right labels: see docs/data.md).
DEFAULT_AUGMENT = ("flip_left_right", "brightness:0.08", "contrast:0.15")
# Images above this many pixels (width x height) are never decoded: ~120 MB as 8-bit RGB.
# job/data/image_limits.py reads the size from the header and says where it is enforced.
DEFAULT_MAX_PIXELS = 40_000_000


def parse_augment_policy(key: str, value: Any) -> tuple[str, ...]:
    """A policy as canonical op strings ("flip_left_right", "brightness:0.2").

    Accepts a list of "NAME" / "NAME:STRENGTH" strings or {NAME: STRENGTH} mappings, one
    comma-separated string, "none" or [] (no augmentation), and the old booleans (true: the
    default policy, which is what `augment: true` did; false: none).
    """
    if isinstance(value, bool):
        return DEFAULT_AUGMENT if value else ()
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(
            f"Config key {key} must be a list of augmentation ops, e.g. [flip_left_right, brightness:0.1]; "
            f"got {value!r}."
        )
    ops: list[str] = []
    for item in value:
        if isinstance(item, Mapping) and len(item) == 1:
            item = "{}:{}".format(*next(iter(item.items())))
        if not isinstance(item, str):
            raise ConfigError(f"Config key {key}: {item!r} is not an op name (NAME or NAME:STRENGTH).")
        name, _, strength_text = item.strip().partition(":")
        if name == "none":
            continue
        ops.append(_augment_op(key, name.strip(), strength_text.strip()))
    names = [op.partition(":")[0] for op in ops]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"Config key {key} names {', '.join(repeated)} more than once.")
    return tuple(ops)


def _augment_op(key: str, name: str, strength_text: str) -> str:
    if name not in AUGMENT_OPS:
        hint = difflib.get_close_matches(name, list(AUGMENT_OPS), n=1)
        suggestion = f" Did you mean {hint[0]}?" if hint else ""
        raise ConfigError(
            f"Config key {key}: unknown augmentation op {name!r}.{suggestion} Known ops: "
            f"{', '.join(AUGMENT_OPS)}, none."
        )
    default, bounds = AUGMENT_OPS[name]
    if not strength_text:
        return name if default is None else f"{name}:{default:g}"
    if bounds is None:
        raise ConfigError(f"Config key {key}: {name} takes no strength (got {name}:{strength_text}).")
    try:
        strength = float(strength_text)
    except ValueError:
        raise ConfigError(
            f"Config key {key}: the strength of {name} must be a number, got {strength_text!r}."
        ) from None
    low, high = bounds
    if not low < strength <= high:
        raise ConfigError(f"Config key {key}: the strength of {name} must be in ({low:g}, {high:g}], got {strength:g}.")
    return f"{name}:{strength:g}"


@dataclass(frozen=True)
class DataConfig:
    """How examples are decoded and batched."""

    image_size: int = setting(64, "Height and width (pixels) images are resized to.", min=16, max=1024)
    batch_size_per_worker: int = setting(
        32, "Examples per batch on each worker; global batch = this x num_workers.", min=1, max=65536
    )
    shuffle_buffer_examples: int = setting(
        1024, "Shuffle buffer size in examples (bounds memory, not the data set size).", min=0, max=1_000_000
    )
    prefetch_batches: int = setting(2, "Batches prepared ahead of the model (bounded, not AUTOTUNE).", min=0, max=64)
    parallel_calls: int = setting(0, "Parallel decode calls in tf.data; 0 lets tf.data tune it.", min=0, max=256)
    augment: tuple[str, ...] = setting(
        DEFAULT_AUGMENT,
        "Augmentation policy for training images: a list of ops, each NAME or NAME:STRENGTH "
        f"({', '.join(AUGMENT_OPS)}); [] or none for no augmentation. docs/data.md says which "
        "ops keep which labels.",
        parse=lambda key, value: parse_augment_policy(key, value),
    )
    ingest: str = setting(
        "direct",
        "How Ray Train workers read the data set: direct (each worker streams its own share of "
        "the shard files from storage and decodes on its own CPUs) or ray_data (Ray Data reads "
        "and splits, possibly on other nodes). Single-process runs always read directly.",
        choices=INGEST_PATHS,
    )
    cache_validation: bool = setting(True, "Keep the val split's encoded images in memory after the first epoch.")
    verify_checksums: bool = setting(True, "Check every shard's size and sha256 against dataset.json before training.")
    max_pixels: int = setting(
        DEFAULT_MAX_PIXELS,
        "Largest image (width x height pixels) decoded; a larger one is skipped (training, "
        "evaluation) or refused (predict, the exported model), read from its header without "
        "decoding it. prepare --max-pixels refuses it up front.",
        min=1,
        max=4_000_000_000,
    )


@dataclass(frozen=True)
class ModelConfig:
    """The network: a backbone and a logits head."""

    backbone: str = setting(
        "small_vgg", "Backbone network: small_vgg from scratch, or a Keras application.", choices=BACKBONES
    )
    weights: str = setting("none", "'none', 'imagenet', or a path to a weights file.")
    freeze_backbone: bool = setting(False, "Keep the backbone's weights fixed and train the head only.")
    width: int = setting(32, "Filters in the first stage of small_vgg / small_cnn (doubles per stage).", min=4, max=512)
    dropout_rate: float = setting(0.2, "Dropout before the logits head.", min=0.0, max=0.9)


@dataclass(frozen=True)
class TrainingConfig:
    """The optimisation and the seed's callbacks."""

    epochs: int = setting(10, "Number of passes over the training split.", min=1, max=100_000)
    learning_rate: float = setting(0.002, "Adam learning rate (the peak of the cosine schedule).", min=1e-8, max=10.0)
    schedule: str = setting(
        "plateau",
        "LR schedule: plateau (constant, cut on a val_loss plateau: the seed's), constant, or "
        "cosine (linear warm-up, then cosine decay to min_learning_rate).",
        choices=SCHEDULES,
    )
    warmup_epochs: float = setting(1.0, "Linear warm-up of the cosine schedule, in epochs.", min=0.0, max=10_000.0)
    weight_decay: float = setting(
        0.0, "Decoupled weight decay (AdamW) on kernels; 0 means plain Adam.", min=0.0, max=1.0
    )
    loss: str = setting("bce", "Loss on logits: bce (binary cross-entropy) or asymmetric (ASL).", choices=LOSSES)
    asl_gamma_neg: float = setting(4.0, "ASL focusing exponent for negatives.", min=0.0, max=20.0)
    asl_gamma_pos: float = setting(0.0, "ASL focusing exponent for positives.", min=0.0, max=20.0)
    asl_clip: float = setting(0.05, "ASL probability margin: negatives scored below it cost nothing.", min=0.0, max=0.5)
    seed: int = setting(42, "One seed for the split, shuffling, augmentation and weight init.", min=0, max=2**31 - 1)
    precision: str = setting("float32", "Numeric precision; the logits head and loss stay float32.", choices=PRECISIONS)
    jit_compile: bool = setting(False, "Compile the train step with XLA.")
    terminate_on_nan: bool = setting(True, "Stop the run when the loss becomes NaN.")
    restore_best_weights: bool = setting(True, "Evaluate the checkpoint with the lowest val_loss, not the last one.")
    reduce_lr_patience_epochs: int = setting(
        3,
        "Epochs without val_loss improvement before the LR is cut (schedule plateau); 0 disables.",
        min=0,
        max=10_000,
    )
    reduce_lr_factor: float = setting(0.5, "Factor applied to the LR on plateau.", min=0.01, max=0.99)
    min_learning_rate: float = setting(
        1e-6, "Lower bound for the LR on plateau; the final LR of the cosine schedule.", min=0.0, max=1.0
    )
    early_stopping_patience_epochs: int = setting(
        5, "Epochs without val_loss improvement before stopping; 0 disables.", min=0, max=10_000
    )
    tensorboard: bool = setting(True, "Write TensorBoard event files (rank 0) and sync them to RUN/tensorboard/.")


@dataclass(frozen=True)
class TransferConfig:
    """The transfer-learning recipe: train the head on a frozen pretrained backbone, then
    fine-tune the top of the backbone with a smaller LR (its BatchNorm stays in inference mode)."""

    frozen_epochs: int = setting(
        0,
        "Epochs that train the head only, on a frozen backbone, before the unfreeze; 0 turns the recipe off.",
        min=0,
        max=100_000,
    )
    unfreeze_from: str = setting(
        "", "First backbone layer (by name) made trainable at the unfreeze; empty: use unfreeze_fraction."
    )
    unfreeze_fraction: float = setting(
        1.0, "Share of the backbone's layers, counted from the top, made trainable at the unfreeze.", min=0.01, max=1.0
    )
    learning_rate_factor: float = setting(0.1, "The LR is multiplied by this at the unfreeze.", min=1e-4, max=1.0)


@dataclass(frozen=True)
class ScalingConfig:
    """How many workers, and what each one gets."""

    num_workers: int = setting(
        2,
        "Ray Train workers (one TensorFlow replica each). Elastic: [min, max] in YAML or --set "
        "scaling.num_workers=[1,4] (stored as min_workers and num_workers = max).",
        min=1,
        max=4096,
    )
    min_workers: int = setting(
        0,
        "Elastic runs: the fewest workers to train with (0: not elastic, always num_workers). The group "
        "shrinks when nodes are lost and grows back at the next resize check when they return.",
        min=0,
        max=4096,
    )
    worker_node_resource: str = setting(
        "",
        "A custom Ray resource every worker node advertises one of (ray start --resources); each training "
        "worker takes one, so no node ever holds two workers: SPREAD only prefers that, and an elastic run "
        "would otherwise double up on the nodes left after a loss and starve Ray Data of CPUs. Empty: none.",
    )
    resize_check_seconds: float = setting(
        60.0, "Elastic runs: how often Ray Train checks whether more workers now fit.", min=1.0, max=86400.0
    )
    use_gpu: bool = setting(False, "Give every worker GPUs.")
    gpus_per_worker: float = setting(1.0, "GPUs per worker when use_gpu is on.", min=0.0, max=16.0)
    cpus_per_worker: float = setting(1.0, "Logical CPUs per worker.", min=0.0, max=1024.0)
    data_cpus: float = setting(
        1.0,
        "Logical CPUs kept free for Ray Data read tasks on a local Ray (data.ingest: ray_data).",
        min=0.5,
        max=1024.0,
    )
    max_failures: int = setting(1, "Worker-group restarts Ray Train may make before the run fails.", min=0, max=1000)
    max_preemption_failures: int = setting(
        -1,
        "Worker-group restarts after a preemption (a node drained with a deadline, e.g. a spot reclaim) "
        "before the run fails; counted apart from max_failures. -1: no limit.",
        min=-1,
        max=100_000,
    )
    preemption_grace_seconds: float = setting(
        0.0,
        "After a preemption's deadline, how long Ray Train keeps the surviving workers before restarting the group.",
        min=0.0,
        max=3600.0,
    )
    placement_strategy: str = setting(
        "PACK",
        "How Ray places the workers: PACK fills a node first; SPREAD puts each on its own node where it can.",
        choices=PLACEMENT_STRATEGIES,
    )
    resources_timeout_seconds: float = setting(
        600.0,
        "On a running Ray cluster, how long to wait (asking its autoscaler, if any) for nodes that can hold "
        "the workers plus one CPU for Ray Data before failing.",
        min=0.0,
        max=86400.0,
    )


@dataclass(frozen=True)
class CheckpointConfig:
    """Checkpoints written by rank 0 and reported to Ray Train."""

    every_epochs: int = setting(1, "Save a checkpoint every N epochs (and always after the last).", min=1, max=10_000)
    every_steps: int = setting(
        0,
        "Also save a mid-epoch checkpoint every N steps of an epoch (0: only at epoch ends); a resumed "
        "run continues from that step.",
        min=0,
        max=10_000_000,
    )
    upload: str = setting(
        "async",
        "async: a save blocks training only for the local write and uploads in the background (Ray runs); "
        "sync: training waits for the upload. The last checkpoint and a preemption's are always sync.",
        choices=("async", "sync"),
    )
    preemption_check_steps: int = setting(
        1,
        "Every N steps, all workers ask Ray Train whether a node of theirs is being preempted.",
        min=1,
        max=100_000,
    )
    preemption_margin_seconds: float = setting(
        10.0,
        "On a preemption notice, keep training until this long (or 3 x the slowest save, if longer) "
        "before the deadline, then save and wait for the restart.",
        min=0.0,
        max=3600.0,
    )
    keep_best: int = setting(2, "Checkpoints kept by lowest val_loss (the latest is kept as well).", min=1, max=1000)


def parse_bind_address(key: str, value: Any) -> str:
    """`telemetry.bind_address`: "auto" (job.telemetry.resolve_bind_address) or an IP address.

    Host names are refused: one name can stand for several addresses, and a typo would only
    show up as a missing /metrics endpoint. Returns the address in its canonical spelling.
    """
    expected = f"Config key {key} must be auto or an IP address such as 127.0.0.1 or 0.0.0.0"
    if not isinstance(value, str):
        hint = " (quote an IPv6 address: '\"::\"')" if isinstance(value, dict) else ""
        raise ConfigError(f"{expected}, got {value!r}{hint}.")
    value = value.strip()
    if value == "auto":
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{expected}, got {value!r}.") from None


@dataclass(frozen=True)
class TelemetryConfig:
    """Prometheus metrics."""

    enabled: bool = setting(True, "Serve Prometheus metrics from the driver and every worker.")
    driver_port: int = setting(DEFAULT_DRIVER_PORT, "Port of the driver's /metrics.", min=1024, max=32767)
    worker_port_base: int = setting(
        DEFAULT_WORKER_PORT_BASE, "Worker with local rank k serves /metrics on this + k.", min=1024, max=32767
    )
    final_scrape_wait_seconds: float = setting(
        0.0, "Keep the driver's /metrics up this long after the run ends.", min=0.0, max=3600.0
    )
    bind_address: str = setting(
        "auto",
        "Address the /metrics servers listen on: auto (loopback, or all interfaces in a Kubernetes pod "
        "or on a Ray cluster joined through RAY_ADDRESS), or an IP such as 127.0.0.1 or 0.0.0.0.",
        parse=lambda key, value: parse_bind_address(key, value),
    )


# What predictions.png shows (evaluation.prediction_grid; docs/predictions.md).
PREDICTION_GRIDS = ("first", "worst")


@dataclass(frozen=True)
class EvaluationConfig:
    """Evaluation of the best checkpoint."""

    threshold_objective: str = setting(
        "f1", "What per-label thresholds maximise on the validation split.", choices=("f1", "none")
    )
    prediction_grid_images: int = setting(16, "Test images shown in predictions.png.", min=0, max=256)
    prediction_grid: str = setting(
        "first",
        "Which test images predictions.png shows: 'first' (data set order) or 'worst' (the worst false "
        "positives and negatives at the tuned thresholds, as report.md lists them; a second read of the split "
        "decodes only those).",
        choices=PREDICTION_GRIDS,
    )
    correlated_pair_threshold: float = setting(
        0.95, "Flag label pairs whose P(j|i) and P(i|j) both reach this.", min=0.5, max=1.0
    )


@dataclass(frozen=True)
class Config:
    """A whole run."""

    run_name: str = setting("", "Stable run name; empty means the last part of --output.")
    lease_timeout_seconds: float = setting(
        DEFAULT_LEASE_TIMEOUT_SECONDS,
        "A run holds a lease on --output and renews it every quarter of this; a second run takes it over "
        "only when it is this old (or its holder provably exited, or belongs to the same JOB_RUN_CHAIN).",
        min=2.0,
        max=3600.0,
    )
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


# ---------------------------------------------------------------------------- loading

# Where `--config NAME` (a preset name, not a path) is looked up: first the folder this
# variable names (the image sets it to where it copies configs/, because there the package
# is installed in site-packages, away from the repository), then the repository's configs/.
PRESET_DIR_ENV = "MULTILABEL_CONFIG_DIR"
REPO_PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_dirs() -> list[Path]:
    """The folders searched for preset names, in order."""
    dirs = [Path(d) for d in (os.environ.get(PRESET_DIR_ENV),) if d]
    return dirs + [REPO_PRESET_DIR]


def find_preset(name: str) -> Path | None:
    """The YAML file of preset `name` (e.g. "demo"), or None if no preset folder has it."""
    for folder in preset_dirs():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def _resolve_config_path(path: str | Path) -> Path:
    """`path` itself if it is a file; a bare name like "demo" as a preset; else a ConfigError."""
    p = Path(path)
    if p.is_file():
        return p
    is_bare_name = p.suffix == "" and len(p.parts) == 1
    preset = find_preset(str(p)) if is_bare_name else None
    if preset is not None:
        return preset
    searched = ", ".join(str(d) for d in preset_dirs())
    raise ConfigError(
        f"Config file {p} does not exist. Pass an existing YAML file (e.g. --config configs/demo.yaml) "
        f"or a preset name (e.g. --config demo; presets are looked up in {searched})."
    )


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML preset (or the defaults) and apply `section.key=value` overrides.

    Args:
        path: a YAML file, a preset name (see `find_preset`), or None for the built-in defaults.
        overrides: strings like "model.width=16"; values are parsed as YAML scalars.
    Returns:
        A validated, frozen Config.
    Raises:
        ConfigError naming the offending key.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = _resolve_config_path(path)
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"Config file {p} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"Config file {p} must hold a mapping of sections (data:, model:, ...), not {type(loaded).__name__}."
            )
        raw = loaded or {}
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw)


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a validated Config from nested dicts (as found in YAML or config.json)."""
    config = _build(Config, _split_worker_range(raw), prefix="")
    s = config.scaling
    if s.min_workers > s.num_workers:
        raise ConfigError(
            f"scaling.min_workers ({s.min_workers}) is above scaling.num_workers ({s.num_workers}); "
            "give the range as scaling.num_workers=[min,max]."
        )
    return config


def _split_worker_range(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """`scaling.num_workers: [min, max]` as min_workers and num_workers (= max)."""
    scaling = raw.get("scaling") if isinstance(raw, Mapping) else None
    if not isinstance(scaling, Mapping) or not isinstance(scaling.get("num_workers"), (list, tuple)):
        return raw
    bounds = scaling["num_workers"]
    if len(bounds) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds):
        raise ConfigError(f"Config key scaling.num_workers must be an integer or [min, max], got {list(bounds)!r}.")
    if "min_workers" in scaling:
        raise ConfigError("Give scaling.num_workers as [min, max] or scaling.min_workers, not both.")
    low, high = bounds
    if not 1 <= low <= high:
        raise ConfigError(f"Config key scaling.num_workers = [{low}, {high}] needs 1 <= min <= max.")
    return {**raw, "scaling": {**scaling, "num_workers": high, "min_workers": low}}


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts, for config.json and logs."""
    return dataclasses.asdict(config)


def describe(config: Config) -> str:
    """The resolved config as YAML text (the --verbose start-of-run log)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False).rstrip()


def describe_changes(config: Config) -> str:
    """The settings that differ from the built-in defaults, as `section.key=value` on one line."""
    defaults = config_to_dict(Config())
    changed = []
    for section, values in config_to_dict(config).items():
        if not isinstance(values, dict):
            if values != defaults[section]:
                changed.append(f"{section}={values}")
            continue
        changed += [
            f"{section}.{key}={_as_text(value)}" for key, value in values.items() if value != defaults[section][key]
        ]
    return " ".join(changed) or "(all defaults)"


def _as_text(value: Any) -> str:
    """A value as a user would type it after --set (a policy as [a,b], not a Python tuple)."""
    return f"[{','.join(value)}]" if isinstance(value, tuple) else str(value)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"Override {item!r} must look like section.key=value, e.g. --set training.epochs=5.")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"Override {item!r} has an empty key part.")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override {item!r}: {part} is a value, not a section.")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(fields), n=1)
        suggestion = f" Did you mean {prefix}{hint[0]}?" if hint else ""
        raise ConfigError(
            f"Unknown config key {prefix}{key}.{suggestion} Known keys here: {', '.join(prefix + n for n in fields)}."
        )
    values = {}
    for name, f in fields.items():
        key = prefix + name
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            section = raw.get(name)
            values[name] = _build(f.default_factory, {} if section is None else section, prefix=key + ".")
            continue
        if name not in raw:
            continue
        values[name] = _check_value(key, f, raw[name])
    return cls(**values)


def _check_value(key: str, f: dataclasses.Field, value: Any) -> Any:
    if f.metadata.get("parse") is not None:
        return f.metadata["parse"](key, value)
    expected = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool, "str": str}[f.type]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is float and isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; accept any plain float spelling.
        try:
            value = float(value)
        except ValueError:
            pass
    if expected is str and value is None:
        value = ""
    # bool is an int in Python; refuse it where a number is meant, and vice versa.
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f"Config key {key} must be {expected.__name__}, got {value!r} ({type(value).__name__}).")
    meta = f.metadata
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(f"Config key {key} must be a number, got nan.")
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"Config key {key} = {value!r} is below its minimum {meta['min']}. ({meta['help']})")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"Config key {key} = {value!r} is above its maximum {meta['max']}. ({meta['help']})")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"Config key {key} = {value!r} is not one of: {', '.join(meta['choices'])}.")
    return value
