"""Between-user heterogeneity of the simulated population: the per-user click propensity β_u and
the activity skew, against their planted values and an independent computation of the clicks."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population, population_from_arrays


def _by_hand(truth: GroundTruth, user: int, items: list[int]) -> float:
    """`Σ_k (k + 1)^-η σ(u · v_i + b_i + β_u)` from the raw arrays."""
    p = truth.population
    logits = p.item_vectors[items] @ p.user_vectors[user] + p.item_bias[items] + p.user_bias[user]
    return float(((1.0 + np.arange(len(items))) ** -truth.model.eta / (1 + np.exp(-logits))).sum())


def test_defaults_keep_every_user_at_the_shared_offset() -> None:
    population = make_population(PopulationParams(users=50, items=40, categories=4, seed=3))
    assert not population.user_bias.any()


def test_user_bias_has_the_planted_spread_and_moves_only_its_users_clicks() -> None:
    params = dict(users=4000, items=40, categories=4, seed=3)
    plain = make_population(PopulationParams(**params))
    spread = make_population(PopulationParams(**params, user_bias_spread=1.0))
    assert spread.user_bias.mean() == pytest.approx(0.0, abs=4 / np.sqrt(4000))
    assert spread.user_bias.std() == pytest.approx(1.0, abs=0.05)
    for name in ("user_vectors", "item_vectors", "item_bias", "user_activity"):
        assert np.array_equal(getattr(plain, name), getattr(spread, name)), name
    truth, base = GroundTruth(spread, PositionBasedModel(0.8)), GroundTruth(plain, PositionBasedModel(0.8))
    items = list(range(10))
    ids = [spread.item_id(i) for i in items]
    high, low = int(np.argmax(spread.user_bias)), int(np.argmin(spread.user_bias))
    for user in (high, low):
        assert truth.expected_clicks(spread.user_id(user), ids, 0) == pytest.approx(_by_hand(truth, user, items), rel=1e-12)
    assert truth.expected_clicks(spread.user_id(high), ids, 0) > base.expected_clicks(plain.user_id(high), ids, 0)
    assert truth.expected_clicks(spread.user_id(low), ids, 0) < base.expected_clicks(plain.user_id(low), ids, 0)
    rng = np.random.default_rng(7)
    for user in (high, low):
        clicks = np.array([truth.draw_clicks(spread.user_id(user), ids, 0, rng).sum() for _ in range(20_000)])
        expected = _by_hand(truth, user, items)
        assert abs(clicks.mean() - expected) <= 4.5 * clicks.std() / np.sqrt(len(clicks)) + 1e-9


def test_activity_skew_plants_zipf_shares() -> None:
    default = make_population(PopulationParams(users=1000, items=40, categories=4, seed=5))
    skewed = make_population(PopulationParams(users=1000, items=40, categories=4, seed=5, activity_skew=1.0))
    for population, alpha in ((default, 0.5), (skewed, 1.0)):
        zipf = 1.0 / np.arange(1, 1001) ** alpha
        assert np.sort(population.user_activity)[::-1] == pytest.approx(zipf / zipf.sum(), rel=1e-12)
    deciles = np.percentile(skewed.user_activity, [10, 90])
    assert deciles[1] / deciles[0] == pytest.approx(9.0, rel=0.02)  # rank 100 against rank 900


def test_a_saved_population_keeps_its_bias_and_an_old_file_loads_with_none() -> None:
    population = make_population(PopulationParams(users=30, items=40, categories=4, seed=2, user_bias_spread=0.5))
    arrays = population.to_arrays()
    assert np.array_equal(population_from_arrays(arrays).user_bias, population.user_bias)
    old = {name: value for name, value in arrays.items() if name != "user_bias"}
    assert not population_from_arrays(old).user_bias.any()


def test_invalid_heterogeneity_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="user_bias_spread"):
        PopulationParams(user_bias_spread=-1.0)
    with pytest.raises(ValueError, match="activity_skew"):
        PopulationParams(activity_skew=-0.5)
