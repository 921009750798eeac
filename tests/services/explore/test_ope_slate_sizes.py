"""Off-policy evaluation of logs whose requests show different numbers of slots (k from 1 to 100,
and a request with fewer candidates shows fewer), and of slates longer than the logged candidates.

Each request is replayed at its own k_i (both placements, the target's slate) and the estimates
are clicks per shown slot, Σ clicks / Σ_i k_i: checked against a hand computation of a two-request
log and against the simulator's truth on a log of k ∈ {1, 2, 6}. The impression logger keeps at
least the slate's k candidates (the ranker's top k, which ε-greedy shows unexplored); an old log
that kept fewer is skipped under its own reason, not as a propensity mismatch.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest

from pipelines.simulate.click_model import PositionBasedModel
from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.ope.estimators import estimate
from services.explore.ope.logged import TOP_K_UNLOGGED, decision, evaluate
from services.explore.ope.replay import Decision, reward_model, slate_logs
from services.explore.policy import Policy, Ranked, Slate
from services.recommend.impressions import ServedList
from services.recommend.types import Recommendation, RecommendationRequest, RecommendationResult
from tests.services.explore.test_ope import simulated_ranking

LABEL = "ranker=r;explore=epsilon_greedy(epsilon=0.5)"
SIX = list("ABCDEF")


def _row(request: str, candidates: list[str], shown: list[str], propensities: list[float], clicks: list[int],
         label: str = LABEL, count: int | None = None) -> dict[str, Any]:
    return {"request_id": request, "candidates": candidates, "candidate_scores": list(np.linspace(1, 0, len(candidates))),
            "candidate_count": len(candidates) if count is None else count,
            "slots": [{"position": j, "item_id": item, "policy": label, "propensity": p, "click": c}
                      for j, (item, p, c) in enumerate(zip(shown, propensities, clicks))]}


def test_each_request_is_replayed_at_its_own_slate_size() -> None:
    """ε = 0.5 over six candidates. Request 1 asked for k = 2 and showed the ranker's A, B (each
    P = 1 − ε = 0.5), no click; request 2 asked for k = 1 and explored: B, a pool item there (the
    pool is the 5 candidates below the top 1), P = ε / 5 = 0.1, clicked.

    Greedy target: it shows A, B at k = 2 (w = 1 / 0.5 = 2 each) and only A at k = 1, so B in
    request 2 has no target exposure (w = 0). IPS = (2·0 + 2·0 + 0·1) / (2 + 1) = 0, SNIPS = 0, and
    DR = [D_1 + D_2 + Σ w (r − r̂)] / 3 with D_1 = θ₀ρ̂_A + θ₁ρ̂_B, D_2 = θ₀ρ̂_A and
    Σ w (r − r̂) = −2θ₀ρ̂_A − 2θ₁ρ̂_B: DR = −θ₁ρ̂_B / 3. (With one k for all, k = 2, the k = 1 request
    was replayed as a 2-slot slate: weights [2, 2, 2], IPS (0 + 0 + 2) / 4 = 0.5.)"""
    rows = [_row("k2", SIX, ["A", "B"], [0.5, 0.5], [0, 0]), _row("k1", SIX, ["B"], [0.5 / 5], [1])]
    decisions = [decision(row)[0] for row in rows]
    assert all(isinstance(d, Decision) for d in decisions)
    rewards = reward_model(decisions)  # type: ignore[arg-type]
    logs = slate_logs(decisions, None, Greedy(), rewards, np.random.default_rng(0))  # type: ignore[arg-type]
    np.testing.assert_allclose(logs.weight, [2.0, 2.0, 0.0])
    assert logs.slots.tolist() == [2, 1]
    estimates = evaluate(rows, Greedy(), bootstrap=50).estimates
    theta, rho_b = rewards.theta, rewards.rho(["B"])[0]
    assert estimates["ips"].value == pytest.approx(0.0, abs=1e-12)
    assert estimates["snips"].value == pytest.approx(0.0, abs=1e-12)
    assert estimates["dr"].value == pytest.approx(-theta[1] * rho_b / 3, rel=1e-9)


def test_the_logging_policy_as_target_estimates_its_clicks_per_shown_slot() -> None:
    """The target is the logging policy: every weight is 1, so IPS and SNIPS are the logged clicks
    per shown slot, 2 / (2 + 1), whatever θ (SNIPS = (2θ₀ + θ₁) / 3 · 2 / (2θ₀ + θ₁))."""
    rows = [_row("k2", SIX, ["A", "B"], [0.5, 0.5], [1, 0]), _row("k1", SIX, ["C"], [0.5 / 5], [1])]
    decisions = [decision(row)[0] for row in rows]
    logs = slate_logs(decisions, None, EpsilonGreedy(0.5), reward_model(decisions), np.random.default_rng(0))  # type: ignore[arg-type]
    np.testing.assert_allclose(logs.weight, [1.0, 1.0, 1.0])
    estimates = estimate(logs, bootstrap=50)
    assert estimates["ips"].value == pytest.approx(2 / 3) and estimates["snips"].value == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def mixed_log() -> tuple[list[Decision], list[np.ndarray], Ranked]:
    """An ε = 0.2 log over a simulated population whose requests ask for k ∈ {1, 2, 6}; per request
    the user's true attractiveness of every candidate, in rank order."""
    rng = np.random.default_rng(11)
    population, truth, users, _, _, ranked = simulated_ranking(rng)
    logging = EpsilonGreedy(0.2)
    decisions, attractiveness = [], []
    for k in rng.choice([1, 2, 6], size=3000):
        user = users[int(rng.choice(len(users), p=population.user_activity))]
        slate = logging.choose(ranked, int(k), rng)
        decisions.append(Decision(ranked, None, slate, truth.draw_clicks(user, slate.item_ids, 0, rng), logged_by=logging))
        attractiveness.append(truth.attractiveness(user, ranked.item_ids, 0))
    return decisions, attractiveness, ranked


@pytest.mark.parametrize("target", [Greedy(), EpsilonGreedy(0.5)], ids=lambda p: p.label)
def test_mixed_slate_sizes_cover_the_targets_true_ctr(mixed_log, target: Policy) -> None:  # type: ignore[no-untyped-def]
    """The truth: Σ_i Σ_j θ_j Σ_a π(a at j | k_i) A_{u_i}(a) / Σ_i k_i, from the target's exact
    placement at each request's k_i and the user's true attractiveness (θ_j = 1 / (j + 1)).
    (With one k for all, the short requests were replayed as 6 slots: estimates 22-51% low.)"""
    decisions, attractiveness, ranked = mixed_log
    placements = {k: target.placement(ranked, range(len(ranked)), k, np.random.default_rng(0))
                  @ PositionBasedModel(1.0).examination(k) for k in (1, 2, 6)}
    slots = [len(d.slate.item_ids) for d in decisions]
    true = sum(float(placements[k] @ a) for k, a in zip(slots, attractiveness)) / sum(slots)
    logs = slate_logs(decisions, None, target, reward_model(decisions), np.random.default_rng(7), samples=2)
    for name, e in estimate(logs, bootstrap=500, seed=1).items():
        assert e.low <= true <= e.high, (name, e, true)


def _served(request: str, ranked: Ranked, slate: Slate, top_n: int) -> ServedList:
    items = [Recommendation(item, 0.5, ["popular"], "", p) for item, p in zip(slate.item_ids, slate.propensities)]
    result = RecommendationResult(items, {"ranker": "r"}, candidates=len(ranked), explore="epsilon_greedy(epsilon=0.3)",
                                  ranked=(ranked.item_ids, tuple(ranked.scores.tolist())))
    return ServedList.of(RecommendationRequest("u", k=len(items)), result, request, datetime(2026, 1, 1, tzinfo=timezone.utc), 1.0, top_n)


def _logged_row(served: ServedList, clicks: np.ndarray) -> dict[str, Any]:
    """The row `pipelines.spark.ope_input` makes of a served list's impressions."""
    events = served.events()
    first = events[0].context
    return {"request_id": served.request_id, "candidates": first.candidates, "candidate_scores": first.candidate_scores,
            "candidate_count": first.candidate_count,
            "slots": [{"position": e.context.position, "item_id": e.item_id, "policy": e.context.policy,
                       "propensity": e.context.propensity, "click": int(c)} for e, c in zip(events, clicks)]}


def test_slates_longer_than_the_logged_top_n_log_their_top_k_and_are_all_evaluated() -> None:
    """k = 4 slots, `log_candidates_top_n` = 2, ε = 0.3 over 20 candidates, clicks by rank with no
    position effect (P(click) = 0.5 … 0.05): greedy's planted CTR per slot is the mean of the top 4's.
    The logger keeps the top 4 (the slate's k), so every request replays and the estimates cover it
    (keeping the top 2, the explored requests failed the propensity check and were dropped: IPS 0.67
    against 0.46)."""
    n, k = 20, 4
    ranked = Ranked(tuple(f"i{m}" for m in range(n)), np.linspace(1, 0, n))
    ctr = np.linspace(0.5, 0.05, n)
    rng = np.random.default_rng(0)
    rows = []
    for r in range(3000):
        slate = EpsilonGreedy(0.3).choose(ranked, k, rng)
        served = _served(f"r{r}", ranked, slate, top_n=2)
        assert served.candidates is not None and served.candidates[0] == ranked.item_ids[:k]
        rows.append(_logged_row(served, rng.random(k) < ctr[list(slate.positions)]))
    result = evaluate(rows, Greedy(), bootstrap=300, seed=1)
    assert result.requests == 3000 and result.skipped == {}, result.skipped
    for name, e in result.estimates.items():
        assert e.low <= ctr[:k].mean() <= e.high, (name, e, ctr[:k].mean())


def test_an_old_log_with_fewer_candidates_than_slots_is_skipped_under_its_own_reason() -> None:
    """Logged before the logger kept the slate's candidates: top 2 of 20 logged, k = 4. Which item
    was the ranker's at slots 2 and 3 is unknown, so every such request (explored or not: dropping
    only the explored ones biased the rest) is skipped as such, not as a propensity mismatch."""
    ids = [f"i{m}" for m in range(20)]
    q = 0.3  # ε-greedy, pool 16 ≥ k: q_j = ε
    explored = _row("a", ids[:2], ["i0", "i9", "i2", "i3"], [1 - q, q / 16, 1 - q, 1 - q], [0, 1, 0, 0],
                    "ranker=r;explore=epsilon_greedy(epsilon=0.3)", count=20)
    plain = _row("b", ids[:2], ids[:4], [1 - q] * 4, [1, 0, 0, 0], "ranker=r;explore=epsilon_greedy(epsilon=0.3)", count=20)
    complete = _row("c", ids[:4], ids[:4], [1 - q] * 4, [1, 0, 0, 0], "ranker=r;explore=epsilon_greedy(epsilon=0.3)", count=20)
    assert decision(explored) == (None, TOP_K_UNLOGGED) and decision(plain) == (None, TOP_K_UNLOGGED)
    result = evaluate([explored, plain, complete], Greedy(), bootstrap=20)
    assert result.requests == 1 and result.skipped == {TOP_K_UNLOGGED: 2}
    # The estimate is the complete request's alone: w = 1 / (1 − q) on each greedy slot.
    assert result.estimates["ips"].value == pytest.approx(1 / (1 - q) / 4)
