"""The position-based click model against an independent computation, and the oracle's optimality."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population


def _attractive(truth: GroundTruth, user: int, items: list[int], step: int) -> np.ndarray:
    """`σ(u_t · v_i + b_i)` from the raw arrays (drifted vectors from `drift_at` on), 0 before arrival."""
    p = truth.population
    drift_at = p.params.drift_at
    u = p.drifted_vectors[user] if drift_at is not None and step >= drift_at else p.user_vectors[user]
    logits = np.array([u @ p.item_vectors[i] + p.item_bias[i] for i in items])
    arrived = np.array([p.item_arrival[i] <= step for i in items])
    return np.where(arrived, 1 / (1 + np.exp(-logits)), 0.0)


def _by_hand(truth: GroundTruth, user: int, items: list[int], step: int) -> np.ndarray:
    """Per-slot click probabilities `e_k · a`, with `e_k = (k + 1)^-η`."""
    return (1.0 + np.arange(len(items))) ** -truth.model.eta * _attractive(truth, user, items, step)


def test_empirical_click_rates_match_the_expected_clicks() -> None:
    truth = GroundTruth(make_population(PopulationParams(users=20, items=40, categories=4, seed=3)), PositionBasedModel(0.7))
    p = truth.population
    user, items = 5, [int(i) for i in np.random.default_rng(0).permutation(40)[:8]]
    ids = [p.item_id(i) for i in items]
    expected = _by_hand(truth, user, items, step=0)
    assert truth.expected_clicks(p.user_id(user), ids, 0) == pytest.approx(expected.sum(), rel=1e-12)
    draws = 40_000
    rng = np.random.default_rng(11)
    clicks = np.stack([truth.draw_clicks(p.user_id(user), ids, 0, rng) for _ in range(draws)])
    tolerance = 4.5 * np.sqrt(expected * (1 - expected) / draws)
    assert np.all(np.abs(clicks.mean(axis=0) - expected) <= tolerance)
    per_list = clicks.sum(axis=1)
    assert abs(per_list.mean() - expected.sum()) <= 4.5 * per_list.std() / np.sqrt(draws)


def test_the_oracle_list_is_the_best_list_of_its_length() -> None:
    truth = GroundTruth(make_population(PopulationParams(users=6, items=10, categories=2, seed=1)), PositionBasedModel(1.3))
    p = truth.population
    for user in range(6):
        best = max(itertools.permutations(range(10), 3), key=lambda items: _by_hand(truth, user, list(items), 0).sum())
        oracle = truth.oracle_list(p.user_id(user), 3, 0)
        assert oracle == [p.item_id(i) for i in best]
        assert truth.oracle_clicks(p.user_id(user), 3, 0) == pytest.approx(_by_hand(truth, user, list(best), 0).sum())


def test_no_random_list_beats_the_oracle() -> None:
    truth = GroundTruth(make_population(PopulationParams(users=30, items=200, seed=2)), PositionBasedModel())
    p = truth.population
    rng = np.random.default_rng(5)
    for _ in range(300):
        user, k = p.user_id(int(rng.integers(30))), int(rng.integers(1, 11))
        items = [p.item_id(int(i)) for i in rng.choice(200, size=k, replace=False)]
        assert truth.expected_clicks(user, items, 0) <= truth.oracle_clicks(user, k, 0) + 1e-12
    seen = truth.oracle_list(p.user_id(0), 4, 0)
    rest = truth.oracle_list(p.user_id(0), 4, 0, exclude=seen[:2])
    assert rest[:2] == seen[2:] and not set(rest) & set(seen[:2])


def test_items_outside_the_population_or_not_yet_arrived_are_never_clicked() -> None:
    params = PopulationParams(users=5, items=20, categories=2, new_items_at=7, new_items=4)
    truth = GroundTruth(make_population(params), PositionBasedModel())
    p = truth.population
    late = [p.item_id(i) for i in range(20, 24)]
    user = p.user_id(0)
    assert np.all(truth.attractiveness(user, [*late, "someone-elses-item"], 6) == 0)
    assert np.all(truth.attractiveness(user, late, 7) > 0)
    assert not set(late) & set(truth.oracle_list(user, 24, 6)) and len(truth.oracle_list(user, 24, 6)) == 20
    assert set(late) <= set(truth.oracle_list(user, 24, 7))
    assert p.arriving_at(7) == [20, 21, 22, 23] and p.arriving_at(6) == [] and p.arriving_at(0) == []


def test_drift_changes_the_truth_at_its_step_toward_another_category() -> None:
    truth = GroundTruth(make_population(PopulationParams(users=40, items=120, categories=6, drift_at=50)), PositionBasedModel())
    p = truth.population
    ids = [p.item_id(i) for i in range(120)]
    for user in range(40):
        before, last, after = (truth.attractiveness(p.user_id(user), ids, step) for step in (0, 49, 50))
        assert np.array_equal(before, last)
        np.testing.assert_allclose(after, _attractive(truth, user, list(range(120)), 50), rtol=1e-9)
        target = p.item_category == p.drift_category[user]
        assert p.drift_category[user] != p.user_category[user]
        assert after[target].mean() > before[target].mean() + 0.2


def test_new_items_need_the_step_they_arrive_at() -> None:
    with pytest.raises(ValueError, match="new_items > 0 needs new_items_at"):
        PopulationParams(users=5, items=20, new_items=50)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        PopulationParams(seed=-1)
