import math

import numpy as np
import pytest

from models.ranking.metrics import auc, evaluate, gauc, logloss


def test_auc_perfect_reversed_and_tied() -> None:
    labels = np.array([0, 0, 1, 1])
    assert auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auc(labels, np.full(4, 0.5)) == 0.5


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = rng.integers(0, 10, 200).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(labels, scores) == pytest.approx(pairwise)


def test_auc_of_one_class_is_nan() -> None:
    assert math.isnan(auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_gauc_weights_users_by_sample_count_and_skips_one_class_users() -> None:
    users = np.array(["a"] * 4 + ["b"] * 2 + ["c"] * 3)
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.1, 0.9, 0.5, 0.5, 0.5])
    # a: AUC 1 over 4 rows, b: AUC 0 over 2 rows, c: one class, skipped.
    assert gauc(users, labels, scores) == pytest.approx(4 / 6)


def test_logloss_and_evaluate() -> None:
    labels = np.array([1, 0])
    assert logloss(labels, np.array([0.5, 0.5])) == pytest.approx(math.log(2))
    metrics = evaluate(np.array(["u", "u"]), labels, np.array([0.9, 0.1]))
    assert metrics["auc"] == 1.0 and metrics["gauc"] == 1.0 and metrics["rows"] == 2
