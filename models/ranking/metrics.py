"""Offline ranking metrics: AUC, GAUC (user-weighted AUC, DIN paper eq. 1) and logloss."""

from __future__ import annotations

import math

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the Mann-Whitney rank statistic (ties get average ranks).

    Returns NaN when only one class is present.
    """
    labels = np.asarray(labels, dtype=np.float64)
    positives = labels.sum()
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float(
        (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Tied runs share the mean of their 1-based ranks.
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    mean_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_ranks, ends - starts)
    return ranks


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """``sum_u n_u AUC_u / sum_u n_u`` over users having both classes; ``n_u`` = their samples.

    Users with a single class carry no ranking information and are skipped (as in the paper).
    """
    users = np.asarray(users)
    order = np.argsort(users, kind="mergesort")
    users, labels, scores = users[order], np.asarray(labels)[order], np.asarray(scores)[order]
    _, starts = np.unique(users, return_index=True)
    ends = np.append(starts[1:], len(users))
    weighted, weight = 0.0, 0
    for start, end in zip(starts, ends):
        value = auc(labels[start:end], scores[start:end])
        if not math.isnan(value):
            weighted += value * (end - start)
            weight += end - start
    return float(weighted / weight) if weight else math.nan


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with probabilities clipped to ``[eps, 1 - eps]``."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """All three metrics plus the row count, as one dict."""
    return {
        "auc": auc(labels, probabilities),
        "gauc": gauc(users, labels, probabilities),
        "logloss": logloss(labels, probabilities),
        "rows": float(len(labels)),
    }
