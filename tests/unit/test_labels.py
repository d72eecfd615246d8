"""Label encoding and label statistics, checked against values computed by hand."""

import numpy as np
import pytest

from job.data.labels import (
    DEFAULT_CLASS_NAMES,
    CorrelatedPair,
    conditional_probabilities,
    cooccurrence,
    find_correlated_pairs,
    format_label_analysis,
    from_multi_hot,
    label_counts,
    parse_label_field,
    phi_coefficients,
    to_multi_hot,
)
from job.errors import UserError

ABC = ("a", "b", "c")
# 4 images, 3 labels. By hand: counts a=3, b=2, c=2; both(a,b)=2, both(a,c)=1, both(b,c)=1.
Y = np.array(
    [
        [1, 1, 0],
        [1, 0, 0],
        [1, 1, 1],
        [0, 0, 1],
    ],
    dtype=np.uint8,
)


# --------------------------------------------------------------------------- encoding


def test_to_multi_hot_sets_named_columns():
    row = to_multi_hot(["sunset", "sea", "sea"], DEFAULT_CLASS_NAMES)
    assert row.dtype == np.uint8
    assert row.tolist() == [0, 0, 1, 1, 0]


def test_to_multi_hot_unknown_label_names_it_and_lists_known_ones():
    with pytest.raises(UserError) as info:
        to_multi_hot(["sea", "beach"], DEFAULT_CLASS_NAMES)
    message = str(info.value)
    assert "'beach'" in message
    assert "desert, mountains, sea, sunset, trees" in message


def test_from_multi_hot_round_trips_in_class_order():
    assert from_multi_hot(np.array([1, 0, 1, 0, 1]), DEFAULT_CLASS_NAMES) == ["desert", "sea", "trees"]
    names = ["trees", "desert"]
    assert from_multi_hot(to_multi_hot(names, DEFAULT_CLASS_NAMES), DEFAULT_CLASS_NAMES) == ["desert", "trees"]
    assert from_multi_hot([0, 0, 0], ABC) == []


def test_from_multi_hot_rejects_wrong_length():
    with pytest.raises(ValueError, match="expected"):
        from_multi_hot([1, 0], ABC)


def test_parse_label_field_dedupes_and_keeps_order():
    assert parse_label_field("sunset sea  sunset trees ") == ["sunset", "sea", "trees"]
    assert parse_label_field("") == []


# --------------------------------------------------------------------------- statistics


def test_label_counts_and_cooccurrence_by_hand():
    assert label_counts(Y).tolist() == [3, 2, 2]
    assert cooccurrence(Y).tolist() == [
        [3, 2, 1],
        [2, 2, 1],
        [1, 1, 2],
    ]


def test_conditional_probabilities_by_hand():
    p = conditional_probabilities(Y)
    # P[i, j] = P(j | i) = both(i, j) / count(i)
    expected = np.array(
        [
            [1.0, 2 / 3, 1 / 3],
            [1.0, 1.0, 1 / 2],
            [1 / 2, 1 / 2, 1.0],
        ]
    )
    np.testing.assert_allclose(p, expected)


def test_conditional_probabilities_nan_for_absent_label():
    y = np.column_stack([Y, np.zeros(4, dtype=np.uint8)])
    p = conditional_probabilities(y)
    assert np.isnan(p[3]).all()  # P(. | d) is undefined: d never occurs
    np.testing.assert_allclose(p[:3, 3], 0.0)  # P(d | a) is a real zero


def test_phi_by_hand():
    phi = phi_coefficients(Y)
    # phi(a, b) = (n*both - ca*cb) / sqrt(ca(n-ca) cb(n-cb)) = (8 - 6) / sqrt(3*1*2*2)
    assert phi[0, 1] == pytest.approx(2 / np.sqrt(12))
    assert phi[0, 2] == pytest.approx(-2 / np.sqrt(12))
    assert phi[1, 2] == pytest.approx(0.0)
    np.testing.assert_allclose(np.diag(phi), 1.0)
    np.testing.assert_allclose(phi, phi.T)


def test_phi_nan_for_constant_labels():
    always = np.ones(4, dtype=np.uint8)
    never = np.zeros(4, dtype=np.uint8)
    phi = phi_coefficients(np.column_stack([Y, always, never]))
    assert np.isnan(phi[3]).all() and np.isnan(phi[:, 3]).all()
    assert np.isnan(phi[4]).all() and np.isnan(phi[:, 4]).all()
    assert not np.isnan(phi[:3, :3]).any()


def test_phi_matches_pearson_correlation_on_random_labels():
    y = (np.random.default_rng(0).random((300, 5)) < 0.4).astype(np.uint8)
    np.testing.assert_allclose(phi_coefficients(y), np.corrcoef(y.T), atol=1e-12)


# --------------------------------------------------------------------------- pairs


def _tied_sea_sunset(n=100, seed=0):
    """Random labels, except sunset is a copy of sea (never apart)."""
    y = (np.random.default_rng(seed).random((n, 5)) < 0.4).astype(np.uint8)
    y[:, 3] = y[:, 2]
    return y


def test_find_correlated_pairs_flags_identical_columns():
    y = _tied_sea_sunset()
    pairs = find_correlated_pairs(y, DEFAULT_CLASS_NAMES)
    both = int(y[:, 2].sum())
    assert pairs == [CorrelatedPair("sea", "sunset", 1.0, 1.0, both, 0, 0, pytest.approx(1.0))]


def test_find_correlated_pairs_needs_both_directions():
    # a -> b always (P(b|a) = 1), but b appears without a in 1 of 10 (P(a|b) = 0.9).
    y = np.zeros((10, 2), dtype=np.uint8)
    y[:9] = 1
    y[9, 1] = 1
    assert find_correlated_pairs(y, ("a", "b"), threshold=0.95) == []
    [pair] = find_correlated_pairs(y, ("a", "b"), threshold=0.9)
    assert (pair.p_second_given_first, pair.p_first_given_second) == (1.0, 0.9)
    assert (pair.both, pair.first_only, pair.second_only) == (9, 0, 1)


def test_find_correlated_pairs_ignores_absent_labels():
    y = np.zeros((5, 2), dtype=np.uint8)
    assert find_correlated_pairs(y, ("a", "b")) == []


def test_bad_threshold_is_a_user_error():
    with pytest.raises(UserError, match="threshold"):
        find_correlated_pairs(Y, ABC, threshold=0.0)


# --------------------------------------------------------------------------- report


def test_analysis_report_flags_tied_pair_with_explanation():
    y = _tied_sea_sunset()
    report = format_label_analysis(y, DEFAULT_CLASS_NAMES)
    assert "FLAG sea + sunset" in report
    assert "cannot teach the model to tell sea and sunset apart" in report
    assert "add images with only one of them" in report
    # phi section lists the tied pair first, at +1.
    phi_section = report.split("Phi correlation")[1]
    assert phi_section.splitlines()[1].split() == ["sea", "+", "sunset", "+1.000"]


def test_analysis_report_without_tied_pairs_says_none():
    y = (np.random.default_rng(1).random((200, 5)) < 0.4).astype(np.uint8)
    report = format_label_analysis(y, DEFAULT_CLASS_NAMES)
    assert "FLAG " not in report
    assert "none: every pair" in report


def test_analysis_report_frequencies_and_nan_cells():
    y = np.column_stack([Y, np.zeros(4, dtype=np.uint8)])
    report = format_label_analysis(y, ("a", "b", "c", "d"))
    frequencies, _, conditionals = (section.splitlines() for section in report.split("\n\n")[:3])
    assert ["a", "3", "75.0%"] in [line.split() for line in frequencies]
    assert ["d", "0", "0.0%"] in [line.split() for line in frequencies]
    assert any("NOTE d appears in no image" in line for line in frequencies)
    # P(. | d) is undefined and shown as '-', not as 0 or nan.
    assert conditionals[-1].split() == ["d", "-", "-", "-", "-"]
    assert conditionals[2].split() == ["a", "1.000", "0.667", "0.333", "0.000"]
    assert "nan" not in report


def test_analysis_report_with_no_images_is_a_user_error():
    with pytest.raises(UserError, match="no images"):
        format_label_analysis(np.zeros((0, 5)), DEFAULT_CLASS_NAMES)
