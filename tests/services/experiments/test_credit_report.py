"""The interleaving report's credit rules on planted attributed impressions (the Spark job's
columns, map types included): balanced credit from the logged ranks against a hand computation,
and the marginalised credit of probabilistic interleaving against a direct enumeration of every
team assignment and draw that could have produced the shown list (zero for identical rankers)."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from feature_store.settings import Settings
from services.experiments.interleaving import probabilistic
from tests.services.experiments.test_cli import recsys
from tests.services.experiments.test_report import assert_page_shows, create

SCHEMA = pa.schema([
    ("event_id", pa.string()), ("user_id", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
    ("request_id", pa.string()), ("position", pa.int64()), ("experiment", pa.string()), ("team", pa.string()),
    ("ranks", pa.map_(pa.string(), pa.int64())), ("ranker_propensities", pa.map_(pa.string(), pa.float64())),
    ("click", pa.int32()),
])  # fmt: skip


def _plant(settings: Settings, experiment: str, requests: list[dict[str, Any]]) -> None:
    """One row per shown slot of each request: {user, slots: [(team, ranks, ranker propensities)],
    clicked, and optionally request (its id; `r<n>` by default)}."""
    ts = datetime.now(timezone.utc)
    rows: list[dict[str, Any]] = []
    for n, request in enumerate(requests):
        for position, (team, ranks, placed) in enumerate(request["slots"]):
            rows.append({"event_id": f"imp-r{n}-{position}", "user_id": request["user"], "ts": ts,
                         "request_id": request.get("request", f"r{n}"), "position": position, "experiment": experiment, "team": team,
                         "ranks": None if ranks is None else list(ranks.items()),
                         "ranker_propensities": None if placed is None else list(placed.items()),
                         "click": int(position in request["clicked"])})
    folder = Path(settings.batch_uri) / "attributed_impressions" / f"dt={ts.date()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), folder / f"part-{experiment}.parquet")


def test_balanced_credit_from_logged_ranks_equals_the_hand_computation(
    admin_client: TestClient, admin_settings: Settings
) -> None:
    create(admin_client, {"id": "bal", "kind": "interleaving", "method": "balanced",
                          "arms": [{"name": "A"}, {"name": "B"}]})
    # A = [a, b, c, d], B = [b, e, a, f]; the shown list a, b, e, c with each item's ranks.
    slots = [("A", {"A": 0, "B": 2}, None), ("B", {"A": 1, "B": 0}, None), ("B", {"B": 1}, None),
             ("A", {"A": 2}, None)]
    _plant(admin_settings, "bal", [
        {"user": "u1", "slots": slots, "clicked": {1, 2}},  # lowest click e: B's rank 1, depth 2 -> A {b}: 1, B {b, e}: 2
        {"user": "u2", "slots": slots, "clicked": {0}},  # a: A's rank 0, depth 1 -> A 1, B 0
        {"user": "u3", "slots": slots, "clicked": {3}},  # c: A's rank 2, depth 3 -> A 1, B 0 (c not in B)
        {"user": "u4", "slots": slots, "clicked": {0}},  # A 1, B 0 ...
        {"user": "u4", "slots": slots, "clicked": {2}},  # ... and e: depth 2 -> A 0, B 1: u4 ties 1-1
        {"user": "u5", "slots": slots, "clicked": set()},
    ])  # fmt: skip
    report = admin_client.get("/v1/experiments/bal/report").json()
    comparison = report["comparisons"][0]
    assert comparison["credit"] == "balanced"
    assert (comparison["wins_a"], comparison["wins_b"], comparison["ties"]) == (2, 1, 1)
    assert comparison["preference"] == pytest.approx((2 + 0.5) / 4 - 0.5)
    assert comparison["sign_p"] == pytest.approx(stats.binomtest(2, 3, 0.5).pvalue)
    differences = [1 - 2, 1 - 0, 1 - 0, 2 - 2]  # u1..u4 (u4: 1 - 1 summed over its requests)
    interval = stats.ttest_1samp(differences, 0).confidence_interval()
    assert comparison["credit_difference"] == pytest.approx(np.mean(differences))
    assert (comparison["credit_low"], comparison["credit_high"]) == pytest.approx((interval.low, interval.high))
    assert comparison["credit_p"] == pytest.approx(stats.ttest_1samp(differences, 0).pvalue)
    page = admin_client.get("/experiments/bal").text  # the report page shows the rule and the count credit
    shown = assert_page_shows(report, page)
    assert {f"comparisons.0.{field}" for field in ("credit_difference", "credit_low", "credit_high", "credit_p")} <= shown.keys()
    assert "<td>balanced</td>" in page
    printed = recsys(admin_settings, "report", "bal")
    assert printed.returncode == 0, printed.stderr
    assert f"balanced credit per user, A − B: {np.mean(differences):+.4f} [{interval.low:+.4f}" in printed.stdout


def test_balanced_credit_keeps_apart_two_users_under_one_request_id(
    admin_client: TestClient, admin_settings: Settings
) -> None:
    """A page view's id sent by each widget: each user's request gets its own credit (merged, the
    two would be one request whose lowest click credits only the second user)."""
    create(admin_client, {"id": "bal2", "kind": "interleaving", "method": "balanced",
                          "arms": [{"name": "A"}, {"name": "B"}]})
    slots = [("A", {"A": 0, "B": 2}, None), ("B", {"A": 1, "B": 0}, None), ("B", {"B": 1}, None)]
    _plant(admin_settings, "bal2", [
        {"user": "u1", "request": "page", "slots": slots, "clicked": {0}},  # a: A's rank 0, depth 1 -> A 1, B 0
        {"user": "u2", "request": "page", "slots": slots, "clicked": {2}},  # e: B's rank 1, depth 2 -> A 0, B 1
    ])  # fmt: skip
    comparison = admin_client.get("/v1/experiments/bal2/report").json()["comparisons"][0]
    # Merged, the request's clicks {a, e} would credit A 1, B 1 on u2's row: two ties.
    assert (comparison["wins_a"], comparison["wins_b"], comparison["ties"]) == (1, 1, 0)
    assert comparison["credit_difference"] == pytest.approx(0.0)


def _enumerated_credit(rankings: list[list[str]], shown: tuple[str, ...], clicked: set[int], tau: float) -> float:
    """E[c_A − c_B | shown, clicks] by enumerating every per-slot team and draw (the generative
    process of probabilistic interleaving) and keeping those that produce `shown`."""
    items = sorted({i for r in rankings for i in r})
    rank = [{item: r.index(item) + 1 if item in r else len(r) + 1 for item in items} for r in rankings]
    joint, weighted = 0.0, 0.0
    for teams in itertools.product(range(len(rankings)), repeat=len(shown)):
        p, left = 1.0, list(items)
        for team, item in zip(teams, shown):
            weights = {d: rank[team][d] ** -tau for d in left}
            p *= 0.5 * weights[item] / sum(weights.values())
            left.remove(item)
        joint += p
        weighted += p * sum((1 if teams[s] == 0 else -1) for s in clicked)
    return weighted / joint


def test_marginalised_credit_equals_a_direct_enumeration(admin_client: TestClient, admin_settings: Settings) -> None:
    create(admin_client, {"id": "pi", "kind": "interleaving", "method": "probabilistic", "tau": 3.0,
                          "arms": [{"name": "A"}, {"name": "B"}]})
    rankings = [["x", "y", "z", "w"], ["z", "w", "x", "y"]]
    rng = np.random.default_rng(11)
    served = {}
    while len(served) < 2:  # two different shown lists, as serving logs them
        merged = probabilistic(rankings, 3, rng, 3.0)
        served.setdefault(merged.items, merged)
    (first, one), (second, two) = served.items()
    plan = [("u1", first, one, {0, 2}), ("u2", second, two, {1}), ("u3", first, one, {1}), ("u4", second, two, {0, 1})]
    requests = []
    for user, items, merged, clicked in plan:
        slots = [(("A", "B")[team], None, {"A": p[0], "B": p[1]})
                 for team, p in zip(merged.teams, merged.ranker_propensities)]
        requests.append({"user": user, "slots": slots, "clicked": clicked})
    _plant(admin_settings, "pi", requests)
    expected = [_enumerated_credit(rankings, items, clicked, 3.0) for _, items, _, clicked in plan]
    assert len({round(e, 9) for e in expected}) == 4 and all(abs(e) < len(c) for e, (*_, c) in zip(expected, plan))
    comparison = admin_client.get("/v1/experiments/pi/report").json()["comparisons"][0]
    assert comparison["credit"] == "marginalised"
    assert comparison["credit_difference"] == pytest.approx(np.mean(expected))
    assert comparison["credit_p"] == pytest.approx(stats.ttest_1samp(expected, 0).pvalue)
    signs = np.sign(expected)
    assert (comparison["wins_a"], comparison["wins_b"]) == (int((signs > 0).sum()), int((signs < 0).sum()))


def test_identical_rankers_get_exactly_zero_marginalised_credit(admin_client: TestClient, admin_settings: Settings) -> None:
    create(admin_client, {"id": "same", "kind": "interleaving", "method": "probabilistic",
                          "arms": [{"name": "A"}, {"name": "B"}]})
    # One ranker in both arms: every slot's two propensities are equal, whichever team the coin
    # chose. The clicks fall on team A's slots, so the observed teams' credit would favour A.
    placed = [{"A": 0.6, "B": 0.6}, {"A": 0.3, "B": 0.3}, {"A": 0.125, "B": 0.125}]
    slots = [(team, None, p) for team, p in zip(("A", "B", "A"), placed)]
    _plant(admin_settings, "same", [{"user": f"u{n}", "slots": slots, "clicked": {0, 2} if n % 2 else {0}}
                                    for n in range(6)])
    comparison = admin_client.get("/v1/experiments/same/report").json()["comparisons"][0]
    assert comparison["credit"] == "marginalised"
    assert (comparison["wins_a"], comparison["wins_b"], comparison["ties"]) == (0, 0, 6)
    assert comparison["preference"] == 0.0 and comparison["credit_difference"] == 0.0
