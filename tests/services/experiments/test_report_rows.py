"""Which of the batch layer's attributed impressions a report reads: none at all (an attribution of
a log without impressions writes only `_SUCCESS`), and only those since the experiment's creation
hour, where its per-impression counts start (the online learner labels impressions before its
experiment exists)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from feature_store.settings import Settings
from services.experiments import analysis
from services.experiments.model import Experiment
from services.experiments.report import batch_design_effects
from tests.services.experiments.conftest import ADMIN
from tests.services.experiments.test_cli import recsys
from tests.services.experiments.test_report import create, write_impressions


def test_an_interleaving_report_of_an_attribution_without_impressions_is_empty(admin_client: TestClient,
                                                                                 admin_settings: Settings) -> None:
    create(admin_client, {"id": "il0", "kind": "interleaving", "arms": [{"name": "A"}, {"name": "B"}]})
    folder = Path(admin_settings.batch_uri) / "attributed_impressions"
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").write_bytes(b"")
    response = admin_client.get("/v1/experiments/il0/report")
    assert response.status_code == 200, response.text
    report = response.json()
    assert [(a["impressions"], a["clicks"]) for a in report["arms"]] == [(0, 0), (0, 0)]
    assert (report["interleaved_impressions"], report["timeline"]) == (0, [])
    comparison = report["comparisons"][0]
    assert (comparison["wins_a"], comparison["wins_b"], comparison["ties"], comparison["credit_p"]) == (0, 0, 0, None)
    assert admin_client.get("/experiments/il0").status_code == 200
    printed = recsys(admin_settings, "report", "il0")
    assert printed.returncode == 0, printed.stderr


def _created_hour(client: TestClient, body: dict) -> datetime:
    """Create the experiment; the start of the hour it was created in (where its counts start)."""
    create(client, body)
    created = datetime.fromisoformat(client.get(f"/v1/experiments/{body['id']}", headers=ADMIN).json()["created_at"])
    return created.replace(minute=0, second=0, microsecond=0)


def test_per_user_rows_start_at_the_creation_hour(admin_client: TestClient, admin_settings: Settings) -> None:
    """Impressions the learner labelled `learner:<arm>` before the experiment existed (200 users of
    `online` who never clicked, and some a second before the creation hour) are not its users: the
    per-user test, the sample-ratio test and the design effects count only the 50 + 50 since."""
    hour = _created_hour(admin_client, {"id": "learner", "kind": "ab",
                                        "arms": [{"name": "control"}, {"name": "online"}]})
    rng = np.random.default_rng(7)
    planted = {"control": rng.binomial(10, rng.beta(2, 8, 50)), "online": rng.binomial(10, rng.beta(2, 6, 50))}
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}

    def add(tag: str, arm: str, clicks: np.ndarray, ts: datetime) -> None:
        for user, count in enumerate(clicks):
            for slot in range(10):
                for name, value in (("event_id", f"{tag}-{arm}-{user}-{slot}"), ("user_id", f"{tag}-{arm}-u{user}"),
                                    ("arm", f"learner:{arm}"), ("click", int(slot < count)), ("ts", ts),
                                    ("experiment", "learner")):
                    rows[name].append(value)

    add("old", "online", np.zeros(200, dtype=int), hour - timedelta(days=2))
    add("edge", "online", np.full(30, 10), hour - timedelta(seconds=1))
    for arm, clicks in planted.items():
        add("new", arm, clicks, hour)  # the bound itself is inside
    write_impressions(admin_settings, rows, "learner")
    report = admin_client.get("/v1/experiments/learner/report").json()
    control, online = report["arms"]
    assert (control["users"], online["users"]) == (50, 50)
    assert report["srm_p"] == pytest.approx(stats.chisquare([50, 50]).pvalue)
    assert online["user_lift"] == pytest.approx(planted["online"].sum() / planted["control"].sum() - 1)
    experiment = Experiment.model_validate(admin_client.get("/v1/experiments/learner", headers=ADMIN).json())
    effects = batch_design_effects(Path(admin_settings.batch_uri))(experiment)
    shown = np.full(50, 10.0)
    for arm, clicks in planted.items():
        ctr = clicks / 10  # equal impressions: the per-user CTR's variance is their sample variance over m
        assert effects[arm] == pytest.approx(max(1.0, (ctr.var(ddof=1) / 50) / (ctr.mean() * (1 - ctr.mean()) / shown.sum())))
    assert analysis.DEFAULT_DESIGN_EFFECT not in effects.values()


def test_interleaved_rows_start_at_the_creation_hour(admin_client: TestClient, admin_settings: Settings) -> None:
    hour = _created_hour(admin_client, {"id": "il2", "kind": "interleaving", "arms": [{"name": "A"}, {"name": "B"}]})
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "team", "click", "ts", "experiment")}
    # Before the creation hour every user clicks only A; since, users 0-4 click only B, 5-6 only A.
    plan = [(hour - timedelta(hours=5), range(30), "A"), (hour - timedelta(microseconds=1), range(30), "A"),
            (hour, range(5), "B"), (hour + timedelta(minutes=1), range(5, 7), "A")]
    for n, (ts, users, clicked) in enumerate(plan):
        for user in users:
            for team in "AB":
                rows["event_id"].append(f"imp-{n}-{user}-{team}")
                rows["user_id"].append(f"u{user}")
                rows["team"].append(team)
                rows["click"].append(int(team == clicked))
                rows["ts"].append(ts)
                rows["experiment"].append("il2")
    write_impressions(admin_settings, rows, "il2")
    report = admin_client.get("/v1/experiments/il2/report").json()
    assert [(a["impressions"], a["clicks"]) for a in report["arms"]] == [(7, 2), (7, 5)]
    comparison = report["comparisons"][0]
    assert (comparison["wins_a"], comparison["wins_b"], comparison["ties"]) == (2, 5, 0)
    assert report["interleaved_impressions"] == 14
