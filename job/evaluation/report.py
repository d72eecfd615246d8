"""The evaluation's text outputs: the console table, report.md and per_label.csv.

Pure functions of metrics.json's content (and, for the correlated-pair note and the worst
errors, the labels and predictions); nothing here reads or writes storage.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from job.data import shards
from job.data.labels import conditional_probabilities
from job.evaluation.scores import sigmoid

if TYPE_CHECKING:
    from job.evaluation.loading import SplitPredictions

TABLE_COLUMNS = (
    "loss",
    "binary_accuracy",
    "cosine_similarity",
    "micro_f1",
    "macro_f1",
    "mean_average_precision",
    "hamming_loss",
    "subset_accuracy",
)
# Metrics that change with the decision threshold (loss, cosine and mAP do not).
THRESHOLD_COLUMNS = ("binary_accuracy", "micro_f1", "macro_f1", "hamming_loss", "subset_accuracy")
PER_LABEL_CSV_COLUMNS = (
    "split",
    "label",
    "support",
    "threshold",
    "precision_at_0.5",
    "recall_at_0.5",
    "f1_at_0.5",
    "binary_accuracy_at_0.5",
    "precision_tuned",
    "recall_tuned",
    "f1_tuned",
    "binary_accuracy_tuned",
    "average_precision",
)


# Markdown inline syntax that a label could otherwise smuggle into report.md: emphasis,
# strike-through, code spans, links and images, and the table cell separator.
_MD_PUNCTUATION = re.compile(r"([\\`*~\[\]|])")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def md_text(text: object) -> str:
    """Escape user text (label names, example ids) for report.md, inline or in a table cell.

    Every Markdown renderer that shows report.md (GitHub, GitLab, IDE previews, mkdocs) also
    renders raw HTML, and a table row is split at every unescaped `|`. So:

    - `&`, `<`, `>` become entities: `<img src=x onerror=...>` shows as that text, never as a tag;
    - `\\`, `|`, `` ` ``, `*`, `~`, `[`, `]` get a backslash: `a|b` stays one table cell, and
      `[x](url)` or `*x*` show as typed, not as a link or emphasis;
    - `_` gets a backslash only where it could start or end emphasis (not between two letters
      or digits), so `living_room` is written as is;
    - line breaks become spaces (a table row is one line).

    Plain names (letters, digits, `-`, `.`, `_` inside a word, spaces) come back unchanged.

    Args:
        text: the text to show; anything else is passed through `str` first.

    Returns:
        Markdown source that renders as exactly `text` (line breaks aside).
    """
    s = " ".join(str(text).splitlines())
    s = "".join(_HTML_ENTITIES.get(ch, ch) for ch in s)
    s = _MD_PUNCTUATION.sub(r"\\\1", s)
    out = []
    for i, ch in enumerate(s):
        if ch == "_" and not (0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum()):
            out.append("\\_")
        else:
            out.append(ch)
    return "".join(out)


def md_code(text: object) -> str:
    """`text` as a Markdown code span (for URIs and commands): shown verbatim, never as HTML.

    The fence is one backtick longer than the longest backtick run in `text`, so a backtick
    in a path cannot end the span early; line breaks become spaces.
    """
    s = " ".join(str(text).splitlines())
    longest = max((len(run) for run in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def _fmt(value, digits: int = 4) -> str:
    """A metric for a table: fixed digits, '-' when undefined."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_table(metrics: dict) -> str:
    """The seed's per-split table (rows train/val/test) with F1, mAP, Hamming and subset accuracy."""
    header = f"{'':<6}" + "".join(f"{c:>{max(len(c), 8) + 2}}" for c in TABLE_COLUMNS)
    rows = [header]
    for split in shards.SPLITS:
        if split in metrics:
            rows.append(
                f"{split:<6}" + "".join(f"{_fmt(metrics[split][c]):>{max(len(c), 8) + 2}}" for c in TABLE_COLUMNS)
            )
    return "\n".join(rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def format_report(
    metrics: dict,
    class_names: list[str],
    *,
    run_uri: str,
    data_uri: str,
    pair_note: str,
    predictions: dict[str, str] | None = None,
    worst_errors_note: str = "",
    prediction_grid: str = "first",
) -> str:
    """report.md: split table, test at 0.5 vs tuned, per-label table, per-image predictions,
    worst errors, correlated-pair note.

    Label names and URIs are user text: they go through `md_text` / `md_code`, so a label
    such as `a|b` or `<img ...>` is shown as typed and cannot add a column or raw HTML.

    Args:
        metrics: metrics.json's content.
        class_names: label order.
        run_uri, data_uri: shown in the header.
        pair_note: markdown from `format_pair_note`.
        predictions: {split: the per-image Parquet file's name relative to the report}, linked.
        worst_errors_note: markdown from `format_worst_errors` (for the focus split).
        prediction_grid: "first" or "worst": what predictions.png shows (evaluation.prediction_grid).
    Returns:
        The markdown text.
    """
    splits = [s for s in shards.SPLITS if s in metrics]
    ck = metrics.get("checkpoint", {})
    val_loss = ck.get("val_loss")
    parts = [
        "# Evaluation report",
        "",
        f"- run: {md_code(run_uri)}",
        f"- data: {md_code(data_uri)}",
        f"- checkpoint: {md_code(ck.get('uri'))} (epoch {ck.get('epoch')}, val_loss {_fmt(val_loss)})",
        "- examples: " + ", ".join(f"{s} {metrics[s]['num_examples']}" for s in splits),
        "",
        "## Metrics per split (threshold 0.5)",
        "",
        "Cosine similarity is positive (1 = perfect); Hamming loss is the share of wrong label decisions; "
        "subset accuracy is the share of images with every label right.",
        "",
        _md_table(["split", *TABLE_COLUMNS], [[s, *(_fmt(metrics[s][c]) for c in TABLE_COLUMNS)] for s in splits]),
        "",
    ]
    focus = "test" if "test" in metrics else splits[-1]
    m = metrics[focus]
    parts += [
        f"## {focus}: threshold 0.5 vs tuned thresholds",
        "",
        "Thresholds are tuned per label to maximise F1 on the val split (thresholds.json); loss, cosine "
        "similarity and mAP do not depend on the threshold.",
        "",
        _md_table(
            ["thresholds", *THRESHOLD_COLUMNS],
            [
                ["0.5", *(_fmt(m[c]) for c in THRESHOLD_COLUMNS)],
                ["tuned", *(_fmt(m["tuned"][c]) for c in THRESHOLD_COLUMNS)],
            ],
        ),
        "",
        f"## Per label ({focus})",
        "",
    ]
    rows = []
    for name in class_names:
        a, t = m["per_label"][name], m["tuned"]["per_label"][name]
        rows.append(
            [
                md_text(name),
                str(a["support"]),
                _fmt(t["threshold"], 3),
                _fmt(a["precision"], 3),
                _fmt(a["recall"], 3),
                _fmt(a["f1"], 3),
                _fmt(a["binary_accuracy"], 3),
                _fmt(t["precision"], 3),
                _fmt(t["recall"], 3),
                _fmt(t["f1"], 3),
                _fmt(t["binary_accuracy"], 3),
                _fmt(a["average_precision"], 3),
            ]
        )
    parts += [
        _md_table(
            [
                "label",
                "support",
                "tuned threshold",
                "precision@0.5",
                "recall@0.5",
                "F1@0.5",
                "accuracy@0.5",
                "precision tuned",
                "recall tuned",
                "F1 tuned",
                "accuracy tuned",
                "AP",
            ],
            rows,
        ),
        "",
    ]
    if predictions:
        parts += [
            "## Per-image predictions",
            "",
            "One row per image: its id, true labels, the score of every label, and the labels predicted at 0.5 "
            "and at the tuned thresholds (see docs/predictions.md).",
            "",
        ]
        parts += [
            f"- [{name}]({name}): {split}, {metrics[split]['num_examples']} images"
            for split, name in predictions.items()
            if split in metrics
        ]
        parts.append("")
    if worst_errors_note:
        parts += [f"## Worst errors ({focus})", "", worst_errors_note, ""]
    grid_line = (
        f"- `predictions.png`: the {focus} images with the worst errors (as listed above)"
        if prediction_grid == "worst"
        else f"- `predictions.png`: the first {focus} images"
    )
    parts += [
        "## Correlated labels",
        "",
        pair_note,
        "",
        "## Figures",
        "",
        grid_line + ", with true (y) and predicted (p) labels; red = false positive, orange = missed label.",
        "- `per_label.png`: precision, recall, F1 and binary accuracy per label at 0.5 and tuned.",
        "- `cooccurrence.png`: P(j | i) and counts of label pairs.",
        "- `history.png`: loss, macro-F1 and learning rate per epoch.",
        "",
    ]
    return "\n".join(parts)


def format_pair_note(
    pairs,
    y: np.ndarray,
    class_names: list[str],
    label_split: str,
    preds: dict[str, SplitPredictions],
    thresholds: np.ndarray,
    threshold: float,
    data_uri: str = "URI",
) -> str:
    """Markdown on label pairs the data (almost) never shows apart, and what that means for the scores.

    Label names are escaped with `md_text`, the data URI is a code span (`md_code`).

    For each flagged pair, the test images with exactly one of the two labels (if any) show
    whether the model can tell them apart: per-label accuracy on the pair alone cannot.
    """
    n = len(y)
    lines = []
    if not pairs:
        p = conditional_probabilities(y)
        k = len(class_names)
        best = None
        for i in range(k):
            for j in range(i + 1, k):
                tie = min(p[i, j], p[j, i])
                if not np.isnan(tie) and (best is None or tie > best[0]):
                    best = (tie, i, j)
        lines.append(
            f"No pair of labels appears together in at least {threshold:.0%} of both labels' images "
            f"({label_split} split, {n} images), so the data shows every pair apart often enough to learn."
        )
        if best is not None:
            _, i, j = best
            a, b = md_text(class_names[i]), md_text(class_names[j])
            lines.append(
                f"The most tied pair is {a} + {b}: P({b} | {a}) = {p[i, j]:.2f}, P({a} | {b}) = {p[j, i]:.2f}."
            )
        return " ".join(lines)
    lines.append(
        f"These pairs appear together in at least {threshold:.0%} of both labels' images "
        f"({label_split} split, {n} images). The data cannot teach the model to tell them apart, so "
        "high per-label accuracy on them says nothing about whether it can: add images with only one "
        f"of the two labels. See {md_code(f'python -m job analyze --data {data_uri}')}."
    )
    lines.append("")
    test = preds.get("test")
    for pr in pairs:
        a, b = md_text(pr.first), md_text(pr.second)
        line = (
            f"- **{a} + {b}**: P({b} | {a}) = {pr.p_second_given_first:.2f}, P({a} | {b}) = "
            f"{pr.p_first_given_second:.2f}; {pr.both} images with both, {pr.first_only} with only {a}, "
            f"{pr.second_only} with only {b}."
        )
        if test is not None:
            line += " " + _exactly_one_summary(test, class_names, pr.first, pr.second, thresholds)
        lines.append(line)
    return "\n".join(lines)


def _exactly_one_summary(test: SplitPredictions, class_names: list[str], a: str, b: str, thresholds: np.ndarray) -> str:
    """How the model does on test images that carry exactly one of `a` and `b`."""
    i, j = class_names.index(a), class_names.index(b)
    one = (test.y_true[:, i] > 0) != (test.y_true[:, j] > 0)
    if not one.any():
        return "The test split has no image with only one of them, so it cannot show whether the model separates them."
    probs = sigmoid(test.logits[one][:, [i, j]])
    truth = test.y_true[one][:, [i, j]] > 0
    right_half = np.all((probs > 0.5) == truth, axis=1).mean()
    right_tuned = np.all((probs > thresholds[[i, j]]) == truth, axis=1).mean()
    return (
        f"On the {int(one.sum())} test images with only one of them, both decisions are right for "
        f"{right_half:.0%} at 0.5 ({right_tuned:.0%} at tuned thresholds)."
    )


# ---------------------------------------------------------------------------- worst errors

# Examples listed per label and kind (false positives, false negatives) in report.md.
WORST_ERRORS_PER_LABEL = 3


@dataclass(frozen=True)
class LabelErrors:
    """One label's worst errors at its decision threshold, as row indices into a split's arrays."""

    label: str
    threshold: float
    false_positives: list[tuple[int, float]]  # (row, score) of negatives above the threshold, highest first
    false_negatives: list[tuple[int, float]]  # (row, score) of positives not above it, lowest first


def worst_errors(
    y_true: np.ndarray,
    probs: np.ndarray,
    thresholds: Sequence[float],
    class_names: Sequence[str],
    limit: int = WORST_ERRORS_PER_LABEL,
) -> list[LabelErrors]:
    """Per label, the most confident mistakes at the given thresholds.

    A false positive is a negative whose score is above the label's threshold (the
    `p > t` rule of the metrics), ranked by highest score; a false negative is a positive
    whose score is not above it, ranked by lowest score. Ties keep data set order.

    Args:
        y_true: (n, k) 0/1 labels.
        probs: (n, k) probabilities.
        thresholds: (k,) decision thresholds.
        class_names: the k label names.
        limit: at most this many of each kind per label.
    Returns:
        One LabelErrors per label, in class_names order.
    """
    y = np.asarray(y_true) > 0
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    out = []
    for j, name in enumerate(class_names):
        above = p[:, j] > t[j]
        fp = np.flatnonzero(~y[:, j] & above)
        fp = fp[np.argsort(-p[fp, j], kind="stable")][:limit]
        fn = np.flatnonzero(y[:, j] & ~above)
        fn = fn[np.argsort(p[fn, j], kind="stable")][:limit]
        out.append(
            LabelErrors(
                label=str(name),
                threshold=float(t[j]),
                false_positives=[(int(i), float(p[i, j])) for i in fp],
                false_negatives=[(int(i), float(p[i, j])) for i in fn],
            )
        )
    return out


def worst_error_rows(errors: Sequence[LabelErrors], count: int) -> list[int]:
    """Up to `count` distinct rows for the "worst errors" prediction grid.

    Every label's worst false positive and worst false negative first, then every label's
    second worst, and so on, so each label's errors are shown before any label's third.
    """
    rows: list[int] = []
    seen: set[int] = set()
    depth = max((max(len(e.false_positives), len(e.false_negatives)) for e in errors), default=0)
    for rank in range(depth):
        for e in errors:
            for ranked in (e.false_positives, e.false_negatives):
                if rank < len(ranked) and ranked[rank][0] not in seen and len(rows) < count:
                    seen.add(ranked[rank][0])
                    rows.append(ranked[rank][0])
    return rows


def format_worst_errors(errors: Sequence[LabelErrors], ids: Sequence[str], split: str, file_name: str) -> str:
    """report.md's worst-errors table: per label, ids and scores of its worst false positives and negatives.

    Ids are user text (`md_text`); `file_name` is the predictions file the scores come from.
    """

    def cell(ranked: list[tuple[int, float]]) -> str:
        return ", ".join(f"{md_text(ids[row])} ({score:.3f})" for row, score in ranked) or "-"

    rows = [[md_text(e.label), _fmt(e.threshold, 3), cell(e.false_positives), cell(e.false_negatives)] for e in errors]
    shown = max((len(e.false_positives) + len(e.false_negatives) for e in errors), default=0)
    lines = [
        f"Per label, the {split} images the model got most confidently wrong at the tuned threshold: "
        "false positives are images without the label scored highest above it, false negatives are "
        "images with the label scored lowest (at or below it). Each entry is `id (score)`; "
        f"every score of every image is in [{file_name}]({file_name}).",
        "",
    ]
    if not shown:
        lines.append(f"No label has a wrong decision on {split} at the tuned thresholds.")
        return "\n".join(lines)
    lines.append(_md_table(["label", "tuned threshold", "worst false positives", "worst false negatives"], rows))
    return "\n".join(lines)


def format_per_label_csv(metrics: dict, class_names: list[str]) -> str:
    """per_label.csv: one row per (split, label) with metrics at 0.5 and at the tuned threshold."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(PER_LABEL_CSV_COLUMNS)
    for split in shards.SPLITS:
        if split not in metrics:
            continue
        for name in class_names:
            a, t = metrics[split]["per_label"][name], metrics[split]["tuned"]["per_label"][name]
            ap = a["average_precision"]
            writer.writerow(
                [
                    split,
                    name,
                    a["support"],
                    f"{t['threshold']:.6f}",
                    *(f"{a[c]:.6f}" for c in ("precision", "recall", "f1", "binary_accuracy")),
                    *(f"{t[c]:.6f}" for c in ("precision", "recall", "f1", "binary_accuracy")),
                    "" if ap is None else f"{ap:.6f}",
                ]
            )
    return buffer.getvalue()
