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

from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.ope.estimators import estimate
from services.explore.ope.replay import Decision, reward_model, slate_logs
from services.explore.policy import ItemCounts, Policy, Ranked
from services.explore.thompson import Thompson
from services.explore.ucb import Ucb1
from services.simulate.click_model import GroundTruth, PositionBasedModel
from services.simulate.population import PopulationParams, make_population

K, REQUESTS = 4, 3000


@pytest.fixture(scope="module")
def world() -> tuple[GroundTruth, list[str], list[Decision]]:
    population = make_population(PopulationParams(users=60, items=30, dim=8, seed=3))
    truth = GroundTruth(population, PositionBasedModel(1.0))
    rng = np.random.default_rng(11)
    n = population.params.items
    ids = [population.item_id(i) for i in range(n)]
    users = [population.user_id(u) for u in range(population.params.users)]
    ctr = population.user_activity @ np.stack([truth.attractiveness(u, ids, 0) for u in users])
    order = np.argsort(-(ctr + rng.normal(0, 0.05, n)))
    ranked = Ranked(tuple(ids[i] for i in order), np.linspace(1, 0, n))
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
