"""job.evaluation.plots: every figure renders headless to a PNG of the expected size, and marks what it should."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from job.evaluation import plots

NAMES = ["desert", "mountains", "sea", "sunset", "trees"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _open(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def _labels(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, len(NAMES))) < 0.4).astype(np.int64)
    y[y.sum(axis=1) == 0, 0] = 1
    return y


def _red_pixels(image: Image.Image) -> int:
    """Pixels close to the colour used for false positives and wrong frames."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    target = np.array([0xD6, 0x27, 0x28])
    return int(np.sum(np.abs(rgb - target).sum(axis=-1) < 40))


def test_prediction_grid_size_and_marks_wrong_labels():
    images = np.full((16, 64, 64, 3), 120, dtype=np.uint8)  # grey: no red of its own
    y = _labels(16)
    thresholds = np.full(len(NAMES), 0.5)
    all_right = plots.prediction_grid(images, y, np.where(y > 0, 0.9, 0.1), thresholds, NAMES)
    # Every absent label predicted: a false positive in every image, so every frame is red.
    all_wrong = plots.prediction_grid(images, y, np.full(y.shape, 0.9), thresholds, NAMES)
    right, wrong = _open(all_right), _open(all_wrong)
    assert right.size == (1320, 1370)  # 4 x 4 grid at 100 dpi
    assert wrong.size == right.size
    assert _red_pixels(wrong) > 20 * max(_red_pixels(right), 1)


def test_prediction_grid_with_few_images_and_no_predictions():
    images = np.full((3, 32, 32, 3), 128.0)
    y = np.zeros((3, len(NAMES)), dtype=np.int64)
    png = plots.prediction_grid(images, y, np.zeros(y.shape), np.full(len(NAMES), 0.5), NAMES, columns=4)
    image = _open(png)
    assert image.size == (990, 470)  # 3 columns, 1 row


def test_per_label_bars_size():
    per_label = {
        n: {"precision": 0.8, "recall": 0.6, "f1": 0.69, "binary_accuracy": 0.9, "threshold": 0.5} for n in NAMES
    }
    tuned = {n: {**v, "recall": 0.8, "f1": 0.8, "threshold": 0.3} for n, v in per_label.items()}
    assert _open(plots.per_label_bars(per_label, tuned, NAMES, title="test")).size == (1600, 750)


def test_cooccurrence_heatmap_handles_a_label_that_never_occurs():
    y = _labels(50)
    y[:, 4] = 0  # trees never occurs: its P(j | trees) row is undefined, drawn as n/a
    image = _open(plots.cooccurrence_heatmap(y, NAMES))
    assert image.size == (1025, 875)


def test_history_curves_with_and_without_data():
    history = [
        {
            "epoch": e,
            "loss": 1 / e,
            "val_loss": 1.2 / e,
            "macro_f1": 0.1 * e,
            "val_macro_f1": 0.09 * e,
            "learning_rate": 0.003 if e < 3 else 0.0015,
        }
        for e in range(1, 6)
    ]
    assert _open(plots.history_curves(history, best_epoch=4)).size == (1500, 480)
    assert _open(plots.history_curves([])).size == (1500, 480)


def test_history_lr_axis_is_logarithmic_only_when_the_rate_spans_decades():
    cut = [{"epoch": e, "loss": 1.0, "learning_rate": 10.0**-e} for e in range(1, 6)]
    steady = [{"epoch": e, "loss": 1.0, "learning_rate": 0.003 if e < 3 else 0.0015} for e in range(1, 6)]
    assert plots.history_figure(cut).axes[2].get_yscale() == "log"
    assert plots.history_figure(steady).axes[2].get_yscale() == "linear"


def test_plots_render_without_a_display_and_never_touch_pyplot():
    """A headless worker must draw every figure without a display, and without pyplot's
    global state (which leaks figures across calls): checked in a fresh interpreter whose
    configured backend would need a display."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np\n"
        "from job.evaluation import plots\n"
        "y = np.eye(3, dtype=int)\n"
        "names = ['a', 'b', 'c']\n"
        "plots.prediction_grid(np.zeros((3, 8, 8, 3), np.uint8), y, y * 0.9, [0.5] * 3, names)\n"
        "m = {'precision': 1, 'recall': 1, 'f1': 1, 'binary_accuracy': 1, 'threshold': 0.5}\n"
        "plots.per_label_bars({n: m for n in names}, {n: m for n in names}, names)\n"
        "plots.cooccurrence_heatmap(y, names)\n"
        "plots.history_curves([{'epoch': 1, 'loss': 1.0}])\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    env["MPLBACKEND"] = "TkAgg"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
