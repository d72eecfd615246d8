"""Label names as text: one Unicode form per name where it enters, and escaped where the
product writes it into Markdown (report.md), so a name cannot add a table column or raw HTML."""

from __future__ import annotations

import re
import unicodedata

import numpy as np
import pytest

from job.data.labels import find_correlated_pairs, normalize_label, parse_label_field, to_multi_hot
from job.data.prepare import read_rows
from job.evaluation import loading, report
from job.evaluation.scores import evaluate_predictions

COMPOSED = "caf\u00e9"  # é as one code point (NFC)
DECOMPOSED = "cafe\u0301"  # e + combining acute accent (NFD): looks the same
PIPE = "a|b"
IMG = "<img src=x onerror=alert(1)>"
NAMES = ["sea", PIPE, IMG, COMPOSED, "back\\slash", "living_room"]
PER_LABEL_COLUMNS = 12


# --------------------------------------------------------------------------- normalisation


def test_two_spellings_of_one_name_normalise_to_the_same_nfc_text():
    assert COMPOSED != DECOMPOSED
    assert normalize_label(COMPOSED) == normalize_label(DECOMPOSED) == COMPOSED
    assert unicodedata.is_normalized("NFC", normalize_label(DECOMPOSED))


@pytest.mark.parametrize("name", ["sea", "Sea", "living_room", "\ufb01re", "x\u00b2", " padded "])
def test_normalisation_changes_nothing_else(name):
    # No case folding, no compatibility mapping (the "fi" ligature, superscript two), no trimming.
    assert normalize_label(name) == name


def test_label_field_with_both_spellings_gives_one_nfc_label():
    assert parse_label_field(f"{COMPOSED} sea {DECOMPOSED}") == [COMPOSED, "sea"]
    assert parse_label_field(f"{DECOMPOSED} sea") == [COMPOSED, "sea"]


def test_csv_with_both_spellings_makes_one_class(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"image,labels\n1.jpg,{COMPOSED} sea\n2.jpg,{DECOMPOSED}\n3.jpg,sea {DECOMPOSED}\n")
    rows = read_rows(str(csv_path), str(images))
    classes = sorted({name for row in rows for name in row.labels})
    assert classes == [COMPOSED, "sea"]
    assert [row.labels for row in rows] == [(COMPOSED, "sea"), (COMPOSED,), ("sea", COMPOSED)]


def test_multi_hot_matches_a_name_in_either_spelling():
    assert to_multi_hot([DECOMPOSED], ["sea", COMPOSED]).tolist() == [0, 1]
    assert to_multi_hot([COMPOSED], ["sea", DECOMPOSED]).tolist() == [0, 1]


def test_class_names_that_differ_only_by_normalisation_are_duplicates():
    with pytest.raises(ValueError, match="duplicates"):
        to_multi_hot(["sea"], [COMPOSED, "sea", DECOMPOSED])


# --------------------------------------------------------------------------- escaping


def _report_and_note() -> tuple[str, str]:
    """report.md for NAMES, with PIPE and IMG always together in train (a flagged pair)."""
    rng = np.random.default_rng(0)
    thresholds = np.full(len(NAMES), 0.5)
    metrics, preds = {}, {}
    for split in ("train", "val", "test"):
        y = (rng.random((40, len(NAMES))) < 0.4).astype(np.int64)
        if split == "train":
            y[:, 2] = y[:, 1]
        logits = (np.where(y > 0, 2.0, -2.0) + rng.normal(0, 1.5, y.shape)).astype(np.float32)
        preds[split] = loading.SplitPredictions(split, y, logits)
        metrics[split] = evaluate_predictions(y, logits, NAMES, 0.5)
        metrics[split]["num_examples"] = 40
        metrics[split]["tuned"] = evaluate_predictions(y, logits, NAMES, thresholds)
    metrics["checkpoint"] = {"uri": "/runs/r/checkpoint_epoch-000002", "epoch": 2, "val_loss": 0.3}
    y_train = preds["train"].y_true
    pairs = find_correlated_pairs(y_train, NAMES, 0.95)
    assert [(p.first, p.second) for p in pairs] == [(PIPE, IMG)]
    note = report.format_pair_note(pairs, y_train, NAMES, "train", preds, thresholds, 0.95, "/data/<d>")
    text = report.format_report(metrics, NAMES, run_uri="/runs/r", data_uri="/data/<d>", pair_note=note)
    return text, note


def _cells(row: str) -> list[str]:
    """The cells of a Markdown table row, split at unescaped `|` (a backslash escapes the next
    character, as in CommonMark/GFM), with the escapes undone."""
    cells, cell, chars = [], "", iter(row.strip().strip("|"))
    for ch in chars:
        if ch == "\\":
            cell += next(chars, "")
        elif ch == "|":
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    return [*cells, cell.strip()]


def _per_label_rows(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("## Per label (test)")
    return [line for line in lines[start:] if line.startswith("|")][: 2 + len(NAMES)]


def test_per_label_table_keeps_one_cell_per_column_whatever_the_names():
    text, _ = _report_and_note()
    rows = _per_label_rows(text)
    assert len(rows) == 2 + len(NAMES)
    for row in rows:
        assert len(_cells(row)) == PER_LABEL_COLUMNS, row
    assert [_cells(row)[0] for row in rows[2:]] == [name.replace("<", "&lt;").replace(">", "&gt;") for name in NAMES]


def test_html_in_a_label_name_is_not_raw_html_in_the_report():
    text, note = _report_and_note()
    assert "<img" not in text and "<img" not in note
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert f"**{report.md_text(PIPE)} + {report.md_text(IMG)}**" in note


def test_plain_names_are_written_as_they_are():
    for name in ["sea", "living_room", "my-label.2", "Sea Turtle", COMPOSED]:
        assert report.md_text(name) == name
    assert report.md_text(PIPE) == "a\\|b"
    assert report.md_text("back\\slash") == "back\\\\slash"
    assert report.md_text("_x_ *y* [z](u) `c` a&b") == "\\_x\\_ \\*y\\* \\[z\\](u) \\`c\\` a&amp;b"


def test_report_renders_without_raw_html_or_extra_columns():
    markdown_it = pytest.importorskip("markdown_it")
    text, _ = _report_and_note()
    # html=True: what GitHub and most previews do with raw HTML in Markdown (they render it).
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    assert "<img" not in html
    tables = re.findall(r"<table>.*?</table>", html, flags=re.S)
    per_label = next(t for t in tables if "tuned threshold" in t)
    rows = re.findall(r"<tr>(.*?)</tr>", per_label, flags=re.S)
    assert len(rows) == 1 + len(NAMES)
    for row in rows:
        assert len(re.findall(r"<t[hd]\b", row)) == PER_LABEL_COLUMNS, row
    first_cells = [re.search(r"<td[^>]*>(.*?)</td>", row, flags=re.S).group(1) for row in rows[1:]]
    assert first_cells == [name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") for name in NAMES]
