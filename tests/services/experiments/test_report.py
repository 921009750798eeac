"""Reports from planted attributed counts: A/B numbers against the planted truth and an independent
computation, the guardrail, interleaving credit from attributed impressions, and the report page
loaded by a real headless Chromium with the same numbers as the JSON report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from feature_store.attribution import Impression, Outcome
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import ConnectionSpec
from feature_store.settings import Settings
from models.registry import ModelRegistry
from services.api.app import create_app
from services.experiments import analysis
from services.experiments.manager import ExperimentManager
from services.experiments.model import Experiment, ExperimentSpec
from services.experiments.report import batch_design_effects
from services.experiments.store import ExperimentStore
from tests.services.conftest import live_server
from tests.services.experiments.conftest import ADMIN


def plant_ab(settings: Settings, experiment: str, arms: dict[str, tuple[int, int]], users: bool = False,
             at: datetime | None = None) -> None:
    """Impressions and clicks per arm through the speed layer's write path (the attribution store),
    at `at` (default: over the last 50 seconds, within this hour); with `users`, the batch layer's
    rows of the same impressions too, each impression its own user (independent impressions: a
    design effect of 1)."""
    attribution = RedisOnlineStore.from_settings(settings).attribution()
    now = datetime.now(timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0)  # the report counts from the creation's hour
    tag = "" if at is None else f"-{int(at.timestamp())}"
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}
    for arm, (shown, clicks) in arms.items():
        for n in range(shown):
            ts_ms = int((at or max(now - timedelta(seconds=n % 50), hour)).timestamp() * 1000)
            impression = Impression(f"imp-{experiment}-{arm}{tag}-{n}", f"u{n}", f"i{n % 7}", ts_ms, f"r-{arm}{tag}-{n}",
                                    n % 5, "ranker=popularity;explore=greedy", experiment, f"{experiment}:{arm}")
            attribution.record_impression(impression)
            if n < clicks:
                attribution.record_credit(impression, Outcome(f"c-{experiment}-{arm}{tag}-{n}", f"u{n}", impression.item_id,
                                                              "click", ts_ms + 1, impression.request_id))
            for name, value in (("event_id", impression.event_id), ("user_id", f"{arm}-u{n}"),
                                ("arm", impression.arm), ("click", int(n < clicks)), ("ts", now),
                                ("experiment", experiment)):
                rows[name].append(value)
    attribution.close()
    if users:
        write_impressions(settings, rows, experiment)


def write_impressions(settings: Settings, rows: dict[str, list], name: str) -> None:
    """`rows` as a file of the batch layer's `attributed_impressions/`, in today's partition."""
    folder = Path(settings.batch_uri) / "attributed_impressions" / f"dt={datetime.now(timezone.utc).date()}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(rows), folder / f"part-{name}.parquet")


def plant_users(settings: Settings, experiment: str) -> dict[str, np.ndarray]:
    """The batch layer's attributed impressions of 60 users per arm, 20 impressions each, the first
    `count` clicked (counts drawn per user), beside another experiment's rows; the planted counts."""
    rng = np.random.default_rng(5)
    planted = {arm: rng.binomial(20, rng.beta(2, beta, 60)) for arm, beta in (("control", 9), ("treatment", 7))}
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}
    ts = datetime.now(timezone.utc)
    for name, arms in ((experiment, planted), ("other", {"control": np.full(60, 20)})):
        for arm, clicks in arms.items():
            for user, count in enumerate(clicks):
                for slot in range(20):
                    rows["event_id"].append(f"{name}-{arm}-{user}-{slot}")
                    rows["user_id"].append(f"{arm}-u{user}")
                    rows["arm"].append(f"{name}:{arm}")
                    rows["click"].append(int(slot < count))
                    rows["ts"].append(ts)
                    rows["experiment"].append(name)
    write_impressions(settings, rows, experiment)
    return planted


def create(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/experiments", json=body, headers=ADMIN)
    assert response.status_code == 201, response.text


def create_at(settings: Settings, body: dict[str, Any], now: datetime) -> None:
    """Create the experiment as if at `now` (the API creates at the present), in the settings'
    store: the API's workers see it from their next request."""
    client = ConnectionSpec.from_settings(settings, settings.redis.url).client()
    store = ExperimentStore(settings.state_dir / "experiments", client, settings.redis.key_prefix)
    ExperimentManager(store, ModelRegistry(settings.model_registry_dir)).create(ExperimentSpec.model_validate(body), now=now)


#: Fields the page shows to 3 significant digits (a p-value of 1e-15 stays readable); the others to 6 decimals.
P_VALUE_FIELDS = ("p_value", "_p")


def assert_page_shows(report: dict[str, Any], page: str) -> dict[str, str]:
    """Every number of the page (its `data-field`) is the JSON report's, to the digits it shows;
    the page's numbers by field."""
    shown = dict(re.findall(r'data-field="([^"]+)">([^<]+)<', page))
    assert shown, page[:500]
    for field, text in shown.items():
        value: Any = report
        for part in field.split("."):
            value = value[int(part)] if part.isdigit() else value[part]
        if value is None:
            assert text == "–", field
        elif field.endswith(P_VALUE_FIELDS):
            assert float(text) == pytest.approx(value, rel=5e-3, abs=0), field
        else:
            assert float(text) == pytest.approx(value, abs=5e-7), field
    return shown


def test_ab_report_counts_ctr_lift_and_srm(admin_client: TestClient, admin_settings: Settings) -> None:
    create(admin_client, {"id": "ab1", "kind": "ab", "arms": [{"name": "control"}, {"name": "treatment"}]})
    plant_ab(admin_settings, "ab1", {"control": (400, 40), "treatment": (300, 45)})
    report = admin_client.get("/v1/experiments/ab1/report").json()
    control, treatment = report["arms"]
    assert (control["impressions"], control["clicks"], treatment["impressions"], treatment["clicks"]) == (400, 40, 300, 45)
    wilson = stats.binomtest(45, 300).proportion_ci(method="wilson")
    assert (treatment["ctr_low"], treatment["ctr_high"]) == pytest.approx((wilson.low, wilson.high))
    assert treatment["lift"] == pytest.approx((45 / 300) / (40 / 400) - 1)
    assert treatment["lift_low"] < treatment["lift"] < treatment["lift_high"]
    assert report["srm_p"] is None and not report["srm_alarm"]  # no per-user data yet: no sample-ratio test
    assert report["srm_withheld"] == "no per-user rows yet (recsys batch attribution)"
    assert "Fixed-horizon" in report["caveat"]


def test_the_sample_ratio_test_counts_users_not_impressions(admin_client: TestClient, admin_settings: Settings) -> None:
    """Users are what was split: 110 and 90 users under equal shares is no mismatch (p = 0.16),
    though their impressions, 8 a user in one arm and 12 in the other, are 880 against 1,080."""
    create(admin_client, {"id": "srm", "kind": "ab", "arms": [{"name": "control"}, {"name": "treatment"}]})
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}
    ts = datetime.now(timezone.utc)
    for arm, users, each in (("control", 110, 8), ("treatment", 90, 12)):
        for user in range(users):
            for slot in range(each):
                for name, value in (("event_id", f"{arm}-{user}-{slot}"), ("user_id", f"{arm}-u{user}"),
                                    ("arm", f"srm:{arm}"), ("click", 0), ("ts", ts), ("experiment", "srm")):
                    rows[name].append(value)
    write_impressions(admin_settings, rows, "srm")
    report = admin_client.get("/v1/experiments/srm/report").json()
    assert report["srm_p"] == pytest.approx(stats.chisquare([110, 90]).pvalue) and not report["srm_alarm"]
    assert stats.chisquare([880, 1080]).pvalue < 0.001  # what the impressions would have alarmed on


def test_guardrail_stops_an_arm_that_fell(admin_client: TestClient, admin_settings: Settings) -> None:
    create(admin_client, {"id": "g1", "kind": "ab", "guardrail": {"max_ctr_drop": 0.1, "p_value": 0.01},
                          "arms": [{"name": "control"}, {"name": "bad"}]})
    plant_ab(admin_settings, "g1", {"control": (1000, 200), "bad": (1000, 100)}, users=True)
    report = admin_client.get("/v1/experiments/g1/report").json()
    assert report["arms"][1]["stopped"].startswith("guardrail")
    assert (report["srm_p"], report["srm_withheld"]) == (None, "an arm is stopped")  # its users are served outside it now
    assert admin_client.get("/v1/experiments/g1", headers=ADMIN).json()["stopped_arms"].keys() == {"bad"}


def test_the_guardrail_weighs_the_arms_users_not_their_impressions(admin_client: TestClient,
                                                                   admin_settings: Settings) -> None:
    """The same counts that stop an arm of independent impressions leave it running when they come
    from a few users each with their own propensity (the design effect of the planted rows), and
    without any per-user rows (the default design effect)."""
    guardrail = {"max_ctr_drop": 0.1, "p_value": 0.01}
    for name in ("g2", "g3"):  # a layer each
        create(admin_client, {"id": name, "kind": "ab", "layer": name, "guardrail": guardrail,
                              "arms": [{"name": "control"}, {"name": "bad"}]})
    plant_ab(admin_settings, "g2", {"control": (1000, 200), "bad": (1000, 100)})
    plant_ab(admin_settings, "g3", {"control": (1000, 200), "bad": (1000, 100)})
    # g2's 1,000 impressions per arm are 40 users' 25 each, their clicks all-or-nothing: 8 control
    # users clicked everything (200 clicks), 4 of the bad arm's (100).
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}
    clicking = {"control": 8, "bad": 4}
    for arm, users in clicking.items():
        for user in range(40):
            for slot in range(25):
                for name, value in (("event_id", f"{arm}-{user}-{slot}"), ("user_id", f"{arm}-u{user}"),
                                    ("arm", f"g2:{arm}"), ("click", int(user < users)),
                                    ("ts", datetime.now(timezone.utc)), ("experiment", "g2")):
                    rows[name].append(value)
    write_impressions(admin_settings, rows, "g2")
    clustered = admin_client.get("/v1/experiments/g2/report").json()["arms"][1]
    unknown = admin_client.get("/v1/experiments/g3/report").json()["arms"][1]
    assert clustered["stopped"] is None and unknown["stopped"] is None
    # Users alike in impressions (25), each clicking all or none: the per-user CTR's variance is
    # the users' sample variance q (1 - q) m / (m - 1) over m, the binomial's q (1 - q) / 25 m, so
    # each arm's design effect is 25 m / (m - 1), m = 40.
    effect = 25 * 40 / 39
    assert clustered["guardrail_p"] == pytest.approx(analysis.guardrail_p(100, 1000, 200, 1000, 0.1, effect, effect))
    assert unknown["guardrail_p"] == pytest.approx(analysis.guardrail_p(100, 1000, 200, 1000, 0.1, 20.0, 20.0))
    assert analysis.guardrail_p(100, 1000, 200, 1000, 0.1) < 0.01  # as independent impressions: stopped


def test_interleaving_report_credits_teams_per_user(admin_client: TestClient, admin_settings: Settings) -> None:
    create(admin_client, {"id": "il1", "kind": "interleaving", "arms": [{"name": "A"}, {"name": "B"}]})
    # Users 0-5 click only A's items, 6-7 only B's, 8 one each (a tie), 9 nothing.
    rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "team", "click", "ts", "experiment")}
    ts = datetime.now(timezone.utc)
    plan = {**{u: (2, 0) for u in range(6)}, 6: (0, 1), 7: (0, 3), 8: (1, 1), 9: (0, 0)}
    for user, (a_clicks, b_clicks) in plan.items():
        for team, clicks in (("A", a_clicks), ("B", b_clicks)):
            for slot in range(4):
                rows["event_id"].append(f"imp-{user}-{team}-{slot}")
                rows["user_id"].append(f"u{user}")
                rows["team"].append(team)
                rows["click"].append(int(slot < clicks))
                rows["ts"].append(ts)
                rows["experiment"].append("il1")
    write_impressions(admin_settings, rows, "0")
    report = admin_client.get("/v1/experiments/il1/report").json()
    comparison = report["comparisons"][0]
    assert (comparison["wins_a"], comparison["wins_b"], comparison["ties"]) == (6, 2, 1)
    assert comparison["preference"] == pytest.approx((6 + 0.5) / 9 - 0.5)
    assert comparison["sign_p"] == pytest.approx(stats.binomtest(6, 8, 0.5).pvalue)
    assert [a["clicks"] for a in report["arms"]] == [13, 5]


def test_ab_report_tests_per_user_from_attributed_impressions(admin_client: TestClient, admin_settings: Settings) -> None:
    create(admin_client, {"id": "ab2", "kind": "ab", "arms": [{"name": "control"}, {"name": "treatment"}]})
    plant_ab(admin_settings, "ab2", {"control": (50, 5), "treatment": (50, 6)})
    planted = plant_users(admin_settings, "ab2")
    control, treatment = admin_client.get("/v1/experiments/ab2/report").json()["arms"]
    assert (control["users"], treatment["users"]) == (60, 60)
    assert treatment["user_lift"] == pytest.approx(planted["treatment"].sum() / planted["control"].sum() - 1)
    # Equal impressions per user: the delta-method z is Welch's t statistic on per-user CTRs.
    welch = stats.ttest_ind(planted["treatment"] / 20, planted["control"] / 20, equal_var=False)
    assert treatment["user_p_value"] == pytest.approx(2 * stats.norm.sf(abs(welch.statistic)))
    assert treatment["user_lift_low"] < treatment["user_lift"] < treatment["user_lift_high"]
    assert control["user_p_value"] is None and treatment["impressions"] == 50  # live counts from the speed layer


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium missing: `make test` installs it (apt-get install chromium)")
def test_the_report_page_in_chromium_shows_the_reports_numbers(admin_settings: Settings, registry_versions: list[str],
                                                                 tmp_path: Path) -> None:
    with live_server(create_app(admin_settings)) as base:
        with TestClient(create_app(admin_settings)) as client:
            create(client, {"id": "page1", "kind": "ab", "arms": [{"name": "control"}, {"name": "treatment"}]})
        plant_ab(admin_settings, "page1", {"control": (500, 50), "treatment": (500, 65)})
        plant_users(admin_settings, "page1")
        import httpx

        report = httpx.get(f"{base}/v1/experiments/page1/report", timeout=60).json()
        # Chromium aborts when its profile's socket paths pass the 107-byte limit of a Unix socket
        # (a long TMPDIR): its profile and temporary files go under a short directory of /tmp.
        with tempfile.TemporaryDirectory(prefix="chr-", dir="/tmp") as short:
            env = {**os.environ, "TMPDIR": short}
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={short}/p"]
            shot = tmp_path / "page.png"
            subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=900,1400", f"{base}/experiments/page1"],
                           check=True, capture_output=True, timeout=120, env=env)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
            dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", f"{base}/experiments/page1"], check=True,
                                 capture_output=True, text=True, timeout=120, env=env).stdout
    shown = assert_page_shows(report, dom)
    assert {"arms.1.lift", "arms.0.ctr", "srm_p", "arms.1.user_lift_low", "arms.1.user_p_value"} <= shown.keys()
    assert report["arms"][1]["user_p_value"] is not None  # the per-user test is on the page with its numbers
    assert dom.count("<svg") == 2


def test_an_attribution_without_impressions_leaves_the_guardrail_on_its_default(admin_client: TestClient,
                                                                                admin_settings: Settings) -> None:
    """Spark's attribution of a log without impressions writes only `_SUCCESS`: the per-user read
    gives no rows (it raised ArrowInvalid, failing every guardrail check and learner step)."""
    create(admin_client, {"id": "g4", "kind": "ab", "guardrail": {"max_ctr_drop": 0.1, "p_value": 0.01},
                          "arms": [{"name": "control"}, {"name": "bad"}]})
    folder = Path(admin_settings.batch_uri) / "attributed_impressions"
    folder.mkdir(parents=True)
    (folder / "_SUCCESS").write_bytes(b"")
    experiment = Experiment.model_validate(admin_client.get("/v1/experiments/g4", headers=ADMIN).json())
    effects = batch_design_effects(Path(admin_settings.batch_uri))(experiment)
    assert effects == {"control": analysis.DEFAULT_DESIGN_EFFECT, "bad": analysis.DEFAULT_DESIGN_EFFECT}
    assert admin_client.get("/v1/experiments/g4/report").status_code == 200
