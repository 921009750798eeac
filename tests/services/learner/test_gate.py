"""The serving gate: learned weights are served only once they beat the base in team-draft
comparisons (planted truth: a click model whose best ranking is known)."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from services.learner.gate import BASE_TEAM, LEARNED_TEAM, Gated, ServingGate
from services.learner.pdgd import Pdgd

ITEMS, K = 30, 10
ATTRACTION = np.linspace(0.9, 0.05, ITEMS)  # item i's click probability at the top; item 0 is best
FEATURES = np.eye(ITEMS)  # one-hot rows: a weight vector is a score per item
GOOD, BAD = ATTRACTION.copy(), -ATTRACTION  # the truth's order, and its reverse


def clicks_on(shown: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Position-based clicks: P(click at slot s) = attraction / (s + 1)."""
    return rng.random(len(shown)) < ATTRACTION[list(shown)] / np.arange(1, len(shown) + 1)


def compare(gate: ServingGate, learned: np.ndarray, requests: int, rng: np.random.Generator) -> list[bool]:
    """`requests` comparisons of `learned` against the gate's base; whether `learned` was served after each."""
    served = []
    for _ in range(requests):
        presentation = gate.present(learned, FEATURES, K, rng)
        served.append(gate.record(presentation, clicks_on(presentation.shown, rng)))
    return served


def binomial_tail(wins: int, n: int) -> float:
    """P(X ≥ wins), X ~ Binomial(n, 1/2), summed term by term."""
    return sum(comb(n, j) for j in range(wins, n + 1)) / 2**n if n else 1.0


def test_clearly_better_weights_are_served_after_enough_comparisons() -> None:
    gate = ServingGate(BAD, window=100, level=0.01)
    served = compare(gate, GOOD, 200, np.random.default_rng(0))
    first = served.index(True)
    assert 5 <= first < 60  # not before the evidence can exist (7 straight wins give p = 1/128), not late
    assert all(served[first:])
    assert np.array_equal(gate.served(GOOD), GOOD) and gate.promotions == 1


def test_no_promotion_before_the_minimum_number_of_comparisons() -> None:
    gate = ServingGate(BAD, window=100, level=0.05, min_comparisons=20)
    served = [gate.record_credit(0, 1) for _ in range(20)]  # straight wins: p = 1/32 already at the 5th
    assert served == [False] * 19 + [True]
    assert binomial_tail(5, 5) <= 0.05 and gate.promotions == 1


def test_the_base_is_served_again_when_the_evidence_reverses() -> None:
    middling = GOOD - 10.0 * (np.arange(ITEMS) < 5)  # the truth's order with its best 5 items last
    gate = ServingGate(middling, window=50, level=0.01)
    rng = np.random.default_rng(1)
    assert compare(gate, GOOD, 150, rng)[-1]
    served = compare(gate, BAD, 150, rng)  # the learned weights now rank worse than the base
    assert not served[-1]
    assert np.array_equal(gate.served(BAD), middling)


def test_a_a_is_not_compared_and_stays_on_the_base() -> None:
    """Learned = base (the same ranking at another scale): nothing to compare, the base stays served."""
    gate = ServingGate(GOOD, window=300, level=0.05)
    rng = np.random.default_rng(2)
    assert all(gate.present(GOOD * 3, FEATURES, K, rng) is None for _ in range(100))
    assert not gate.promoted and not gate.outcomes


def test_chance_wins_rarely_promote() -> None:
    """Different lists, clicks blind to the items (every win is chance), 6 seeds: the learned team
    wins about half of the decided comparisons, a false promotion is rare (the sign test at 5%) and
    ends once the window's wins fall back to its losses, so the base is served nearly always."""
    served, promotions = [], []
    for seed in range(6):
        gate = ServingGate(GOOD, window=300, level=0.05)
        rng = np.random.default_rng(seed)
        for _ in range(3000):
            presentation = gate.present(BAD, FEATURES, K, rng)
            assert presentation is not None
            served.append(gate.record(presentation, rng.random(K) < 0.3 / np.arange(1, K + 1)))
        promotions.append(gate.promotions)
        assert 0.45 < np.mean(gate.outcomes) < 0.55
    assert np.mean(served) < 0.1 and max(promotions) <= 2


def test_decision_is_the_sign_test_over_the_window_then_more_wins_than_losses() -> None:
    """Promoted when the window's sign test p ≤ level; once promoted, kept while wins > losses."""
    ranks = np.arange(ITEMS)
    gate = ServingGate(GOOD - 10.0 * (ranks < 5), window=40, level=0.05)  # the best 5 items last
    rng = np.random.default_rng(3)
    learned = GOOD - 10.0 * ((ranks >= 1) & (ranks < 6))  # items 1-5 last: slightly better, close contests
    outcomes: list[int] = []
    served = False
    switches = 0
    for _ in range(1000):
        presentation = gate.present(learned, FEATURES, K, rng)
        clicks = clicks_on(presentation.shown, rng)
        teams = np.array(presentation.teams)
        base, won = int(clicks[teams == BASE_TEAM].sum()), int(clicks[teams == LEARNED_TEAM].sum())
        if base != won:
            outcomes = (outcomes + [int(won > base)])[-40:]
        wins, losses = sum(outcomes), len(outcomes) - sum(outcomes)
        expected = wins > losses if served else binomial_tail(wins, wins + losses) <= 0.05
        switches += expected != served
        served = expected
        assert gate.record(presentation, clicks) == expected
    assert switches >= 3  # promoted, demoted, promoted again: both rules were exercised


def test_gated_learner_serves_the_base_until_promoted_and_learns_only_from_its_own_lists() -> None:
    learner = Pdgd(BAD, lr=1.0)
    gated = Gated(learner, ServingGate(BAD, share=0.5, window=100, level=0.01, seed=4))
    rng = np.random.default_rng(4)
    compared = learned = 0
    served_first: int | None = None
    for request in range(300):
        before = learner.weights.copy()
        presentation = gated.present(FEATURES, K, rng)
        is_comparison = presentation is gated.comparison
        np.testing.assert_array_equal(gated.rank(FEATURES, K), np.argsort(-gated.gate.served(learner.weights), kind="stable")[:K])
        gated.learn(presentation, clicks_on(presentation.shown, rng))
        if is_comparison:
            compared += 1
            np.testing.assert_array_equal(learner.weights, before)
        else:
            learned += not np.array_equal(learner.weights, before)
        if served_first is None and gated.gate.promoted:
            served_first = request
    assert 100 < compared < 200 and learned > 50
    assert served_first is not None and served_first > 10
    # PDGD learned the truth's order, beat the reversed base, and its top-k is what is served now.
    assert gated.gate.promoted
    assert set(gated.rank(FEATURES, K)) == set(np.argsort(-learner.weights)[:K])


def test_reset_serves_the_new_base() -> None:
    gate = ServingGate(BAD, window=50)
    compare(gate, GOOD, 100, np.random.default_rng(5))
    assert gate.promoted
    gate.reset(GOOD)
    assert not gate.promoted and not gate.outcomes
    assert np.array_equal(gate.served(BAD), GOOD)


def test_bad_settings_are_rejected() -> None:
    for kwargs in ({"share": 0.0}, {"window": 0}, {"level": 1.0}, {"window": 10, "min_comparisons": 11}):
        with pytest.raises(ValueError):
            ServingGate(GOOD, **kwargs)
