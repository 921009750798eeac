"""Off-policy evaluation against the simulator's truth (issue 19 item 3).

A seeded log of ε-greedy (ε = 0.2) slates over a simulated population, clicks drawn from its
position-based click model; targets greedy, UCB1 and Thompson (with one frozen statistics
snapshot) are estimated from the log with IPS, SNIPS and DR, and each 95% bootstrap CI must cover
the target's true CTR per slot on the same requests: the truth's exact expected clicks of the
target's slates (averaged over 4 draws per request for Thompson). A wrong propensity, weight or
logging policy moves the estimates away from the truth (checked below).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import Population, PopulationParams, make_population
from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.ope.estimators import estimate
from services.explore.ope.logged import NO_SUPPORT, OpeError, evaluate
from services.explore.ope.replay import Decision, reward_model, slate_logs
from services.explore.policy import ItemCounts, Policy, Ranked
from services.explore.thompson import Thompson
from services.explore.ucb import Ucb1

K, REQUESTS = 4, 3000


def simulated_ranking(rng: np.random.Generator) -> tuple[Population, GroundTruth, list[str], np.ndarray, np.ndarray, Ranked]:
    """A small simulated population with its click model, its users, every item's population CTR,
    and the items ranked by a noisy estimate of it (the logging ranker's list): (population, truth,
    users, ctr, order, ranked)."""
    population = make_population(PopulationParams(users=60, items=30, dim=8, seed=3))
    truth = GroundTruth(population, PositionBasedModel(1.0))
    n = population.params.items
    ids = [population.item_id(i) for i in range(n)]
    users = [population.user_id(u) for u in range(population.params.users)]
    ctr = population.user_activity @ np.stack([truth.attractiveness(u, ids, 0) for u in users])
    order = np.argsort(-(ctr + rng.normal(0, 0.05, n)))
    return population, truth, users, ctr, order, Ranked(tuple(ids[i] for i in order), np.linspace(1, 0, n))


@pytest.fixture(scope="module")
def world() -> tuple[GroundTruth, list[str], list[Decision]]:
    rng = np.random.default_rng(11)
    population, truth, users, ctr, order, ranked = simulated_ranking(rng)
    n = len(ranked.item_ids)
    examined = rng.integers(0, 200, n).astype(float)
    counts = ItemCounts(examined[order], rng.binomial(examined.astype(int), ctr)[order].astype(float))
    logging = EpsilonGreedy(0.2)
    decisions, requesters = [], []
    for _ in range(REQUESTS):
        user = users[int(rng.choice(len(users), p=population.user_activity))]
        slate = logging.choose(ranked, K, rng, counts)
        decisions.append(Decision(ranked, counts, slate, truth.draw_clicks(user, slate.item_ids, 0, rng)))
        requesters.append(user)
    return truth, requesters, decisions


def _true_ctr(truth: GroundTruth, users: list[str], decisions: list[Decision], target: Policy) -> float:
    rng = np.random.default_rng(5)
    draws = 1 if target.deterministic else 4
    return float(np.mean([truth.expected_clicks(user, target.choose(d.ranked, K, rng, d.stats).item_ids, 0)
                          for user, d in zip(users, decisions) for _ in range(draws)]) / K)


@pytest.mark.parametrize("target", [Greedy(), Ucb1(10.0), Thompson(10.0, draws=32)], ids=lambda p: p.name)
def test_ope_confidence_intervals_cover_the_targets_true_ctr(world, target: Policy) -> None:  # type: ignore[no-untyped-def]
    truth, users, decisions = world
    logs = slate_logs(decisions, EpsilonGreedy(0.2), target, reward_model(decisions), np.random.default_rng(7), samples=2)
    true = _true_ctr(truth, users, decisions, target)
    estimates = estimate(logs, bootstrap=500, seed=1)
    for name, e in estimates.items():
        assert e.low <= true <= e.high, (name, e, true)


def test_a_wrong_logging_policy_is_caught(world) -> None:  # type: ignore[no-untyped-def]
    """Claiming ε = 0.6 for the ε = 0.2 log moves greedy's IPS estimate off the truth (SNIPS
    normalises a constant factor away, as designed); claiming greedy (no exploration) leaves
    explored items without exposure, an error."""
    truth, users, decisions = world
    rewards = reward_model(decisions)
    logs = slate_logs(decisions, EpsilonGreedy(0.6), Greedy(), rewards, np.random.default_rng(7))
    true = _true_ctr(truth, users, decisions, Greedy())
    ips = estimate(logs, bootstrap=500, seed=1)["ips"]
    assert not ips.low <= true <= ips.high, (ips, true)
    with pytest.raises(ValueError, match="no exposure"):
        slate_logs(decisions, Greedy(), Greedy(), rewards, np.random.default_rng(7))


def _row(request: int, d: Decision, top_n: int) -> dict:  # type: ignore[type-arg]
    """A decision as `pipelines.spark.ope_input` delivers it: candidates truncated to `top_n`."""
    slots = [{"position": j, "item_id": item, "policy": "ranker=r1;explore=epsilon_greedy(epsilon=0.2)",
              "propensity": p, "click": int(c)}
             for j, (item, p, c) in enumerate(zip(d.slate.item_ids, d.slate.propensities, d.clicks))]
    return {"request_id": f"r{request}", "candidates": list(d.ranked.item_ids[:top_n]),
            "candidate_scores": d.ranked.scores[:top_n].tolist(), "candidate_count": len(d.ranked), "slots": slots}


def test_evaluate_from_truncated_logged_rows_covers_the_truth(world) -> None:  # type: ignore[no-untyped-def]
    """The rows of the served logs (top 10 of 30 candidates logged, label and propensities as the
    impressions carry them) give CIs covering greedy's and UCB1's truth (UCB1 choosing among the
    logged candidates with their counts, as `evaluate` evaluates it)."""
    truth, users, decisions = world
    rows = [_row(n, d, 10) for n, d in enumerate(decisions)]
    for target in (Greedy(), Ucb1(10.0)):
        counts = decisions[0].stats
        index = {item: n for n, item in enumerate(decisions[0].ranked.item_ids)}
        stats = lambda ids: ItemCounts(counts.examined[[index[i] for i in ids]], counts.clicks[[index[i] for i in ids]])  # noqa: E731
        result = evaluate(rows, target, stats, bootstrap=300, seed=1)
        assert result.requests == REQUESTS and result.skipped == {} and list(result.logging.values()) == [REQUESTS]
        top = Ranked(decisions[0].ranked.item_ids[:10], decisions[0].ranked.scores[:10])
        served = target.choose(top, K, np.random.default_rng(5), stats(top.item_ids)).item_ids  # deterministic
        true = float(np.mean([truth.expected_clicks(user, served, 0) for user in users]) / K)
        for name, e in result.estimates.items():
            assert e.low <= true <= e.high, (target.name, name, e, true)


def test_evaluate_skips_requests_it_cannot_replay(world) -> None:  # type: ignore[no-untyped-def]
    """A wrong logged propensity, a statistics-driven logging policy or an impression without a
    position is skipped and counted; no usable request at all is an error that says what to do."""
    _, _, decisions = world
    rows = [_row(n, d, 10) for n, d in enumerate(decisions[:200])]
    rows[0]["slots"][0]["propensity"] = 0.5
    for slot in rows[1]["slots"]:
        slot["policy"] = "ranker=r1;explore=ucb1(c=1)"
    client_view = {**rows[2]["slots"][1], "position": None, "propensity": None}  # the client's log of a slot
    rows[2]["slots"].append(client_view)
    result = evaluate(rows, Greedy(), bootstrap=50)
    assert result.requests == 197 and sum(result.skipped.values()) == 3, result.skipped
    assert result.skipped["an impression without a position"] == 1
    with pytest.raises(OpeError, match="log_candidates_share"):
        evaluate(rows[:2], Greedy(), bootstrap=50)


def test_requests_logged_by_greedy_evaluate_only_targets_they_support(world) -> None:  # type: ignore[no-untyped-def]
    """Half the log served greedily (an A/B test's greedy arm, a stats outage): those requests show
    only greedy's slate, so an ε-greedy target's clicks elsewhere were never observed there; they
    are skipped and counted, and the estimate from the other half covers the truth. Greedy itself
    is evaluated from both halves."""
    truth, users, decisions = world
    half = REQUESTS // 2
    rng = np.random.default_rng(21)
    rows = [_row(n, d, 10) for n, d in enumerate(decisions[:half])]
    for n, (user, d) in enumerate(zip(users[half:], decisions[half:]), start=half):
        shown = d.ranked.item_ids[:K]
        row = _row(n, Decision(d.ranked, d.stats, Greedy().choose(d.ranked, K, rng, None), truth.draw_clicks(user, shown, 0, rng)), 10)
        for slot in row["slots"]:
            slot["policy"] = "ranker=r1;explore=greedy"
        rows.append(row)
    target = EpsilonGreedy(0.2)
    result = evaluate(rows, target, bootstrap=500, seed=1)
    assert result.requests == half and result.skipped == {NO_SUPPORT: REQUESTS - half}, result.skipped
    true = _true_ctr(truth, users[:half], decisions[:half], target)
    for name, e in result.estimates.items():
        assert e.low <= true <= e.high, (name, e, true)
    greedy = evaluate(rows, Greedy(), bootstrap=50, seed=1)
    assert greedy.requests == REQUESTS and greedy.skipped == {}
