"""What off-policy evaluation costs per logged request, with the values it gives unchanged:

- the direct-method term D_i of a Thompson target draws its slates only (`choose_deferred`), never
  the propensity estimate `choose` computes and D_i never reads; D_i matches the exact expectation
  Σ_j θ_j Σ_a P(a at j) ρ̂_a;
- a request whose candidates were truncated (`candidate_count` above the logged top n) holds its
  count, not one placeholder id per unlogged candidate, and evaluates as the materialised list did.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.ope.estimators import estimate
from services.explore.ope.logged import decision, evaluate
from services.explore.ope.replay import UNLOGGED, Decision, reward_model, slate_logs
from services.explore.policy import ItemCounts, Policy, Ranked
from services.explore.thompson import Thompson

LABEL = "ranker=r;explore=epsilon_greedy(epsilon=0.1)"


def test_the_direct_term_of_a_thompson_target_draws_slates_without_propensities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Six candidates, k = 3: D_i over 4,000 drawn slates is within 4 of its largest possible
    standard errors of the exact Σ_j θ_j Σ_a P(a at j) ρ̂_a (P from 200,000 conditional draws), and
    no propensity estimate was computed for those slates (before: one per slate, 16 per request)."""
    n, k = 6, 3
    ranked = Ranked(tuple(f"i{m}" for m in range(n)), np.linspace(1, 0, n))
    counts = ItemCounts(np.array([40.0, 30, 30, 20, 10, 5]), np.array([8.0, 3, 6, 1, 2, 1]))
    rng = np.random.default_rng(3)
    logging = EpsilonGreedy(0.5)
    decisions = [Decision(ranked, counts, logging.choose(ranked, k, rng), (rng.random(k) < 0.3).astype(int), logged_by=logging)
                 for _ in range(200)]
    rewards = reward_model(decisions)
    target = Thompson(10.0, draws=32)
    estimates = []
    original = Thompson._slot_propensities
    monkeypatch.setattr(Thompson, "_slot_propensities", staticmethod(lambda *a: estimates.append(1) or original(*a)))
    logs = slate_logs(decisions[:1], None, target, rewards, np.random.default_rng(5), samples=4000)
    assert estimates == []

    theta = rewards.theta[:k]
    rho = rewards.rho(ranked.item_ids)
    placement = Thompson(10.0, draws=200_000).placement(ranked, range(n), k, np.random.default_rng(9), counts)
    exact = float((placement @ theta) @ rho)
    spread = theta @ np.sort(rho)[::-1][:k] - theta @ np.sort(rho)[:k]  # the range of one slate's value
    assert abs(logs.direct[0] - exact) <= 4 * (spread / 2) / np.sqrt(4000), (logs.direct[0], exact)


def _rows(count: int, top_n: int, requests: int, k: int = 10) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    ranked = Ranked(tuple(f"item-{m:06d}" for m in range(count)), np.linspace(1, 0, count))
    rows = []
    for r in range(requests):
        slate = EpsilonGreedy(0.1).choose(ranked, k, rng)
        rows.append({"request_id": f"r{r}", "candidates": list(ranked.item_ids[:top_n]),
                     "candidate_scores": ranked.scores[:top_n].tolist(), "candidate_count": count,
                     "slots": [{"position": j, "item_id": item, "policy": LABEL, "propensity": p, "click": int(rng.random() < 0.2)}
                               for j, (item, p) in enumerate(zip(slate.item_ids, slate.propensities))]})
    return rows


def _bytes_per_decision(rows: list[dict[str, Any]]) -> float:
    tracemalloc.start()
    try:
        kept = [decision(row)[0] for row in rows]
        current, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert all(d is not None for d in kept)
    return current / len(rows)


def test_a_truncated_request_holds_its_count_not_its_placeholders() -> None:
    """Top 50 logged of 5,000 ranked: a kept decision costs about what one of 50 ranked does
    (measured: ~1.9 KiB either way; 383 KiB with a placeholder id per unlogged candidate)."""
    small = _bytes_per_decision(_rows(50, 50, 300))
    large = _bytes_per_decision(_rows(5000, 50, 300))
    assert large < 1.3 * small + 512, (small, large)


def _materialised(row: dict[str, Any]) -> Decision:
    """The decision with every placeholder id spelt out, as the replay built it before."""
    slots = row["slots"]
    ids = list(row["candidates"]) + [s["item_id"] for s in slots if s["item_id"] not in row["candidates"]]
    ids += [f"{UNLOGGED}{m}" for m in range(len(ids), row["candidate_count"])]
    scores = row["candidate_scores"] + [min(row["candidate_scores"])] * (len(ids) - len(row["candidate_scores"]))
    made = decision(row)[0]
    assert made is not None
    return Decision(Ranked(tuple(ids), np.array(scores)), None, made.slate, made.clicks, logged_by=made.logged_by)


@pytest.mark.parametrize("target", [Greedy(), EpsilonGreedy(0.3)], ids=lambda p: p.label)
def test_placeholders_made_when_read_give_the_materialised_estimates(target: Policy) -> None:
    """200 ranked, 20 logged: bit for bit the estimates of the list with its placeholder ids spelt
    out (an ε-greedy target's direct term draws placeholders from the pool)."""
    rows = _rows(200, 20, 400)
    materialised = [_materialised(row) for row in rows]
    expected = estimate(slate_logs(materialised, None, target, reward_model(materialised), np.random.default_rng(4)), 200, 4)
    assert evaluate(rows, target, bootstrap=200, seed=4).estimates == expected
    lazy = decision(rows[0])[0]
    assert lazy is not None and lazy.candidates().item_ids[-1] == f"{UNLOGGED}199" and len(lazy.candidates()) == 200
