"""The interleaving report's preference timeline against the per-hour computation it thins: every
hour's cumulative outcomes recomputed from the rows, with the report's bootstrap on the report's
random stream; at most `report.MAX_TIMELINE_POINTS` points, the last the report's own preference."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from services.experiments import analysis
from services.experiments.report import MAX_TIMELINE_POINTS
from tests.services.experiments.test_report import create_at, write_impressions

HOURS = 150


def _plant(settings: Settings, start: datetime) -> dict[str, list]:
    """Team-draft rows of 40 users over `HOURS` hours from `start`, 130 of them with traffic (gaps
    between), 6 users an hour with 4 slots each; A's slots clicked more often than B's."""
    rng = np.random.default_rng(11)
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "team", "click", "ts", "experiment")}
    for hour in sorted(rng.choice(HOURS, size=130, replace=False)):
        for user in rng.choice(40, size=6, replace=False):
            ts = start + timedelta(hours=int(hour), minutes=int(rng.integers(60)), seconds=int(rng.integers(60)))
            for slot in range(4):
                team = "AB"[slot % 2]
                rows["event_id"].append(f"imp-{hour}-{user}-{slot}")
                rows["user_id"].append(f"u{user}")
                rows["team"].append(team)
                rows["click"].append(int(rng.random() < (0.3 if team == "A" else 0.2)))
                rows["ts"].append(ts)
                rows["experiment"].append("tl")
    write_impressions(settings, rows, "tl")
    return rows


def _outcomes(rows: dict[str, list], before: datetime | None) -> np.ndarray:
    """+1, -1 or 0 per user with a click before `before` (all rows: None): A's clicks against B's."""
    sums: dict[str, list[int]] = {}
    for user, team, click, ts in zip(rows["user_id"], rows["team"], rows["click"], rows["ts"]):
        if before is None or ts < before:
            sums.setdefault(user, [0, 0])[team == "B"] += click
    return np.array([np.sign(a - b) for a, b in sums.values() if a + b > 0], dtype=np.int64)


def _per_hour(rows: dict[str, list]) -> tuple[analysis.Preference, dict[datetime, analysis.Interval]]:
    """The report's preference of A over B, and the cumulative one at the end of every hour with
    rows where it has an interval, as the report drew them: the overall preference first, then
    each hour in turn, from one generator seeded 0."""
    rng = np.random.default_rng(0)
    overall = analysis.preference(_outcomes(rows, None), rng)
    points = {}
    for hour in sorted({ts.replace(minute=0, second=0, microsecond=0) for ts in rows["ts"]}):
        end = hour + timedelta(hours=1)
        delta = analysis.preference(_outcomes(rows, end), rng, 500).delta
        if math.isfinite(delta.low):
            points[end] = delta
    return overall, points


def test_the_preference_timeline_is_the_per_hour_computation_thinned(admin_client: TestClient,
                                                                      admin_settings: Settings) -> None:
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS)
    create_at(admin_settings, {"id": "tl", "kind": "interleaving", "arms": [{"name": "A"}, {"name": "B"}]}, start)
    rows = _plant(admin_settings, start)
    report = admin_client.get("/v1/experiments/tl/report").json()
    overall, expected = _per_hour(rows)
    assert len(expected) > MAX_TIMELINE_POINTS  # the timeline had to be thinned
    timeline = [p for p in report["timeline"] if p["series"] == "preference:B"]
    assert len(timeline) == len(report["timeline"]) == MAX_TIMELINE_POINTS
    ats = [datetime.fromisoformat(p["at"]) for p in timeline]
    assert ats == sorted(set(ats)) and set(ats) <= expected.keys()
    assert (ats[0], ats[-1]) == (min(expected), max(expected))
    for at, point in zip(ats, timeline):
        delta = expected[at]
        assert (point["value"], point["low"], point["high"]) == pytest.approx((delta.estimate, delta.low, delta.high), abs=1e-12), at
    comparison = report["comparisons"][0]
    assert timeline[-1]["value"] == pytest.approx(comparison["preference"], abs=1e-12)
    assert comparison["preference"] == pytest.approx(overall.delta.estimate, abs=1e-12)
    assert (comparison["low"], comparison["high"]) == pytest.approx((overall.delta.low, overall.delta.high), abs=1e-12)
