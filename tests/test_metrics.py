"""graft's metrics (computed by scikit-learn) against their definitions on cases small enough to count by hand."""
import numpy as np
import pytest

from graft.evaluation import evaluate_logits
from graft.multilabel import average_precision


def test_tied_scores_are_one_recall_step():
    # 0.9 (+), then 0.8 (+) and 0.8 (-) tied, then 0.1 (-): thresholds 0.9 -> precision 1, recall 1/2;
    # 0.8 -> precision 2/3, recall 1. Breaking the tie with the positive first would give 1.0.
    assert average_precision(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision(np.array([0.3, 0.2]), np.array([0, 1])) == pytest.approx(0.5)
    assert np.isnan(average_precision(np.array([0.3, 0.2]), np.array([0, 0])))


def test_confusion_counts_true_class_rows_and_predicted_columns():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    logits = np.eye(4)[predicted]  # a class never predicted nor present (3) still gets its row and column
    evaluation = evaluate_logits(logits, labels, ["a", "b", "c", "d"])
    expected = np.zeros((4, 4), np.int64)
    for true, guess in zip(labels, predicted):
        expected[true, guess] += 1
    assert np.array_equal(evaluation.confusion, expected)
    assert evaluation.per_class["a"] == 0.5 and evaluation.per_class["c"] == pytest.approx(2 / 3) and np.isnan(evaluation.per_class["d"])
    assert evaluation.accuracy == pytest.approx(4 / 6)
    empty = evaluate_logits(np.zeros((0, 4)), np.zeros(0, np.int64), ["a", "b", "c", "d"])
    assert empty.confusion.shape == (4, 4) and not empty.confusion.any() and np.isnan(empty.accuracy)
