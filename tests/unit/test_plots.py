"""job.evaluation.plots: every figure renders headless to a PNG of the expected size, and marks what it should."""

from __future__ import annotations

import io
import sys

import matplotlib.colors as mcolors
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from job.evaluation import plots
from tests.cli import run_command

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


def _pixels_near(image: Image.Image, colour: str) -> int:
    """Pixels within a small distance of `colour` (a matplotlib colour such as "#d62728")."""
    rgb = np.asarray(image.convert("RGB")).astype(int)
    target = np.array([round(255 * c) for c in mcolors.to_rgb(colour)])
    return int(np.sum(np.abs(rgb - target).sum(axis=-1) < 40))


def _red_pixels(image: Image.Image) -> int:
    """Pixels close to the colour used for false positives and wrong frames."""
    return _pixels_near(image, plots.FRAME_WRONG)


def _figure_of(monkeypatch, draw) -> tuple[Figure, bytes]:
    """(the matplotlib Figure a plots function built, the PNG bytes it returned)."""
    figures: list[Figure] = []
    render = plots._png

    def keep(fig: Figure) -> bytes:
        figures.append(fig)
        return render(fig)

    monkeypatch.setattr(plots, "_png", keep)
    png = draw()
    assert len(figures) == 1
    return figures[0], png


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
    # No label and no prediction is all right: green frames; red only in the legend's swatches.
    assert _pixels_near(image, plots.FRAME_OK) > 20 * max(_red_pixels(image), 1)


def test_prediction_grid_writes_each_id_under_its_image(monkeypatch):
    # The "worst errors" grid names its images by the ids report.md and the Parquet file use.
    images = np.full((5, 32, 32, 3), 120, dtype=np.uint8)
    y = _labels(5)
    ids = ["a", "b", "c", "d", "x" * 30 + "-middle-" + "y" * 30]
    args = (images, y, np.full(y.shape, 0.9), np.full(len(NAMES), 0.5), NAMES)
    fig, png = _figure_of(monkeypatch, lambda: plots.prediction_grid(*args, ids=ids))
    shown = [ax.get_xlabel() for ax in fig.axes if ax.images]
    assert shown[:4] == ["a", "b", "c", "d"]
    assert len(shown[4]) == plots.ID_CHARS and shown[4].startswith("xxx") and shown[4].endswith("yyy")
    assert "…" in shown[4]
    # Same layout as without ids: the labels fit in the space between rows.
    assert _open(png).size == _open(plots.prediction_grid(*args)).size == (1320, 770)  # 4 columns, 2 rows


def test_per_label_bars_size():
    per_label = {
        n: {"precision": 0.8, "recall": 0.6, "f1": 0.69, "binary_accuracy": 0.9, "threshold": 0.5} for n in NAMES
    }
    tuned = {n: {**v, "recall": 0.8, "f1": 0.8, "threshold": 0.3} for n, v in per_label.items()}
    assert _open(plots.per_label_bars(per_label, tuned, NAMES, title="test")).size == (1600, 750)


def test_cooccurrence_heatmap_handles_a_label_that_never_occurs(monkeypatch):
    y = _labels(50)
    y[:, 4] = 0  # trees never occurs: its P(j | trees) row is undefined, drawn as n/a
    fig, png = _figure_of(monkeypatch, lambda: plots.cooccurrence_heatmap(y, NAMES))
    assert _open(png).size == (1025, 875)
    ax = fig.axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert len(cells) == len(NAMES) ** 2
    trees = NAMES.index("trees")
    # Given trees (never seen), every P(j | trees) is undefined: n/a, and masked in the image.
    assert [cells[(trees, j)] for j in range(len(NAMES))] == ["n/a"] * len(NAMES)
    assert ax.images[0].get_array().mask[trees].all()
    # Every other row is a number, and none of them ever has trees as well.
    for i in range(len(NAMES)):
        if i != trees:
            assert "n/a" not in [cells[(i, j)] for j in range(len(NAMES))]
            assert cells[(i, trees)] == "0.00\nn=0"


def test_history_curves_with_and_without_data():
    """Curves for what was recorded, "not recorded" where nothing was, same size either way."""
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

    full = plots.history_figure(history, best_epoch=4)
    loss, score, rate = full.axes[:3]
    assert [line.get_label() for line in loss.lines[:2]] == ["train loss", "val loss"]
    assert list(loss.lines[1].get_ydata()) == [r["val_loss"] for r in history]
    assert [line.get_label() for line in score.lines[:2]] == ["train macro-F1", "val macro-F1"]
    assert list(rate.lines[0].get_ydata()) == [r["learning_rate"] for r in history]
    for ax in (loss, score, rate):  # the evaluated checkpoint, marked on every panel
        assert list(ax.lines[-1].get_xdata()) == [4, 4]
        assert "not recorded" not in [t.get_text() for t in ax.texts]

    empty = plots.history_figure([])
    for ax in empty.axes[:3]:
        assert len(ax.lines) == 0
        assert [t.get_text() for t in ax.texts] == ["not recorded"]


def test_history_lr_axis_is_logarithmic_only_when_the_rate_spans_decades():
    cut = [{"epoch": e, "loss": 1.0, "learning_rate": 10.0**-e} for e in range(1, 6)]
    steady = [{"epoch": e, "loss": 1.0, "learning_rate": 0.003 if e < 3 else 0.0015} for e in range(1, 6)]
    assert plots.history_figure(cut).axes[2].get_yscale() == "log"
    assert plots.history_figure(steady).axes[2].get_yscale() == "linear"


def test_plots_render_without_a_display_and_never_touch_pyplot():
    """A headless worker must draw every figure without a display, and without pyplot's
    global state (which leaks figures across calls): checked in a fresh interpreter whose
    configured backend would need a display."""
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
    done = run_command([sys.executable, "-c", script], env={"DISPLAY": None, "MPLBACKEND": "TkAgg"}, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
