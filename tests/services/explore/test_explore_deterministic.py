"""Greedy, UCB1 and LinUCB are deterministic given their statistics; UCB1 prefers an unexplored
candidate the ranker likes over a well-explored mediocre one; settings reject bad parameters."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from feature_store.settings import Settings
from services.explore.factory import policy_from_settings
from services.explore.greedy import Greedy
from services.explore.linucb import LinUcb
from services.explore.policy import ItemCounts, LinearStats, Policy, Ranked, Stats
from services.explore.ucb import Ucb1

N, K, D = 20, 3, 4


def _ranked() -> Ranked:
    return Ranked(tuple(f"i{i}" for i in range(N)), np.linspace(1.0, 0.0, N))


def _explored_counts() -> ItemCounts:
    """Every candidate well explored at an 8% CTR (above every prior mean, so a policy without the
    exploration bonus keeps the ranker's order), except i5 and i9, never shown."""
    examined = np.full(N, 5000.0)
    examined[[5, 9]] = 0
    return ItemCounts(examined, examined * 0.08)


def _linear_gram() -> tuple[np.ndarray, np.ndarray, np.ndarray, LinearStats]:
    """A_i, b_i, x and the statistics the policy reads (packed from A_i⁻¹, b_i)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(N, 50, D))
    A = np.eye(D) + np.einsum("nti,ntj->nij", x, x)
    b = np.einsum("nti,nt->ni", x, rng.random((N, 50)))
    context = rng.normal(size=D)
    return A, b, context, LinearStats.from_inverse(np.linalg.inv(A), b, context)


def _linear_stats() -> LinearStats:
    return _linear_gram()[3]


@pytest.mark.parametrize(("policy", "stats"), [
    (Greedy(), None), (Ucb1(prior_strength=10.0), _explored_counts()), (LinUcb(alpha=0.5), _linear_stats()),
])
def test_deterministic_policies_give_one_slate_with_propensity_one(policy: Policy, stats: Stats) -> None:
    slates = {policy.choose(_ranked(), K, np.random.default_rng(seed), stats) for seed in range(20)}
    assert len(slates) == 1
    slate = slates.pop()
    assert slate.propensities == (1.0,) * K and len(set(slate.item_ids)) == K


def test_greedy_is_the_rank_order() -> None:
    assert Greedy().choose(_ranked(), K, np.random.default_rng(0)).item_ids == ("i0", "i1", "i2")


def test_ucb_picks_unexplored_items_with_a_strong_prior_over_well_explored_mediocre_ones() -> None:
    slate = Ucb1(prior_strength=10.0).choose(_ranked(), K, np.random.default_rng(0), _explored_counts())
    assert slate.item_ids == ("i5", "i9", "i0")  # the unexplored, the better prior (rank 5) first


def test_ucb_without_feedback_keeps_the_rankers_order() -> None:
    counts = ItemCounts(np.zeros(N), np.zeros(N))
    assert Ucb1(prior_strength=10.0).choose(_ranked(), K, np.random.default_rng(0), counts).item_ids == ("i0", "i1", "i2")


def test_linucb_scores_follow_the_formula() -> None:
    """p_i = xᵀA⁻¹b + α·sqrt(xᵀA⁻¹x), computed one item at a time with solves."""
    gram, bs, x, stats = _linear_gram()
    expected = [x @ np.linalg.solve(A, b) + 0.5 * np.sqrt(x @ np.linalg.solve(A, x)) for A, b in zip(gram, bs)]
    np.testing.assert_allclose(LinUcb(alpha=0.5).indices(stats), expected, rtol=1e-9)
    order = LinUcb(alpha=0.5).choose(_ranked(), K, np.random.default_rng(0), stats).positions
    assert list(order) == list(np.argsort(expected)[::-1][:K])


def test_linucb_prefers_the_uncertain_item_when_means_tie() -> None:
    A = np.stack([np.eye(D) * 100.0, np.eye(D)] + [np.eye(D) * 100.0] * (N - 2))
    stats = LinearStats.from_inverse(np.linalg.inv(A), np.zeros((N, D)), np.ones(D))
    assert LinUcb(alpha=1.0).choose(_ranked(), 1, np.random.default_rng(0), stats).item_ids == ("i1",)


@pytest.mark.parametrize(("explore", "field"), [
    ({"policy": "softmax"}, "explore.policy"), ({"epsilon": 1.5}, "explore.epsilon"),
    ({"epsilon": -0.1}, "explore.epsilon"), ({"prior_strength": 0}, "explore.prior_strength"),
])
def test_invalid_explore_settings_name_the_field(settings: Settings, explore: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(state_dir=settings.state_dir, explore=explore)
    assert field in str(error.value)


def test_settings_build_the_named_policy(settings: Settings) -> None:
    policy = policy_from_settings(Settings(state_dir=settings.state_dir,
                                           explore={"policy": "epsilon_greedy", "epsilon": 0.2}).explore)
    assert policy.label == "epsilon_greedy(epsilon=0.2)"
