"""The transfer-learning recipe: head warm-up on a frozen backbone, then fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tf_keras

from job.config import load_config
from job.errors import UserError
from job.training import model as M
from job.training import transfer
from job.training.schedules import current_learning_rate

SIZE, K = 16, 3
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _float32_policy():
    yield
    tf_keras.mixed_precision.set_global_policy("float32")


def _cfg(*overrides: str):
    return load_config(None, ["model.backbone=small_cnn", "training.epochs=3", "transfer.frozen_epochs=1", *overrides])


def _model(cfg, frozen=True):
    model = M.build_model("small_cnn", K, SIZE, width=4, freeze_backbone=frozen, backbone_inference=True, seed=0)
    M.compile_model(model, learning_rate=0.01)
    model.optimizer.build(transfer.variables_that_will_train(model, cfg.transfer))
    return model


def _weights(layer) -> dict[str, np.ndarray]:
    return {w.name: w.numpy().copy() for w in layer.weights}


def test_the_fraction_and_the_layer_name_choose_the_top_layers():
    model = _model(_cfg())
    names = [layer.name for layer in transfer.backbone_of(model).layers]
    assert transfer.set_unfrozen(model, _cfg().transfer) == (len(names), len(names))
    trainable, total = transfer.set_unfrozen(model, _cfg("transfer.unfreeze_fraction=0.5").transfer)
    assert (trainable, total) == (len(names) - round(len(names) / 2), len(names))
    transfer.set_unfrozen(model, _cfg("transfer.unfreeze_from=block2_conv").transfer)
    flags = {layer.name: layer.trainable for layer in transfer.backbone_of(model).layers}
    assert not flags["block1_conv"] and flags["block2_conv"] and flags["block2_bn"]


def test_the_optimizer_has_slots_for_what_trains_later_and_the_model_stays_frozen():
    model = _model(_cfg())
    backbone = transfer.backbone_of(model)
    assert not backbone.trainable and len(model.trainable_variables) == 2  # the head's kernel and bias
    slots = {v.name for v in model.optimizer.variables}
    assert any("block0_conv" in name for name in slots)


def test_a_run_trains_the_head_then_fine_tunes_with_bn_in_inference_mode():
    cfg = _cfg("transfer.learning_rate_factor=0.1")
    model = _model(cfg)
    backbone = transfer.backbone_of(model)
    x = np.random.default_rng(0).uniform(0, 255, (32, SIZE, SIZE, 3)).astype("float32")
    y = (x.mean(axis=(1, 2)) > 127).astype("float32")
    bn = backbone.get_layer("block0_bn")
    start = _weights(backbone)
    seen: dict[int, dict] = {}

    class Watch(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = {"backbone": _weights(backbone), "lr": current_learning_rate(self.model.optimizer)}

    unfreeze = transfer.UnfreezeBackbone(cfg.transfer, unfrozen=False, rank=0)
    model.fit(x, y, batch_size=8, epochs=3, callbacks=[unfreeze, Watch()], verbose=0)
    conv = "block0_conv/kernel:0"
    conv_name = next(n for n in start if n.endswith(conv))
    # Epoch 1: the head alone.
    np.testing.assert_array_equal(seen[0]["backbone"][conv_name], start[conv_name])
    assert seen[0]["lr"] == pytest.approx(0.01)
    # Epoch 2 on: the backbone trains, with a tenth of the LR ...
    assert unfreeze.unfrozen
    assert not np.allclose(seen[2]["backbone"][conv_name], start[conv_name])
    assert seen[2]["lr"] == pytest.approx(0.001)
    # ... and BatchNorm keeps the statistics it came with (inference mode).
    for w in bn.weights:
        if "moving" in w.name:
            np.testing.assert_array_equal(w.numpy(), start[w.name])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.freeze_backbone=true"], "set one or the other"),
        (["training.epochs=1"], "would never be unfrozen"),
    ],
)
def test_recipes_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        transfer.check_transfer_options(_cfg(*overrides))


def test_an_unknown_unfreeze_layer_is_refused_with_close_names():
    cfg = _cfg("transfer.unfreeze_from=block2_con")
    with pytest.raises(UserError, match="Close names: block2_conv"):
        transfer.check_transfer_options(cfg, M.backbone_layer_names("small_cnn", SIZE, 4))


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "configs").glob("*.yaml")))
def test_every_preset_loads_and_its_recipe_fits_its_backbone(preset):
    cfg = load_config(preset)
    M.check_model_options(cfg.model.backbone, cfg.model.weights, cfg.data.image_size)
    names = M.backbone_layer_names(cfg.model.backbone, cfg.data.image_size, cfg.model.width)
    transfer.check_transfer_options(cfg, names)
    text = (REPO / "configs" / f"{preset}.yaml").read_text()
    assert f"--config {preset}" in text, "a preset starts with the command that runs it"
