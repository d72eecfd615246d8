"""Class names <-> multi-hot vectors, and the label statistics that say whether a data set
can teach a model to tell its labels apart.

The question this module answers comes from the user's story: if two labels (say `sea` and
`sunset`) always appear together, a model can score 100% on both without ever learning to
separate them. `format_label_analysis` is what `python -m job analyze` prints; it flags such
pairs before anyone spends GPU time on them.

All statistics take `y`, an (images, labels) array of 0/1 values, and use numpy only.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from job.errors import UserError

DEFAULT_CLASS_NAMES: tuple[str, ...] = ("desert", "mountains", "sea", "sunset", "trees")

# Both conditionals at or above this mean the two labels are (almost) never seen apart.
DEFAULT_CORRELATION_THRESHOLD = 0.95


# --------------------------------------------------------------------------- encoding


def normalize_label(name: str) -> str:
    """Return a label name in Unicode NFC, the one form every label is compared and stored in.

    The same visible name can arrive as different code points: "café" typed on one keyboard
    is U+00E9, pasted from another program it is "e" + U+0301 (combining acute). Without
    normalisation those would be two classes that look identical everywhere they are shown.
    NFC composes such sequences and changes nothing else: no case folding, no compatibility
    mapping (NFKC would turn "ﬁ" into "fi" and "²" into "2", which may be meant), no trimming.

    Args:
        name: a label name as read from a CSV, `--classes` or dataset.json.

    Returns:
        The NFC form of `name` (`name` itself when it is already NFC, e.g. any ASCII name).
    """
    return unicodedata.normalize("NFC", name)


def to_multi_hot(names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Encode label names as a multi-hot vector.

    Args:
        names: the labels of one image, in any order; duplicates are harmless.
        class_names: every known label, in output order.

    Returns:
        A (len(class_names),) uint8 array with 1 at each named label.

    Raises:
        UserError: a name is not in `class_names` (the message lists the known ones).
    """
    index = _class_index(class_names)
    row = np.zeros(len(class_names), dtype=np.uint8)
    for name in names:
        key = normalize_label(name)
        if key not in index:
            raise UserError(
                f"unknown label {name!r}; known labels are: {', '.join(class_names)}. "
                "Fix the label in the data, or add it to the class names."
            )
        row[index[key]] = 1
    return row


def from_multi_hot(row: Sequence[int] | np.ndarray, class_names: Sequence[str]) -> list[str]:
    """Decode a multi-hot vector into label names.

    Args:
        row: one image's multi-hot vector (any numeric dtype; non-zero means present).
        class_names: every known label, in vector order.

    Returns:
        The names of the present labels, in `class_names` order.
    """
    row = np.asarray(row)
    if row.shape != (len(class_names),):
        raise ValueError(f"row has shape {row.shape}, expected ({len(class_names)},)")
    return [name for name, present in zip(class_names, row) if present != 0]


def parse_label_field(text: str) -> list[str]:
    """Split a space-separated label field (as stored in the data) into names.

    Args:
        text: e.g. "sea sunset  sea".

    Returns:
        The names in Unicode NFC (`normalize_label`), with duplicates removed and first-seen
        order kept, e.g. ["sea", "sunset"]; "café" spelt two ways counts once.
    """
    # dict keeps insertion order, so this de-duplicates without reordering.
    return list(dict.fromkeys(normalize_label(name) for name in text.split()))


def _class_index(class_names: Sequence[str]) -> dict[str, int]:
    """Map each class name (in NFC) to its column; duplicate names would make columns ambiguous."""
    index = {normalize_label(name): i for i, name in enumerate(class_names)}
    if len(index) != len(class_names):
        raise ValueError(f"class names contain duplicates (after Unicode NFC normalisation): {list(class_names)}")
    return index


# --------------------------------------------------------------------------- statistics


def _as_label_matrix(y: np.ndarray) -> np.ndarray:
    """Validate `y` as an (images, labels) 0/1 matrix and return it as int64 (no overflow)."""
    y = np.asarray(y)
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D (images, labels) array, got shape {y.shape}")
    return (y != 0).astype(np.int64)


def label_counts(y: np.ndarray) -> np.ndarray:
    """Count the images that carry each label.

    Args:
        y: (n, k) multi-hot labels.

    Returns:
        (k,) int64 counts.
    """
    return _as_label_matrix(y).sum(axis=0)


def cooccurrence(y: np.ndarray) -> np.ndarray:
    """Count the images that carry each pair of labels.

    Args:
        y: (n, k) multi-hot labels.

    Returns:
        (k, k) int64 symmetric matrix; entry [i, j] counts images with both i and j, so the
        diagonal holds the label counts.
    """
    y = _as_label_matrix(y)
    return y.T @ y


def conditional_probabilities(y: np.ndarray) -> np.ndarray:
    """Estimate P(j | i): of the images with label i, the share that also has label j.

    Args:
        y: (n, k) multi-hot labels.

    Returns:
        (k, k) float64 matrix with P[i, j] = P(j | i); row i is NaN when label i never occurs
        (the conditional is undefined, not zero).
    """
    both = cooccurrence(y).astype(np.float64)
    counts = np.diag(both).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        p = both / counts[:, None]
    p[counts == 0, :] = np.nan
    return p


def phi_coefficients(y: np.ndarray) -> np.ndarray:
    """Compute the phi coefficient (Pearson correlation of two 0/1 variables) per label pair.

    +1: the labels always appear together; -1: never together; 0: unrelated.

    Args:
        y: (n, k) multi-hot labels.

    Returns:
        (k, k) float64 symmetric matrix; NaN where undefined, i.e. for any pair involving a
        label that is constant (in no image or in every image), since it has no variance.
    """
    y = _as_label_matrix(y)
    n = y.shape[0]
    both = (y.T @ y).astype(np.float64)
    counts = np.diag(both).copy()
    # phi = (n11*n00 - n10*n01) / sqrt(n1. n0. n.1 n.0); the numerator simplifies to
    # n*n11 - c_i*c_j, which avoids building the four 2x2 cells per pair.
    numerator = n * both - np.outer(counts, counts)
    spread = counts * (n - counts)
    denominator = np.sqrt(np.outer(spread, spread))
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = numerator / denominator
    phi[denominator == 0] = np.nan
    return phi


@dataclass(frozen=True)
class CorrelatedPair:
    """Two labels that the data (almost) never shows apart."""

    first: str
    """The first label (earlier in class order)."""
    second: str
    """The second label."""
    p_second_given_first: float
    """P(second | first): share of `first` images that also have `second`."""
    p_first_given_second: float
    """P(first | second): share of `second` images that also have `first`."""
    both: int
    """Images with both labels."""
    first_only: int
    """Images with `first` but not `second`."""
    second_only: int
    """Images with `second` but not `first`."""
    phi: float
    """Phi coefficient of the pair (NaN when a label is constant)."""


def find_correlated_pairs(
    y: np.ndarray,
    class_names: Sequence[str],
    threshold: float = DEFAULT_CORRELATION_THRESHOLD,
) -> list[CorrelatedPair]:
    """Find label pairs whose two conditionals are both at or above `threshold`.

    Both directions must be high: `trees` given `mountains` may be 0.99 simply because trees
    are common, which is harmless as long as many `trees` images have no mountains.

    Args:
        y: (n, k) multi-hot labels.
        class_names: the k label names, in column order.
        threshold: in (0, 1]; 0.95 means "seen apart in at most 5% of either label's images".

    Returns:
        The pairs, most tightly tied first (highest smaller conditional), then class order.

    Raises:
        UserError: `threshold` is outside (0, 1].
    """
    _check_threshold(threshold)
    y = _check_columns(y, class_names)
    both = cooccurrence(y)
    p = conditional_probabilities(y)
    phi = phi_coefficients(y)
    counts = np.diag(both)
    pairs = []
    k = len(class_names)
    for i in range(k):
        for j in range(i + 1, k):
            # NaN (a label never occurs) compares False, so absent labels are never flagged.
            if p[i, j] >= threshold and p[j, i] >= threshold:
                pairs.append(
                    CorrelatedPair(
                        first=class_names[i],
                        second=class_names[j],
                        p_second_given_first=float(p[i, j]),
                        p_first_given_second=float(p[j, i]),
                        both=int(both[i, j]),
                        first_only=int(counts[i] - both[i, j]),
                        second_only=int(counts[j] - both[i, j]),
                        phi=float(phi[i, j]),
                    )
                )
    pairs.sort(key=lambda pr: -min(pr.p_second_given_first, pr.p_first_given_second))
    return pairs


def _check_threshold(threshold: float) -> None:
    """Reject thresholds that would flag every pair (<= 0) or none (> 1)."""
    if not 0.0 < threshold <= 1.0:
        raise UserError(
            f"correlation threshold must be in (0, 1], got {threshold}; "
            f"{DEFAULT_CORRELATION_THRESHOLD} flags pairs seen apart in at most 5% of images."
        )


def _check_columns(y: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """Check `y` has one column per class name; return it as an int64 0/1 matrix."""
    y = _as_label_matrix(y)
    if y.shape[1] != len(class_names):
        raise ValueError(f"labels have {y.shape[1]} columns but there are {len(class_names)} class names")
    _class_index(class_names)
    return y


# --------------------------------------------------------------------------- report


def format_label_analysis(
    y: np.ndarray,
    class_names: Sequence[str],
    threshold: float = DEFAULT_CORRELATION_THRESHOLD,
) -> str:
    """Render a plain-text report on label frequencies and correlations.

    Sections: frequencies (count and share), co-occurrence counts, P(j | i), phi per pair
    sorted by |phi|, and FLAGS for pairs the data cannot teach a model to tell apart.

    Args:
        y: (n, k) multi-hot labels of the whole data set.
        class_names: the k label names, in column order.
        threshold: both conditionals at or above this flag a pair.

    Returns:
        The report, lines joined with newlines (ends with a newline).

    Raises:
        UserError: there are no images, or `threshold` is outside (0, 1].
    """
    _check_threshold(threshold)
    y = _check_columns(y, class_names)
    if y.shape[0] == 0:
        raise UserError(
            "the data set has no images, so there are no labels to analyse; "
            "check the --data URI points at a data set with at least one image."
        )
    names = list(class_names)
    sections = [
        _format_frequencies(y, names),
        _format_matrix(
            "Co-occurrence: images with both labels (diagonal = images with the label)",
            cooccurrence(y),
            names,
            lambda v: str(int(v)),
        ),
        _format_matrix(
            "P(column | row): of the images with the row label, the share that also has the column label",
            conditional_probabilities(y),
            names,
            lambda v: f"{v:.3f}",
        ),
        _format_phi(y, names),
        _format_flags(find_correlated_pairs(y, names, threshold), threshold),
    ]
    return "\n\n".join(sections) + "\n"


def _format_frequencies(y: np.ndarray, names: list[str]) -> str:
    """Frequency table plus the labels-per-image summary and constant-label warnings."""
    n = y.shape[0]
    counts = y.sum(axis=0)
    width = max(len(s) for s in names + ["label"])
    lines = [
        f"Label frequencies ({n} images, {len(names)} labels)",
        f"  {'label':<{width}}  {'count':>7}  {'share':>6}",
    ]
    for name, count in zip(names, counts):
        lines.append(f"  {name:<{width}}  {count:>7d}  {count / n:>6.1%}")
    per_image = y.sum(axis=1)
    lines.append(
        f"  mean labels per image: {per_image.mean():.2f}; images with no label: {int((per_image == 0).sum())}"
    )
    # A label in every image (or none) gives the model nothing to contrast it with.
    for name, count in zip(names, counts):
        if count == 0:
            lines.append(f"  NOTE {name} appears in no image: the model cannot learn it.")
        elif count == n:
            lines.append(f"  NOTE {name} appears in every image: the model cannot learn when it is absent.")
    return "\n".join(lines)


def _format_matrix(title: str, matrix: np.ndarray, names: list[str], fmt) -> str:
    """Render a k x k matrix with row and column headers; NaN prints as '-'."""
    cells = [[("-" if np.isnan(v) else fmt(v)) for v in row] for row in matrix.astype(float)]
    width = max([len(s) for s in names] + [len(c) for row in cells for c in row])
    row_width = max(len(s) for s in names)
    lines = [title, "  " + " " * row_width + "".join(f"  {s:>{width}}" for s in names)]
    for name, row in zip(names, cells):
        lines.append(f"  {name:<{row_width}}" + "".join(f"  {c:>{width}}" for c in row))
    return "\n".join(lines)


def _format_phi(y: np.ndarray, names: list[str]) -> str:
    """List phi for every pair, strongest |phi| first; undefined pairs go last."""
    phi = phi_coefficients(y)
    k = len(names)
    pairs = [(names[i], names[j], phi[i, j]) for i in range(k) for j in range(i + 1, k)]
    # NaN sorts last: there is nothing to rank for a constant label.
    pairs.sort(key=lambda t: (np.isnan(t[2]), -abs(t[2]) if not np.isnan(t[2]) else 0.0))
    width = max([len(f"{a} + {b}") for a, b, _ in pairs] + [4])
    lines = ["Phi correlation per pair, strongest first (+1 always together, -1 never together, 0 unrelated)"]
    for a, b, value in pairs:
        text = "n/a (a label is in every image or in none)" if np.isnan(value) else f"{value:+.3f}"
        lines.append(f"  {a + ' + ' + b:<{width}}  {text}")
    if not pairs:
        lines.append("  (only one label: no pairs)")
    return "\n".join(lines)


def _format_flags(pairs: list[CorrelatedPair], threshold: float) -> str:
    """The FLAG section: one paragraph per correlated pair, or a line saying there are none."""
    title = f"FLAGS: pairs seen together in at least {threshold:.0%} of either label's images"
    if not pairs:
        return f"{title}\n  none: every pair of labels appears apart often enough to be learnt."
    lines = [title]
    for pr in pairs:
        a, b = pr.first, pr.second
        lines.append(
            f"  FLAG {a} + {b}: P({b} | {a}) = {pr.p_second_given_first:.3f}, "
            f"P({a} | {b}) = {pr.p_first_given_second:.3f}; {pr.both} images with both, "
            f"{pr.first_only} with only {a}, {pr.second_only} with only {b}."
        )
        lines.append(
            f"       The data cannot teach the model to tell {a} and {b} apart; high "
            f"per-label accuracy on them says nothing about whether it can — add images "
            f"with only one of them."
        )
    return "\n".join(lines)
