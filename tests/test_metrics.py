"""Tests for utils.metrics: each task's metrics by hand, against scipy and scikit-learn, and degenerate input."""
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from utils.metrics import compute_metrics

# Confusion matrix: TP=3, FN=1, FP=2, TN=4.
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PREDS = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_metrics_by_hand():
    assert compute_metrics("mrpc", PREDS, LABELS) == pytest.approx(
        {"accuracy": 0.7, "f1": 2 * 3 / (2 * 3 + 2 + 1)})
    mcc = (3 * 4 - 2 * 1) / math.sqrt((3 + 2) * (3 + 1) * (4 + 2) * (4 + 1))
    assert compute_metrics("cola", np.array(PREDS), LABELS) == pytest.approx({"mcc": mcc})
    assert compute_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2]) == {"accuracy": 0.75}
    r = compute_metrics("stsb", [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert r == pytest.approx({"pearson": 9 / math.sqrt(84), "spearman": 1.0})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(0, 5)), min_size=3, max_size=30))
def test_correlations_match_scipy(pairs):
    pred, gold = map(np.array, zip(*pairs))
    r = compute_metrics("stsb", pred[:, None], gold)  # an (n, 1) regression output is fine
    if np.ptp(pred) > 1e-6 and np.ptp(gold) > 1e-6:
        assert r["pearson"] == pytest.approx(pearsonr(pred, gold)[0], abs=1e-9)
        assert r["spearman"] == pytest.approx(spearmanr(pred, gold)[0], abs=1e-9)


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")  # scikit-learn's, on the reference
@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), min_size=1, max_size=30))
def test_classification_metrics_match_sklearn(pairs):
    pred, gold = map(np.array, zip(*pairs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = compute_metrics("qqp", pred, gold) | compute_metrics("cola", pred, gold)
    assert r["accuracy"] == np.mean(pred == gold)
    assert r["f1"] == pytest.approx(f1_score(gold, pred, zero_division=0))
    assert r["mcc"] == pytest.approx(matthews_corrcoef(gold, pred))


def test_degenerate_metrics_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_metrics("cola", [1, 1, 1], [0, 1, 1]) == {"mcc": 0.0}
        assert compute_metrics("mrpc", [0, 0], [0, 1]) == {"accuracy": 0.5, "f1": 0.0}
        assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == {"pearson": 0.0, "spearman": 0.0}


def test_metric_input_errors():
    with pytest.raises(ValueError, match="argmax"):
        compute_metrics("rte", np.zeros((3, 2)), [0, 1, 0])
    with pytest.raises(ValueError, match="equally many"):
        compute_metrics("rte", [0, 1], [0, 1, 0])
