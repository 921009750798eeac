"""Interleaving merges against hand-computed cases and their distributional properties."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from feature_store.settings import MAX_TAU
from services.experiments.interleaving import (
    balanced,
    balanced_credit,
    probabilistic,
    softmax_distribution,
    team_credit,
    team_draft,
)

DRAWS = 20_000


def _within(observed: float, expected: float, n: int, sigmas: float = 4.5) -> bool:
    return abs(observed - expected) <= sigmas * math.sqrt(expected * (1 - expected) / n) + 1e-12


def test_team_draft_gives_the_hand_computed_lists_with_equal_chance() -> None:
    a, b = ["a", "b", "c", "d"], ["b", "a", "c", "e"]
    # Round 1 puts each ranker's top (a, b) in a coin's order; round 2's first picker takes c and
    # the other its next new item (A: d, B: e).
    expected = {
        (("a", "b", "c", "e"), (0, 1, 0, 1)), (("a", "b", "c", "d"), (0, 1, 1, 0)),
        (("b", "a", "c", "e"), (1, 0, 0, 1)), (("b", "a", "c", "d"), (1, 0, 1, 0)),
    }  # fmt: skip
    rng = np.random.default_rng(1)
    seen = Counter()
    for _ in range(4000):
        merged = team_draft([a, b], 4, rng)
        seen[(merged.items, merged.teams)] += 1
    assert set(seen) == expected
    assert all(_within(count / 4000, 0.25, 4000) for count in seen.values())


def test_team_draft_propensities_are_the_lists_probabilities() -> None:
    rankings = [["a", "b", "c", "d", "e"], ["c", "a", "e", "b", "d"], ["e", "d", "c", "b", "a"]]
    rng = np.random.default_rng(2)
    lists: Counter[tuple[str, ...]] = Counter()
    claimed: dict[tuple[str, ...], float] = {}
    for _ in range(DRAWS):
        merged = team_draft(rankings, 3, rng)
        lists[merged.items] += 1
        claimed.setdefault(merged.items, float(np.prod(merged.propensities)))
        assert claimed[merged.items] == pytest.approx(float(np.prod(merged.propensities)))
    assert sum(claimed.values()) == pytest.approx(1.0)
    for items, count in lists.items():
        assert _within(count / DRAWS, claimed[items], DRAWS), (items, count / DRAWS, claimed[items])


def test_team_draft_gives_each_ranker_an_equal_share_of_every_slot() -> None:
    rng = np.random.default_rng(3)
    items = [f"i{j}" for j in range(30)]
    slot_teams = np.zeros((3, 3))
    credit = np.zeros(3)
    for _ in range(6000):
        rankings = [list(rng.permutation(items)[:12]) for _ in range(3)]
        merged = team_draft(rankings, 6, rng)
        for slot in range(3):
            slot_teams[slot, merged.teams[slot]] += 1
        clicks = rng.random(6) < 1.0 / (np.arange(6) + 1)  # position-biased, blind to the items
        credit += team_credit(merged.teams, clicks, 3)
    assert all(_within(share, 1 / 3, 6000) for share in (slot_teams / 6000).ravel())
    assert all(_within(c / credit.sum(), 1 / 3, int(credit.sum())) for c in credit)


def test_team_draft_with_two_rankers_splits_an_even_list_in_halves_without_duplicates() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        a, b = list(rng.permutation(20)[:10].astype(str)), list(rng.permutation(20)[:10].astype(str))
        merged = team_draft([a, b], 8, rng)
        assert len(set(merged.items)) == 8
        assert Counter(merged.teams) == {0: 4, 1: 4}
        for item, team in zip(merged.items, merged.teams):
            assert item in (a, b)[team]


def test_balanced_matches_joachims_example_and_credit() -> None:
    a, b = ["a", "b", "c", "d"], ["b", "e", "a", "f"]
    outcomes = {balanced(a, b, 6, np.random.default_rng(seed)).items for seed in range(40)}
    assert outcomes == {("a", "b", "e", "c", "d", "f"), ("b", "a", "e", "c", "f", "d")}
    shown = ["a", "b", "e", "c", "d", "f"]
    # Lowest click at c (A's rank 3): depth 3; top-3 of A {a, b, c} holds both, of B {b, e, a} one.
    assert balanced_credit(a, b, shown, [1, 3]) == (2, 1)
    assert balanced_credit(a, b, shown, [2]) == (0, 1)  # e: B's rank 2; top-2 of A is {a, b}
    assert balanced_credit(a, b, shown, []) == (0, 0)


def test_probabilistic_interleaving_propensities_are_exact() -> None:
    a, b = ["x", "y", "z"], ["z", "y", "x"]
    # τ = 1: P_A = (1, 1/2, 1/3)/(11/6) = (6, 3, 2)/11 over (x, y, z), P_B = (2, 3, 6)/11.
    assert softmax_distribution(a, ["x", "y", "z"], 1.0) == pytest.approx(np.array([6, 3, 2]) / 11)
    # P(y first) = (3/11 + 3/11)/2; then both renormalise over {x, z}: P(x) = (6/8 + 2/8)/2 = 1/2.
    rng = np.random.default_rng(5)
    count = 0
    for _ in range(DRAWS):
        merged = probabilistic([a, b], 2, rng, tau=1.0)
        if merged.items == ("y", "x"):
            count += 1
            assert merged.propensities == pytest.approx((3 / 11, 1 / 2))
    assert _within(count / DRAWS, 3 / 22, DRAWS)


def test_probabilistic_list_frequencies_follow_the_propensities() -> None:
    rankings = [["a", "b", "c", "d"], ["d", "c", "a", "b"], ["b", "d", "a", "c"]]
    rng = np.random.default_rng(6)
    lists: Counter[tuple[str, ...]] = Counter()
    claimed: dict[tuple[str, ...], float] = {}
    for _ in range(DRAWS):
        merged = probabilistic(rankings, 2, rng, tau=3.0)
        lists[merged.items] += 1
        claimed[merged.items] = float(np.prod(merged.propensities))
    for items, count in lists.items():
        assert _within(count / DRAWS, claimed[items], DRAWS), items


def test_probabilistic_interleaving_at_the_largest_tau_follows_the_rankings() -> None:
    # r^-τ underflows to 0 past the first few ranks at τ = 100: the merge must still be a distribution.
    a = [f"i{n}" for n in range(200)]
    b = a[::-1]
    rng = np.random.default_rng(7)
    for _ in range(20):
        merged = probabilistic([a, b], 10, rng, tau=MAX_TAU)
        shown: list[str] = []
        for item, team, propensity in zip(merged.items, merged.teams, merged.propensities):
            top_left = next(i for i in (a, b)[team] if i not in shown)
            assert item == top_left  # (r + 1)^-100 / r^-100 <= 1e-4 for r <= 10: the team's best remaining item
            assert propensity == pytest.approx(0.5, abs=1e-4)  # the other ranking gives it probability ~0
            shown.append(item)
    with pytest.raises(ValueError, match="tau must be in"):
        probabilistic([a, b], 10, rng, tau=MAX_TAU * 2)


def test_bad_arguments_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="two rankings"):
        team_draft([["a"]], 1, rng)
    with pytest.raises(ValueError, match="k must be"):
        probabilistic([["a"], ["b"]], 0, rng)
    with pytest.raises(ValueError, match="tau"):
        probabilistic([["a"], ["b"]], 1, rng, tau=0)


def test_balanced_propensities_are_the_lists_probabilities() -> None:
    # A coin decides who leads; lists that agree on a prefix make its slots certain (probability 1).
    a, b = ["x", "y", "w"], ["x", "z", "y"]
    rng = np.random.default_rng(4)
    lists: Counter[tuple[str, ...]] = Counter()
    claimed: dict[tuple[str, ...], float] = {}
    for _ in range(4000):
        merged = balanced(a, b, 3, rng)
        lists[merged.items] += 1
        claimed[merged.items] = float(np.prod(merged.propensities))
    assert set(lists) == {("x", "y", "z"), ("x", "z", "y")}
    assert claimed == {("x", "y", "z"): 0.5, ("x", "z", "y"): 0.5}  # slot 0 is x either way: propensity 1
    assert all(_within(count / 4000, 0.5, 4000) for count in lists.values())
