"""Thompson's propensities computed off the request path: the explore stage draws the slate and
leaves the estimate pending; computed later (the impression writer), it is bit for bit what
`Thompson.choose` returns with the same generator, so the frequency and exact-integral tests of
`choose` (test_explore_propensities.py) hold for the logged values too."""

from __future__ import annotations

import math

import numpy as np

from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.policy import ItemCounts, Ranked
from services.explore.stage import Explored, ExploreStage
from services.explore.thompson import Thompson


def test_the_deferred_estimate_is_what_choose_returns_with_the_same_generator() -> None:
    cases = np.random.default_rng(0)
    for case in range(60):
        n, k, draws = int(cases.integers(1, 60)), int(cases.integers(1, 12)), int(cases.integers(1, 40))
        examined = cases.uniform(0, 10 ** cases.uniform(0, 5), n)
        stats = ItemCounts(examined, np.floor(examined * cases.uniform(0, 0.2, n)))
        ranked = Ranked(tuple(f"i{i}" for i in range(n)), np.linspace(1, 0, n))
        policy = Thompson(float(cases.uniform(0.5, 20)), draws)
        chosen = policy.choose(ranked, k, np.random.default_rng([case, 1]), stats)
        slate, pending = policy.choose_deferred(ranked, k, np.random.default_rng([case, 1]), stats)
        assert pending is not None and slate.item_ids == chosen.item_ids and slate.positions == chosen.positions
        assert all(math.isnan(p) for p in slate.propensities)
        assert pending() == chosen.propensities and pending() == chosen.propensities  # computed once


def test_only_a_pending_slate_has_no_propensities_yet() -> None:
    ranked = Ranked(tuple(f"i{i}" for i in range(20)), np.linspace(1, 0, 20))
    explored = ExploreStage(EpsilonGreedy(0.5), rng=lambda user_id, request_id: np.random.default_rng(3)).run(ranked, 4)
    assert explored.pending is None and explored.propensities == explored.slate.propensities
    assert all(p is not None for p in explored.propensities)
    counts = ItemCounts(np.full(20, 50.0), np.full(20, 5.0))
    slate, pending = Thompson(10.0, 8).choose_deferred(ranked, 4, np.random.default_rng(3), counts)
    assert Explored(slate, "thompson", pending).propensities == (None,) * 4
