"""NumPy metrics against hand computations; Keras training metrics against NumPy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from job.errors import UserError
from job.evaluation import scores as M
from job.training import metrics as keras_metrics
from tests.contracts import METRICS_SPLIT_KEYS

NAMES = ["desert", "sea", "trees"]

# 4 samples x 3 labels. "trees" (column 2) has no positives; sample 3 has no labels.
Y = np.array(
    [
        [1, 0, 0],
        [1, 1, 0],
        [0, 1, 0],
        [0, 0, 0],
    ],
    dtype=np.float64,
)
# Probabilities chosen by hand; logits are their inverse sigmoid.
P = np.array(
    [
        [0.9, 0.2, 0.1],
        [0.6, 0.4, 0.7],
        [0.3, 0.8, 0.2],
        [0.2, 0.6, 0.05],
    ]
)
LOGITS = np.log(P / (1 - P))
# Predictions at 0.5 (p > 0.5):
#   [[1,0,0],[1,0,1],[0,1,0],[0,1,0]]


def approx(x, rel=1e-9, abs=1e-12):
    return pytest.approx(x, rel=rel, abs=abs)


# --- sigmoid / bce -----------------------------------------------------------------------


def test_sigmoid_values_and_stability():
    # overflow or 0/0 would raise here (underflow to 0 is the right answer)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = M.sigmoid([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    # 1/(1+e) = 0.268941..., 1/(1+e^-1) = 0.731058...
    assert s.tolist() == approx([0.0, 1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-1)), 1.0])
    assert M.sigmoid(LOGITS) == approx(P)


def test_bce_matches_hand_computation():
    # BCE = -(1/12) * sum over entries of [y log p + (1-y) log(1-p)]
    by_hand = (
        -(
            math.log(0.9)
            + math.log(0.8)
            + math.log(0.9)  # sample 0: y=1,0,0
            + math.log(0.6)
            + math.log(0.4)
            + math.log(0.3)  # sample 1: y=1,1,0
            + math.log(0.7)
            + math.log(0.8)
            + math.log(0.8)  # sample 2: y=0,1,0
            + math.log(0.8)
            + math.log(0.4)
            + math.log(0.95)  # sample 3: y=0,0,0
        )
        / 12
    )
    assert M.bce_from_logits(Y, LOGITS) == approx(by_hand)


def test_bce_is_stable_for_huge_logits():
    # y=1, x=1000 -> 0 ; y=0, x=1000 -> 1000 ; y=0, x=-1000 -> 0 ; y=1, x=-1000 -> 1000
    got = M.bce_from_logits([[1, 0, 0, 1]], [[1000.0, 1000.0, -1000.0, -1000.0]])
    assert got == approx(2000 / 4)


# --- average precision ---------------------------------------------------------------------


def test_average_precision_sklearn_doc_example():
    # sklearn docs: y=[0,0,1,1], s=[0.1,0.4,0.35,0.8] -> 0.8333...
    # ranked: 0.8(+) P=1 R=.5 ; 0.4(-) P=.5 R=.5 ; 0.35(+) P=2/3 R=1 ; 0.1(-)
    # AP = .5*1 + 0*.5 + .5*(2/3) + 0 = 5/6
    assert M.average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == approx(5 / 6)


def test_average_precision_ties_form_one_step():
    # both scores tie: one threshold, P=1/2 at R=1 -> AP = 0.5 (sklearn gives 0.5)
    assert M.average_precision([1, 0], [0.5, 0.5]) == approx(0.5)
    # ranked: 0.9(+) P=1 R=1/2 ; {0.5(+),0.5(-)} P=2/3 R=1 -> AP = .5 + .5*2/3 = 5/6
    assert M.average_precision([1, 1, 0], [0.9, 0.5, 0.5]) == approx(5 / 6)


def test_average_precision_nan_without_positives_and_one_when_perfect():
    assert math.isnan(M.average_precision([0, 0, 0], [0.1, 0.5, 0.9]))
    assert M.average_precision([0, 1, 1], [0.1, 0.8, 0.7]) == approx(1.0)


# --- evaluate_predictions --------------------------------------------------------------------


def test_evaluate_predictions_by_hand():
    r = M.evaluate_predictions(Y, LOGITS, NAMES)
    desert, sea, trees = (r["per_label"][n] for n in NAMES)
    # desert: y=[1,1,0,0], pred=[1,1,0,0]: tp=2 fp=0 fn=0 ; ranked 0.9+,0.6+,0.3-,0.2- -> AP 1
    assert desert == {
        "support": 2,
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "average_precision": approx(1.0),
        "binary_accuracy": 1.0,
        "threshold": 0.5,
    }
    # sea: y=[0,1,1,0], p=[.2,.4,.8,.6], pred=[0,0,1,1]: tp=1 fp=1 fn=1 -> P=R=F1=.5,
    # accuracy 2/4. ranked .8+ (P1,R.5), .6- , .4+ (P2/3,R1), .2- -> AP=.5+.5*2/3=5/6
    assert sea == {
        "support": 2,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "average_precision": approx(5 / 6),
        "binary_accuracy": 0.5,
        "threshold": 0.5,
    }
    # trees: no positives, pred=[0,1,0,0]: tp=0 fp=1 -> P=0/1=0, R=0/0->0, F1 0/(0+1+0)=0,
    # accuracy 3/4, AP undefined -> None
    assert trees == {
        "support": 0,
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "average_precision": None,
        "binary_accuracy": 0.75,
        "threshold": 0.5,
    }
    # pooled: tp=3 fp=2 fn=1 -> micro F1 = 6/(6+2+1) = 2/3 ; 3 wrong of 12 entries
    assert r["micro_f1"] == approx(2 / 3)
    assert r["macro_f1"] == approx((1 + 0.5 + 0) / 3)
    assert r["mean_average_precision"] == approx((1 + 5 / 6) / 2)  # trees excluded
    assert r["binary_accuracy"] == approx(9 / 12)
    assert r["hamming_loss"] == approx(3 / 12)
    # exact rows: sample 0 and sample 2 -> 2/4
    assert r["subset_accuracy"] == approx(0.5)
    # cos per sample: .9/|p0|, (.6+.4)/(sqrt2 |p1|), .8/|p2|, zero labels -> 0
    cos = [
        0.9 / math.sqrt(0.81 + 0.04 + 0.01),
        1.0 / (math.sqrt(2) * math.sqrt(0.36 + 0.16 + 0.49)),
        0.8 / math.sqrt(0.09 + 0.64 + 0.04),
        0.0,
    ]
    assert r["cosine_similarity"] == approx(sum(cos) / 4)
    assert r["loss"] == approx(M.bce_from_logits(Y, LOGITS))


def test_evaluate_predictions_is_plain_json():
    r = M.evaluate_predictions(Y, LOGITS, NAMES)
    json.dumps(r, allow_nan=False)  # no NaN, no numpy scalars
    assert set(r) == METRICS_SPLIT_KEYS
    assert type(r["per_label"]["sea"]["support"]) is int
    assert all(type(r[k]) is float for k in r if k != "per_label")


def test_evaluate_per_label_thresholds():
    r = M.evaluate_predictions(Y, LOGITS, NAMES, thresholds=np.array([0.5, 0.7, 0.75]))
    # sea at 0.7: p=[.2,.4,.8,.6] -> pred=[0,0,1,0]: tp=1 fp=0 fn=1 -> P=1 R=.5 F1=2/3
    sea = r["per_label"]["sea"]
    assert (sea["precision"], sea["recall"], sea["f1"], sea["threshold"]) == approx((1.0, 0.5, 2 / 3, 0.7))
    # trees at 0.75: nothing predicted -> all zero_division -> 0, accuracy 4/4
    trees = r["per_label"]["trees"]
    assert (trees["precision"], trees["f1"], trees["binary_accuracy"]) == (0.0, 0.0, 1.0)
    # AP ignores thresholds
    assert sea["average_precision"] == approx(5 / 6)


def test_evaluate_all_zero_prediction():
    # every logit -5 -> nothing predicted: tp=0 everywhere -> all F1 = 0 (zero_division=0)
    logits = np.full_like(Y, -5.0)
    r = M.evaluate_predictions(Y, logits, NAMES)
    assert r["micro_f1"] == 0.0 and r["macro_f1"] == 0.0
    assert all(v["precision"] == 0.0 and v["recall"] == 0.0 for v in r["per_label"].values())
    # 4 positives missed of 12 entries; only sample 3 (no labels) is exactly right
    assert r["hamming_loss"] == approx(4 / 12)
    assert r["subset_accuracy"] == approx(1 / 4)
    # constant scores: one tied step, P = 2/4 for both labels with positives
    assert r["mean_average_precision"] == approx(0.5)


def test_evaluate_perfect_prediction():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], dtype=float)
    logits = np.where(y > 0, 10.0, -10.0)
    r = M.evaluate_predictions(y, logits, NAMES)
    assert r["micro_f1"] == 1.0 and r["macro_f1"] == 1.0
    assert r["binary_accuracy"] == 1.0 and r["subset_accuracy"] == 1.0
    assert r["hamming_loss"] == 0.0
    assert r["mean_average_precision"] == approx(1.0)
    # sigmoid(10) = 0.9999546: cosine ~ 1, loss = log(1 + e^-10) ~ 4.54e-5
    assert r["cosine_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert r["loss"] == approx(math.log1p(math.exp(-10)))


def test_evaluate_no_positive_anywhere_gives_none_map():
    r = M.evaluate_predictions(np.zeros((2, 3)), np.full((2, 3), -3.0), NAMES)
    assert r["mean_average_precision"] is None
    # no labels and nothing predicted: all right, cosine 0 by convention
    assert r["subset_accuracy"] == 1.0 and r["cosine_similarity"] == 0.0


@pytest.mark.parametrize(
    "y, logits, names",
    [
        (np.zeros((2, 3)), np.zeros((2, 2)), NAMES),  # shape mismatch
        (np.zeros((0, 3)), np.zeros((0, 3)), NAMES),  # empty split
        (np.zeros((2, 3)), np.zeros((2, 3)), NAMES[:2]),  # names mismatch
    ],
)
def test_evaluate_rejects_bad_inputs(y, logits, names):
    with pytest.raises(ValueError):
        M.evaluate_predictions(y, logits, names)


# --- threshold tuning ------------------------------------------------------------------------


def test_tune_thresholds_picks_the_gap_midpoint():
    # positives at .3,.4 and negatives at .1,.2: any t in [.2,.3) is perfect; the candidate
    # in that gap is its midpoint .25
    y = np.array([[1], [1], [0], [0]])
    p = np.array([[0.3], [0.4], [0.1], [0.2]])
    t, warnings = M.tune_thresholds(y, p)
    assert t.tolist() == approx([0.25]) and warnings == []


def test_tune_thresholds_non_separable():
    # y=[1,0,1,0], p=[.9,.8,.7,.1]; F1 = 2TP/(#pred + #pos):
    #   t=.05: all -> 4/6 ; t=.4: {.9,.8,.7} -> 4/5 ; t=.75: {.9,.8} -> 2/4 ; t=.85: {.9} -> 2/3
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[0.9], [0.8], [0.7], [0.1]])
    t, _ = M.tune_thresholds(y, p)
    assert t.tolist() == approx([0.4])


def test_tune_thresholds_keeps_default_for_label_without_positives():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.array([[0.9, 0.7], [0.1, 0.2], [0.8, 0.3]])
    t, warnings = M.tune_thresholds(y, p, class_names=["sea", "trees"])
    assert t[1] == 0.5
    assert len(warnings) == 1 and "trees" in warnings[0] and "0.5" in warnings[0]
    # label 0: gap (.1, .8) -> midpoint .45
    assert t[0] == approx(0.45)


def test_tune_thresholds_rejects_unknown_objective():
    with pytest.raises(UserError, match="f1"):
        M.tune_thresholds(np.ones((2, 1)), np.ones((2, 1)), objective="accuracy")


# --- Keras metrics vs NumPy ------------------------------------------------------------------


def _keras_results(y, logits):
    import tensorflow as tf

    out = {}
    for metric in keras_metrics.training_metrics(y.shape[1]):
        metric.update_state(tf.constant(y, tf.float32), tf.constant(logits, tf.float32))
        out[metric.name] = float(metric.result())
    return out


def test_keras_metric_names():
    assert [m.name for m in keras_metrics.training_metrics(3)] == [
        "binary_accuracy",
        "cosine_similarity",
        "macro_f1",
        "mean_average_precision",
    ]


def test_keras_metrics_match_numpy_on_fixed_logits():
    # Fixed random logits; every label has positives (Keras' AUC scores a no-positive
    # label 0 whereas the NumPy mAP skips it).
    rng = np.random.default_rng(0)
    y = (rng.random((64, 4)) < 0.4).astype(np.float64)
    logits = np.round(2.0 * rng.standard_normal((64, 4)) + 1.5 * (2 * y - 1), 3)
    assert (y.sum(axis=0) > 0).all() and not np.any(logits == 0)
    ref = M.evaluate_predictions(y, logits, ["a", "b", "c", "d"])
    got = _keras_results(y, logits)
    assert got["binary_accuracy"] == pytest.approx(ref["binary_accuracy"], abs=1e-7)
    assert got["macro_f1"] == pytest.approx(ref["macro_f1"], abs=1e-6)
    assert got["cosine_similarity"] == pytest.approx(ref["cosine_similarity"], abs=1e-5)
    # interpolated PR-AUC over 200 thresholds vs step AP: close, not equal
    assert got["mean_average_precision"] == pytest.approx(ref["mean_average_precision"], abs=0.03)


def test_keras_metrics_match_hand_values_with_zero_label_row():
    # Same fixture as the NumPy tests: macro F1 (1+.5+0)/3 and cosine with a 0 row agree.
    got = _keras_results(Y, LOGITS)
    assert got["binary_accuracy"] == pytest.approx(9 / 12, abs=1e-7)
    assert got["macro_f1"] == pytest.approx(0.5, abs=1e-6)
    ref = M.evaluate_predictions(Y, LOGITS, NAMES)
    assert got["cosine_similarity"] == pytest.approx(ref["cosine_similarity"], abs=1e-6)


def test_f1_from_logits_config_round_trip():
    metric = keras_metrics.F1FromLogits(5)
    clone = keras_metrics.F1FromLogits.from_config(metric.get_config())
    assert (clone.num_classes, clone.name, clone.threshold, clone.average) == (5, "macro_f1", 0.5, "macro")


def _brute_force_threshold(y, p, default=0.5):
    """The definition: try every midpoint of [0, distinct probabilities], keep the best F1."""
    edges = np.unique(np.r_[0.0, p])
    candidates = (edges[:-1] + edges[1:]) / 2.0 if edges.size > 1 else np.array([default])
    f1 = []
    for c in candidates:
        pred, pos = p > c, y > 0
        denominator = pred.sum() + pos.sum()
        f1.append(2 * (pred & pos).sum() / denominator if denominator else 0.0)
    f1 = np.array(f1)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return candidates[best[np.argmin(np.abs(candidates[best] - default))]]


@pytest.mark.parametrize("seed", range(6))
def test_sorted_threshold_sweep_matches_trying_every_candidate(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = (rng.random((n, 3)) < [0.1, 0.4, 0.7]).astype(int)
    # Rounded scores give ties; some exact zeros and ones test the ends of the range.
    p = np.clip(np.round(0.6 * y + 0.5 * rng.random((n, 3)) - 0.1, 2), 0, 1)
    tuned, _ = M.tune_thresholds(y, p)
    expected = [_brute_force_threshold(y[:, j], p[:, j]) for j in range(3)]
    np.testing.assert_allclose(tuned, expected)
