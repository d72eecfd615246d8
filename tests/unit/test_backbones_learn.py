"""Every application backbone trained from scratch learns something in a short run.

They used to collapse: their BatchNorm momentum (0.99, MobileNetV3 0.999) is tuned for
ImageNet-length runs, so after a few hundred steps the moving statistics used at evaluation
were still near their initial values and the network gave every image the same logits
(validation macro-F1 0 while the training loss fell). A test per backbone keeps them honest.
"""

from __future__ import annotations

import gc
import io

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from PIL import Image

from job.data.synthetic import SceneSpec, generate
from job.evaluation.scores import average_precision
from job.training import model as M

pytestmark = pytest.mark.slow

APPLICATIONS = [b for b in M.BACKBONES if b not in M.OWN_BACKBONES]


def _scenes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows = list(generate(n, SceneSpec(image_size=size), seed))
    x = np.stack([np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")) for _, jpeg, _ in rows])
    return x.astype("float32"), np.stack([labels for _, _, labels in rows]).astype("float32")


@pytest.mark.parametrize("backbone", APPLICATIONS)
def test_a_scratch_backbone_beats_chance_on_the_scenes(backbone):
    size = max(64, M.MIN_IMAGE_SIZE[backbone])
    x_train, y_train = _scenes(320, size, seed=1)
    x_test, y_test = _scenes(160, size, seed=2)
    model = M.build_model(backbone, y_train.shape[1], size, dropout_rate=0.0, seed=0)
    M.compile_model(model, learning_rate=0.002)
    model.fit(x_train, y_train, batch_size=16, epochs=4, verbose=0)  # 80 steps
    scores = tf.sigmoid(model.predict(x_test, batch_size=80, verbose=0)).numpy()
    # Chance: every image gets the same scores, and the mAP is the labels' prevalence (~0.35).
    chance = float(y_test.mean())
    mean_ap = float(np.mean([average_precision(y_test[:, j], scores[:, j]) for j in range(y_test.shape[1])]))
    assert mean_ap > chance + 0.25, f"{backbone}: test mAP {mean_ap:.3f}, chance {chance:.3f}"
    assert scores.std(axis=0).mean() > 0.05, f"{backbone} gives every image nearly the same scores"
    del model
    tf_keras.backend.clear_session()
    gc.collect()
