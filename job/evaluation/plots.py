"""Evaluation figures as PNG bytes: prediction grid, per-label bars, co-occurrence, history.

Each function takes plain NumPy arrays / dicts and returns the PNG file's bytes, so the
caller decides where they go (`storage.write_bytes` for local paths and s3://). Figures are
built with `matplotlib.figure.Figure` on the Agg canvas: no pyplot global state, no display,
safe on a headless worker.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: never try to open a window

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from job.data.labels import conditional_probabilities, cooccurrence

DPI = 100
# Colours used for right and wrong labels in the prediction grid (colour-blind friendly pair
# plus black for "right"), and for the two threshold settings in the bar chart.
RIGHT = "#1a1a1a"
FALSE_POSITIVE = "#d62728"
FALSE_NEGATIVE = "#e66100"
FRAME_OK = "#2ca02c"
FRAME_WRONG = "#d62728"
AT_HALF = "#9ecae1"
AT_TUNED = "#08519c"


def _png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


# --------------------------------------------------------------------------- predictions


def _coloured_line(ax, x: float, y: float, pieces: list[tuple[str, str]], fontsize: float):
    """Write `pieces` [(text, colour)] one after another on one line, above the axes.

    matplotlib has no rich text; each piece is anchored to the right edge of the previous
    one (the "rainbow text" recipe), so the line lays out correctly at any DPI.
    """
    prev = ax.text(
        x,
        y,
        pieces[0][0],
        color=pieces[0][1],
        transform=ax.transAxes,
        fontsize=fontsize,
        ha="left",
        va="bottom",
        fontfamily="monospace",
    )
    for text, colour in pieces[1:]:
        # Wrong labels are bold as well as coloured, so they stand out without colour vision.
        prev = ax.annotate(
            text,
            xycoords=prev,
            xy=(1, 0),
            va="bottom",
            color=colour,
            fontsize=fontsize,
            fontfamily="monospace",
            annotation_clip=False,
            fontweight="normal" if colour == RIGHT else "bold",
        )
    return prev


def prediction_grid(
    images: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float],
    class_names: Sequence[str],
    title: str = "Test predictions",
    columns: int = 4,
    ids: Sequence[str] | None = None,
) -> bytes:
    """The seed's grid: each image titled "y: true labels" / "p: predicted labels".

    Predicted labels that are not true (false positives) are red; true labels the model
    missed (false negatives) are orange in the "y:" line; a green frame means every label
    of the image is right, a red frame that at least one is wrong.

    Args:
        images: (n, H, W, 3) pixels in [0, 255] (any numeric dtype).
        y_true: (n, k) 0/1 labels.
        probs: (n, k) probabilities.
        thresholds: (k,) decision thresholds (probability > threshold means present).
        class_names: the k label names.
        title: figure title.
        columns: images per row.
        ids: the n example ids, written under each image (the ids of report.md and
            predictions/SPLIT.parquet); long ids are shortened in the middle.
    Returns:
        PNG bytes.
    """
    images = np.asarray(images)
    y = np.asarray(y_true) > 0
    pred = np.asarray(probs) > np.asarray(thresholds, dtype=np.float64)[None, :]
    n = len(images)
    columns = max(1, min(columns, n)) if n else 1
    rows = max(1, math.ceil(n / columns))
    height = 3.0 * rows + 1.7
    fig = Figure(figsize=(3.3 * columns, height))
    # Inches kept free: the legend below, the suptitle plus the first row's labels above.
    grid = fig.add_gridspec(
        rows, columns, left=0.02, right=0.98, bottom=0.9 / height, top=1 - 1.0 / height, hspace=0.45, wspace=0.08
    )
    names = list(class_names)
    for i in range(rows * columns):
        ax = fig.add_subplot(grid[i // columns, i % columns])
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(np.clip(images[i], 0, 255).astype(np.uint8))
        wrong = bool(np.any(y[i] != pred[i]))
        for spine in ax.spines.values():
            spine.set_edgecolor(FRAME_WRONG if wrong else FRAME_OK)
            spine.set_linewidth(3)
        true_pieces = [("y: ", RIGHT)]
        for j in np.flatnonzero(y[i]):
            true_pieces += [(names[j], FALSE_NEGATIVE if not pred[i, j] else RIGHT), (" ", RIGHT)]
        if not y[i].any():
            true_pieces.append(("(none)", RIGHT))
        pred_pieces = [("p: ", RIGHT)]
        for j in np.flatnonzero(pred[i]):
            pred_pieces += [(names[j], FALSE_POSITIVE if not y[i, j] else RIGHT), (" ", RIGHT)]
        if not pred[i].any():
            pred_pieces.append(("(none)", RIGHT))
        _coloured_line(ax, 0.0, 1.13, true_pieces, fontsize=9)
        _coloured_line(ax, 0.0, 1.02, pred_pieces, fontsize=9)
        if ids is not None:
            ax.set_xlabel(_shorten(str(ids[i]), ID_CHARS), fontsize=8, fontfamily="monospace", labelpad=2)
    fig.suptitle(f"{title} ({n} images; y = true labels, p = predicted)", fontsize=13)
    handles = [
        Line2D([], [], color=RIGHT, lw=0, marker="s", label="label right"),
        Line2D([], [], color=FALSE_POSITIVE, lw=0, marker="s", label="p: false positive (predicted, not there)"),
        Line2D([], [], color=FALSE_NEGATIVE, lw=0, marker="s", label="y: false negative (there, missed)"),
        Patch(facecolor="none", edgecolor=FRAME_OK, lw=2, label="all labels right"),
        Patch(facecolor="none", edgecolor=FRAME_WRONG, lw=2, label="some label wrong"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3 if columns >= 3 else 1, fontsize=9, frameon=False)
    return _png(fig)


# Characters of an example id shown under its image (about the width of one grid cell).
ID_CHARS = 36


def _shorten(text: str, limit: int) -> str:
    """`text`, or its start and end around an ellipsis when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return text[:half] + "…" + text[len(text) - (limit - 1 - half) :]


# --------------------------------------------------------------------------- per label


def per_label_bars(at_half: dict, tuned: dict, class_names: Sequence[str], title: str = "Per-label metrics") -> bytes:
    """Precision, recall, F1 and binary accuracy per label, at threshold 0.5 vs tuned.

    Args:
        at_half: metrics.json's per_label dict at 0.5 ({name: {precision, recall, f1, ...}}).
        tuned: the same at the tuned thresholds.
        class_names: label order.
        title: figure title (say which split).
    Returns:
        PNG bytes.
    """
    names = list(class_names)
    x = np.arange(len(names))
    width = 0.38
    fig = Figure(figsize=(max(10.0, 1.6 * len(names) * 2), 7.5))
    axes = fig.subplots(2, 2, sharex=True)
    for ax, key, label in zip(
        axes.ravel(), ("precision", "recall", "f1", "binary_accuracy"), ("Precision", "Recall", "F1", "Binary accuracy")
    ):
        a = [at_half[n][key] for n in names]
        b = [tuned[n][key] for n in names]
        bars_a = ax.bar(x - width / 2, a, width, color=AT_HALF, label="threshold 0.5")
        bars_b = ax.bar(x + width / 2, b, width, color=AT_TUNED, label="tuned threshold")
        ax.bar_label(bars_a, fmt="%.2f", fontsize=8, padding=1)
        ax.bar_label(bars_b, fmt="%.2f", fontsize=8, padding=1)
        ax.set_ylim(0, 1.12)
        ax.set_title(label)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(x, names)
    for ax in axes[1]:
        ax.set_xlabel("label")
        ax.tick_params(labelbottom=True)
    tuned_text = ", ".join(f"{n} {tuned[n]['threshold']:.2f}" for n in names)
    fig.suptitle(f"{title}: threshold 0.5 vs tuned\n(tuned thresholds: {tuned_text})", fontsize=12)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.86, bottom=0.12, hspace=0.3, wspace=0.18)
    return _png(fig)


# --------------------------------------------------------------------------- co-occurrence


def cooccurrence_heatmap(y: np.ndarray, class_names: Sequence[str], title: str = "Label co-occurrence") -> bytes:
    """Heatmap of P(column | row) with the image counts written in each cell.

    Args:
        y: (n, k) 0/1 labels.
        class_names: the k names.
        title: figure title (say which split and how many images).
    Returns:
        PNG bytes.
    """

    names = list(class_names)
    both = cooccurrence(y)
    p = conditional_probabilities(y)
    k = len(names)
    side = max(6.0, 1.25 * k + 2.5)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    shown = np.ma.masked_invalid(p)
    image = ax.imshow(shown, vmin=0.0, vmax=1.0, cmap="viridis")
    for i in range(k):
        for j in range(k):
            value = p[i, j]
            text = "n/a" if np.isnan(value) else f"{value:.2f}\nn={int(both[i, j])}"
            colour = "black" if (not np.isnan(value) and value > 0.6) else "white"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=10)
    ax.set_xticks(range(k), names, rotation=30, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("label j (also present)")
    ax.set_ylabel("label i (given)")
    ax.set_title(
        f"{title}\nP(j | i): share of images with label i that also have label j;\n"
        "n = images with both (diagonal: images with the label)",
        fontsize=11,
    )
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("P(j | i)")
    fig.tight_layout()
    return _png(fig)


# --------------------------------------------------------------------------- history


def history_curves(history: Sequence[dict], title: str = "Training history", best_epoch: int | None = None) -> bytes:
    """history.png: loss, macro-F1 and learning rate per epoch (see `history_figure`)."""
    return _png(history_figure(history, title, best_epoch))


def history_figure(history: Sequence[dict], title: str = "Training history", best_epoch: int | None = None) -> Figure:
    """Loss/val_loss, macro-F1 (train and val) and learning rate per epoch.

    Args:
        history: history.json rows ({"epoch", "loss", "val_loss", "macro_f1", "val_macro_f1",
            "learning_rate", ...}); missing keys are skipped.
        title: figure title.
        best_epoch: the evaluated checkpoint's epoch, marked with a dashed line.
    Returns:
        The figure, with the loss, macro-F1 and learning-rate panels as its first three axes.
    """
    rows = [r for r in history if "epoch" in r]
    epochs = [r["epoch"] for r in rows]

    def series(key):
        pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        return [e for e, _ in pts], [v for _, v in pts]

    fig = Figure(figsize=(15, 4.8))
    axes = fig.subplots(1, 3)
    panels = (
        (axes[0], (("loss", "train loss"), ("val_loss", "val loss")), "Binary cross-entropy", "Loss"),
        (
            axes[1],
            (
                ("macro_f1", "train macro-F1"),
                ("val_macro_f1", "val macro-F1"),
                ("val_mean_average_precision", "val mAP (PR-AUC)"),
            ),
            "Score",
            "Macro-F1 and mAP",
        ),
        (axes[2], (("learning_rate", "learning rate"),), "Learning rate (log scale)", "Learning rate"),
    )
    for ax, keys, ylabel, panel_title in panels:
        plotted = False
        for key, label in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
                plotted = True
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"evaluated checkpoint (epoch {best_epoch})")
        if not plotted:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if epochs:
            ax.set_xticks(_epoch_ticks(epochs))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    _, lr = series("learning_rate")
    if lr and min(lr) > 0 and max(lr) / min(lr) > 10:
        axes[2].set_yscale("log")  # plateau cuts span decades
    else:
        axes[2].set_ylabel("Learning rate")
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.suptitle(f"{title} ({len(epochs)} epochs)", fontsize=13)
    fig.tight_layout()
    return fig


def _epoch_ticks(epochs: list[int]) -> list[int]:
    """Integer epoch ticks, at most ~12 of them."""
    lo, hi = min(epochs), max(epochs)
    step = max(1, math.ceil((hi - lo + 1) / 12))
    return list(range(lo, hi + 1, step))
