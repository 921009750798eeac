"""The learner process on a real event log, a real Redis and a real registry: DBGD steps from planted
interleaved feedback, stale revisions' feedback is skipped, the kill switch stops updates, a planted
bad revision is rolled back to the base with the reason, and a promotion restarts from the new base;
PDGD's exact step from a planted served list joined by request id (an expired one skipped and
counted); a planted guardrail breach of the `learner` experiment, through the real report, rolls
back to the base once; the serving gate promotes and demotes w from planted comparisons against the
base (PDGD's team-draft lists, DBGD's own), by an independent sign test.

The bases' output layers are planted (`HEADS`); reading them from a real DIN SavedModel is tested in
`test_learner_serving.py`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import math
import time

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from scipy.stats import binomtest

from feature_store.event_log import LocalEventLog
from feature_store.online_store import RedisOnlineStore
from feature_store.schemas import Event
from feature_store.settings import EventLogSettings, LearnerSettings, Settings
from models.online_revisions import RevisionStore
from models.registry import ModelRegistry
from services.experiments.manager import ExperimentManager
from services.experiments.report import batch_design_effects, enforce_guardrail
from services.experiments.store import ExperimentStore
from services.learner.feedback import ComparisonReader, log_lateness
from services.learner.metrics import learner_registry
from services.learner.pdgd import logged_gradient
from services.learner.process import Guardrail, LearnerProcess, build, stopped_arms
from services.learner.shown import ShownList, ShownStore
from tests.services.experiments.conftest import ADMIN, admin_client, admin_settings, publish_dummy, registry_versions  # noqa: F401
from tests.services.experiments.test_report import create, plant_ab

WINDOW = timedelta(minutes=30)
T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)


class Feedback:
    """Writes interleaved requests (slots with teams, clicked slots) to a real event log."""

    def __init__(self, root: Path) -> None:
        self.log = LocalEventLog(root)
        self.requests = 0

    def request(self, revision: str, teams: list[str], clicked: list[int], old: bool = False,
                clicks_first: str | None = None, user: str = "u1", rid: str | None = None) -> None:
        """A request served by `revision` (`learner:<id>`) as the API logs it: arm `learner:online`,
        the revision in the policy; `old`: as logged before the arms (the revision as the arm, no
        policy); `clicks_first`: the clicks reach the log before the impressions, in the same file
        (`"line"`) or in an earlier one (`"file"`), as when the impression writer lags a fast client;
        `rid`: the request id (by default `req<n>`, n counting requests from 1)."""
        self.requests += 1
        served = T0 + timedelta(seconds=self.requests)
        rid = rid or f"req{self.requests}"
        labels = {"arm": revision} if old else {"arm": "learner:online", "policy": f"ranker=v1;explore={revision}"}
        events = [Event(event_id=f"imp-{rid}-{user}-{p}", user_id=user, item_id=f"i{p}", type="impression", ts=served,
                        context={"request_id": rid, "position": p, "experiment": "learner", "team": team, **labels})
                  for p, team in enumerate(teams)]
        clicks = [Event(event_id=f"click-{rid}-{user}-{p}", user_id=user, item_id=f"i{p}", type="click",
                        ts=served + timedelta(seconds=0.5), context={"request_id": rid}) for p in clicked]
        if clicks_first == "file":
            self.log.append(clicks)
            self.log.roll_all()
            self.log.append(events)
        else:
            self.log.append(clicks + events if clicks_first == "line" else events + clicks)

    def close_window(self) -> None:
        """An event past every request's window (the watermark finishes them); files made visible."""
        self.log.append([Event(event_id=f"tick{self.requests}", user_id="other", item_id="x", type="impression",
                               ts=T0 + timedelta(seconds=self.requests) + WINDOW + timedelta(seconds=1))])
        self.log.roll_all()


def _process(tmp_path: Path, client: redis.Redis, guardrail: Guardrail = dict,
             **settings: object) -> tuple[LearnerProcess, Feedback, list[str]]:
    registry = ModelRegistry(tmp_path / "registry")
    versions = [publish_dummy(registry, tmp_path / "artifacts", name) for name in ("v1", "v2")]
    registry.set_current("ranker", versions[0])
    heads = {versions[0]: np.array([3.0, 4.0, 0.0, 0.5]), versions[1]: np.array([1.0, -1.0, 2.0, 0.1])}
    learner_settings = LearnerSettings(**{"comparisons": 1, "rollback_window": 10, **settings})
    store = RevisionStore(client, "t", history=learner_settings.history)
    feedback = Feedback(tmp_path / "events")
    process = LearnerProcess(learner_settings, store, registry, ComparisonReader(tmp_path / "events", WINDOW),
                             heads.__getitem__, seed=3, shown=ShownStore(client, "t", ttl_s=600), guardrail=guardrail)
    return process, feedback, versions


def test_explore_winning_moves_w_toward_explore_and_publishes_a_child_revision(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    process.step()
    first = process.store.current(versions[0])
    assert first.parent is None and first.base == versions[0]
    np.testing.assert_array_equal(first.weights, [3.0, 4.0, 0.0])  # the base's own layer
    assert first.explore is not None and not np.array_equal(first.explore_weights, first.weights)

    feedback.request("learner:r999", ["explore", "current"], [1])  # a stale revision's feedback: skipped
    feedback.request(f"learner:{first.id}", ["current", "explore", "base"], [1])
    feedback.close_window()
    process.step()
    second = process.store.current(versions[0])
    expected = first.weights + process.settings.eta * (first.explore_weights - first.weights)  # DRN: w + η (w̃ − w)
    expected *= np.linalg.norm(first.weights) / np.linalg.norm(expected)  # rescaled to |w|
    np.testing.assert_allclose(second.weights, expected, rtol=1e-12)
    assert second.parent == first.id and "moved" in second.reason
    assert (process.summary.comparisons, process.summary.stale, process.summary.moves) == (1, 1, 1)

    feedback.request(f"learner:{second.id}", ["current", "explore"], [0])  # current wins: w stays
    feedback.close_window()
    process.step()
    third = process.store.current(versions[0])
    np.testing.assert_array_equal(third.weights, second.weights)
    assert third.parent == second.id and not np.array_equal(third.explore_weights, second.explore_weights)


def test_aa_mode_never_moves_w(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, aa=True)
    process.step()
    for _ in range(5):
        revision = process.store.current(versions[0])
        np.testing.assert_array_equal(revision.explore_weights, revision.weights)
        feedback.request(f"learner:{revision.id}", ["current", "explore"], [1])
        feedback.close_window()
        process.step()
    np.testing.assert_array_equal(process.store.current(versions[0]).weights, [3.0, 4.0, 0.0])
    assert process.summary.moves == 0 and process.summary.comparisons == 5


def test_the_kill_switch_stops_updates(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    process.step()
    first = process.store.current(versions[0])
    process.store.set_control(False, "incident")
    feedback.request(f"learner:{first.id}", ["current", "explore"], [1])
    feedback.close_window()
    process.step()
    assert process.store.current(versions[0]) == first and process.summary.paused_steps == 1
    process.store.set_control(True, "over")
    feedback.request(f"learner:{first.id}", ["current", "explore"], [1])
    feedback.close_window()
    process.step()
    assert process.store.current(versions[0]).parent == first.id  # learning again


def test_a_bad_revision_is_rolled_back_to_the_base_with_the_reason(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, comparisons=50)
    bad = process.store.publish(versions[0], np.array([-3.0, -4.0, 0.0]), np.array([-3.1, -4.0, 0.1]), None, "planted bad")
    process.step()  # resumes from the bad revision
    resumed = process.store.current(versions[0])
    np.testing.assert_array_equal(resumed.weights, bad.weights)
    for n in range(10):  # the base team's items are clicked, the current team's not: 10 decided losses
        feedback.request(f"learner:{resumed.id}", ["current", "base", "explore"], [1] if n % 2 else [1, 2])
    feedback.close_window()
    process.step()
    rolled = process.store.current(versions[0])
    np.testing.assert_array_equal(rolled.weights, [3.0, 4.0, 0.0])
    assert rolled.parent == resumed.id and rolled.reason.startswith("rollback:") and "0.0% of its last 10" in rolled.reason
    assert process.summary.rollbacks == 1


def test_a_promotion_restarts_from_the_new_base_and_keeps_the_history(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    process.step()
    old = process.store.current(versions[0])
    feedback.request(f"learner:{old.id}", ["current", "explore"], [1])
    feedback.close_window()
    process.step()
    ModelRegistry(tmp_path / "registry").set_current("ranker", versions[1])
    process.step()
    new = process.store.current(versions[1])
    np.testing.assert_array_equal(new.weights, [1.0, -1.0, 2.0])
    assert new.parent is None and new.base == versions[1]
    history = process.store.history()
    assert [r.base for r in history] == [versions[1], versions[0], versions[0]]
    assert process.store.current(versions[0]).id == history[1].id


def test_the_reader_skips_partitions_before_its_start(tmp_path: Path) -> None:
    feedback = Feedback(tmp_path / "events")
    feedback.request("learner:r1", ["current", "explore"], [1])
    feedback.request("learner:r2", ["explore", "current"], [0], old=True)  # logged before the arms
    feedback.close_window()
    read = ComparisonReader(tmp_path / "events", WINDOW).poll()
    assert sorted((c.arm, c.teams, c.clicked) for c in read) == [
        ("learner:r1", ("current", "explore"), (False, True)), ("learner:r2", ("explore", "current"), (True, False))]
    assert ComparisonReader(tmp_path / "events", WINDOW, since=T0 + timedelta(hours=2)).poll() == []


def _served_probability(order: list[int], scores: np.ndarray, total: float) -> float:
    """Plackett–Luce of a shown list, each slot over the mass `total` of every candidate not shown above."""
    p, used = 1.0, 0.0
    for item in order:
        p *= math.exp(scores[item]) / (total - used)
        used += math.exp(scores[item])
    return p


def test_pdgd_joins_clicked_lists_to_their_shown_features_and_skips_expired_ones(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, algorithm="pdgd", lr=0.2, sharpness=2.5)
    process.step()
    first = process.store.current(versions[0])
    assert first.explore is None and first.weights.tolist() == [7.5, 10.0, 0.0]  # 2.5 × the base's layer
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 3)) * 0.3  # the shown items' features, slot order
    s = x @ first.weights
    total = float(np.exp(s).sum() + np.exp(rng.normal(size=20)).sum())  # 20 more candidates were ranked, not shown
    shown = ShownStore(redis_client, "t", ttl_s=600)
    for n in (1, 2):  # req1 and req2 (the Feedback's request ids)
        shown.write([ShownList("u1", f"req{n}", first.id, tuple(f"i{p}" for p in range(5)), x, s, math.log(total))])
    feedback.request(f"learner:{first.id}", ["current"] * 5, [2])  # req1: a click on slot 2
    feedback.request(f"learner:{first.id}", ["current"] * 5, [0])  # req2: its features expire below
    feedback.request(f"learner:{first.id}", ["current"] * 5, [])  # req3: no click, nothing to learn
    feedback.request("learner:r999", ["current"] * 5, [1])  # another base's revision: stale
    redis_client.pexpire(shown.key("u1", "req2"), 1)
    deadline = time.monotonic() + 30
    while redis_client.exists(shown.key("u1", "req2")):
        assert time.monotonic() < deadline, "the planted TTL never expired"
        time.sleep(0.01)
    feedback.close_window()
    process.step()

    expected = np.zeros(3)  # the paper's pairs for a click on slot 2: (2, 0), (2, 1), (2, 3)
    for l in (0, 1, 3):
        swapped = [0, 1, 2, 3, 4]
        swapped[2], swapped[l] = l, 2
        rho = _served_probability(swapped, s, total) / (_served_probability(swapped, s, total)
                                                        + _served_probability([0, 1, 2, 3, 4], s, total))
        p = 1 / (1 + math.exp(-(s[2] - s[l])))
        expected += rho * p * (1 - p) * (x[2] - x[l])
    second = process.store.current(versions[0])
    np.testing.assert_allclose(second.weights, first.weights + 0.2 * expected, rtol=1e-6)
    assert second.parent == first.id and second.reason.startswith("pdgd")
    assert all((x[2] - x[l]) @ (second.weights - first.weights) > 0 for l in (0, 1, 3))  # here it rose against each
    summary = process.summary
    assert (summary.comparisons, summary.stale, summary.rounds, summary.moves, summary.missing_features) == (3, 1, 1, 1, 1)


def test_pdgd_joins_each_users_list_when_users_share_a_request_id(tmp_path: Path, redis_client: redis.Redis) -> None:
    """A page view's id sent by each widget: every user's list is its own comparison, joined to its
    own features; a stored list whose items are not the logged ones is skipped."""
    process, feedback, versions = _process(tmp_path, redis_client, algorithm="pdgd", lr=0.2)
    process.step()
    first = process.store.current(versions[0])
    x = np.random.default_rng(3).normal(size=(3, 3)).astype(np.float32).astype(np.float64) * 0.125  # as stored
    features = {"u1": x, "u2": -x, "u3": x}
    shown = ShownStore(redis_client, "t", ttl_s=600)
    for user, f in features.items():
        items = ("i0", "i1", "i2") if user != "u3" else ("i2", "i1", "i0")
        s = f @ first.weights
        shown.write([ShownList(user, "page", first.id, items, f, s, float(np.log(np.exp(s).sum())))])
        feedback.request(f"learner:{first.id}", ["current"] * 3, [2], user=user, rid="page")
    feedback.close_window()
    process.step()

    expected = first.weights.copy()
    for f in (x, -x):  # u1's list, then u2's (read in the log's order)
        s = f @ first.weights
        expected += 0.2 * logged_gradient(np.array([False, False, True]), f, f @ expected, s, float(np.log(np.exp(s).sum())))
    assert np.abs(expected - first.weights).min() > 1e-3  # each list moved w
    np.testing.assert_allclose(process.store.current(versions[0]).weights, expected, rtol=1e-9)
    assert (process.summary.comparisons, process.summary.rounds, process.summary.missing_features) == (3, 2, 1)


def test_pdgd_starts_from_and_rolls_back_to_sharpness_times_the_base(tmp_path: Path, redis_client: redis.Redis) -> None:
    stops: dict[str, str] = {}
    process, feedback, versions = _process(tmp_path, redis_client, lambda: dict(stops), algorithm="pdgd", lr=0.5,
                                           sharpness=4.0)
    process.step()
    first = process.store.current(versions[0])
    np.testing.assert_array_equal(first.weights, [12.0, 16.0, 0.0])
    x = np.array([[0.1, -0.2, 0.3], [0.4, 0.1, -0.1], [-0.3, 0.2, 0.2]])
    s = x @ first.weights
    ShownStore(redis_client, "t", ttl_s=600).write([ShownList("u1", "req1", first.id, ("i0", "i1", "i2"), x, s, float(np.log(np.exp(s).sum())))])
    feedback.request(f"learner:{first.id}", ["current"] * 3, [1])
    feedback.close_window()
    process.step()
    assert not np.array_equal(process.store.current(versions[0]).weights, first.weights)
    stops["online"] = "planted stop"
    process.step()
    rolled = process.store.current(versions[0])
    np.testing.assert_array_equal(rolled.weights, [12.0, 16.0, 0.0])  # not the base's own [3, 4, 0]
    assert rolled.reason.startswith("rollback") and process.summary.guardrail_rollbacks == 1


def test_a_guardrail_breach_of_the_learner_experiment_rolls_back_to_the_base_once(
    tmp_path: Path, redis_client: redis.Redis, admin_client: TestClient, admin_settings: Settings  # noqa: F811
) -> None:
    experiments = ExperimentStore(admin_settings.state_dir / "experiments", redis_client, admin_settings.redis.key_prefix)
    process, feedback, versions = _process(tmp_path / "learner", redis_client, guardrail=stopped_arms(experiments))
    drifted = process.store.publish(versions[0], np.array([2.0, 5.0, 1.0]), np.array([2.1, 5.0, 1.0]), None, "learned")
    create(admin_client, {"id": "learner", "kind": "ab", "guardrail": {"max_ctr_drop": 0.1, "p_value": 0.01},
                          "arms": [{"name": "control"}, {"name": "online"}]})
    plant_ab(admin_settings, "learner", {"control": (3000, 600), "online": (3000, 360)}, users=True)
    process.step()  # only reading the stopped arms, and nobody read the report: the learner resumes from its revision
    np.testing.assert_array_equal(process.store.current(versions[0]).weights, drifted.weights)
    assert process.summary.guardrail_rollbacks == 0

    report = admin_client.get("/v1/experiments/learner/report").json()
    assert report["arms"][1]["stopped"].startswith("guardrail")  # 12% CTR against 20%, allowed drop 10%
    process.step()
    rolled = process.store.current(versions[0])
    np.testing.assert_array_equal(rolled.weights, [3.0, 4.0, 0.0])  # the base's own layer
    assert "stopped arm 'online'" in rolled.reason and "guardrail: CTR 0.1200" in rolled.reason
    assert process.summary.guardrail_rollbacks == 1 and process.summary.rollbacks == 0
    assert b"recsys_learner_guardrail_rollbacks_total 1.0" in generate_latest(learner_registry(process))

    process.step()  # the arm stays stopped: one rollback per stop
    restarted, _, _ = _process(tmp_path / "again", redis_client, guardrail=stopped_arms(experiments))
    restarted.step()  # a restarted learner finds the rollback in the history
    assert process.summary.guardrail_rollbacks == 1 and restarted.summary.guardrail_rollbacks == 0


def test_a_guardrail_stop_is_rolled_back_once_even_after_the_bounded_history_forgot_the_rollback(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    stops = {"online": "guardrail: CTR 0.1200 below 0.9 x control's 0.2000 (p = 1e-06)"}
    process, _, versions = _process(tmp_path / "learner", redis_client, guardrail=lambda: stops, history=3)
    process.step()
    assert process.summary.guardrail_rollbacks == 1
    for n in range(4):  # the learner learns on: the history (3 revisions) no longer holds the rollback
        learned = process.store.publish(versions[0], np.array([2.0, 5.0, float(n)]), None, None, "learned")
    assert not any("stopped arm" in revision.reason for revision in process.store.history())
    restarted = LearnerProcess(process.settings, RevisionStore(redis_client, "t", history=3), process.registry,
                               process.comparisons, process.head_of, shown=process.shown, guardrail=lambda: stops)
    restarted.step()  # the same stop: no second rollback
    assert restarted.summary.guardrail_rollbacks == 0
    np.testing.assert_array_equal(restarted.store.current(versions[0]).weights, learned.weights)
    stops["online"] = "guardrail: CTR 0.1000 below 0.9 x control's 0.2000 (p = 1e-09)"  # another stop: rolled back
    restarted.step()
    assert restarted.summary.guardrail_rollbacks == 1
    np.testing.assert_array_equal(restarted.store.current(versions[0]).weights, [3.0, 4.0, 0.0])


def test_the_learner_experiment_is_checked_and_holds_no_slice_of_its_layer(admin_client: TestClient) -> None:  # noqa: F811
    bad = admin_client.post("/v1/experiments", headers=ADMIN, json={
        "id": "learner", "kind": "ab", "arms": [{"name": "base"}, {"name": "online"}]})
    assert bad.status_code == 422 and "arms 'control' and 'online'" in bad.text
    create(admin_client, {"id": "learner", "kind": "ab", "arms": [{"name": "control"}, {"name": "online"}]})
    create(admin_client, {"id": "other", "kind": "ab", "arms": [{"name": "a"}, {"name": "b"}]})  # the whole layer


def test_the_learner_applies_the_guardrail_itself_when_nobody_reads_the_report(
    tmp_path: Path, redis_client: redis.Redis, admin_client: TestClient, admin_settings: Settings  # noqa: F811
) -> None:
    experiments = ExperimentStore(admin_settings.state_dir / "experiments", redis_client, admin_settings.redis.key_prefix)
    manager = ExperimentManager(experiments, ModelRegistry(admin_settings.model_registry_dir))
    attribution = RedisOnlineStore.from_settings(admin_settings).attribution()
    effects = batch_design_effects(Path(admin_settings.batch_uri))
    guardrail = stopped_arms(experiments, lambda experiment: enforce_guardrail(manager, attribution, experiment, effects))
    process, _, versions = _process(tmp_path / "learner", redis_client, guardrail=guardrail)
    process.store.publish(versions[0], np.array([2.0, 5.0, 1.0]), np.array([2.1, 5.0, 1.0]), None, "learned")
    create(admin_client, {"id": "learner", "kind": "ab", "guardrail": {"max_ctr_drop": 0.1, "p_value": 0.01},
                          "arms": [{"name": "control"}, {"name": "online"}]})
    plant_ab(admin_settings, "learner", {"control": (3000, 600), "online": (3000, 360)}, users=True)  # 12% against 20%, drop 10% allowed
    process.step()
    rolled = process.store.current(versions[0])
    np.testing.assert_array_equal(rolled.weights, [3.0, 4.0, 0.0])  # the base's own layer
    assert "stopped arm 'online'" in rolled.reason and "guardrail: CTR 0.1200" in rolled.reason
    assert process.summary.guardrail_rollbacks == 1
    stopped = experiments.all()["learner"].stopped_arms  # the stop is the experiment's, as if the report had made it
    assert list(stopped) == ["online"] and stopped["online"] in rolled.reason
    attribution.close()


def _one_sided_sign_p(wins: int, losses: int) -> float:
    """P(X >= wins) for X ~ Binomial(wins + losses, 1/2), from scipy (not the gate's own test)."""
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


def test_pdgd_gate_comparisons_promote_w_by_the_sign_test_and_demote_it_when_it_stops_winning(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """Team-draft lists of the `current` and `base` teams (the API's gate share) go to the serving
    gate, not to PDGD: w is published `served` once its wins pass the one-sided sign test at the
    level, stays served while it wins more than it loses, and a revision says why at each change."""
    process, feedback, versions = _process(tmp_path, redis_client, algorithm="pdgd", sharpness=2.0, gate_window=10,
                                           gate_level=0.05, gate_min_comparisons=1)
    learned = process.store.publish(versions[0], np.array([8.0, 2.0, 1.0]), None, None, "planted learned w")
    process.step()  # resumes from it
    assert not process.store.current(versions[0]).served
    assert _one_sided_sign_p(4, 0) > 0.05 >= _one_sided_sign_p(5, 0)  # so the 5th straight win promotes

    def compare(current_wins: bool, revision_id: str) -> None:
        feedback.request(f"learner:{revision_id}", ["current", "base", "base", "current"], [0] if current_wins else [1])

    resumed = process.store.current(versions[0])
    compare(True, resumed.id)
    feedback.request(f"learner:{resumed.id}", ["base", "current"], [0, 1])  # a tie: not counted
    feedback.request(f"learner:{resumed.id}", ["current", "base"], [])  # no click: not counted
    for _ in range(3):
        compare(True, resumed.id)
    feedback.close_window()
    process.step()
    assert process.store.current(versions[0]).id == resumed.id  # 4 wins: p = 1/16, nothing published
    assert (process.summary.gate_comparisons, process.summary.comparisons, process.summary.missing_features) == (4, 0, 0)

    compare(True, resumed.id)
    x = np.array([[0.2, 0.1, -0.3], [-0.1, 0.3, 0.2]])  # and a PDGD list in the same step: w moves as it is promoted
    s = x @ resumed.weights
    ShownStore(redis_client, "t", ttl_s=600).write(
        [ShownList("u1", f"req{feedback.requests + 1}", resumed.id, ("i0", "i1"), x, s, float(np.log(np.exp(s).sum())))])
    feedback.request(f"learner:{resumed.id}", ["current", "current"], [1])
    feedback.close_window()
    process.step()
    moved = process.store.current(versions[0])
    assert moved.served and moved.parent == resumed.id and process.summary.promotions == 1
    assert not np.array_equal(moved.weights, learned.weights)  # by the PDGD list only (below: the gate's never move it)
    assert moved.reason == (f"pdgd: w moved by 1 clicked lists; gate: w served, it won 5 of the last 5 decided "
                            f"comparisons against base {versions[0]} (sign test p = {_one_sided_sign_p(5, 0):.3g} <= 0.05)")

    for n in range(5):  # the base wins 5: wins (5) no longer exceed losses (5) only at the 5th
        compare(False, moved.id)
        feedback.close_window()
        process.step()
        assert process.store.current(versions[0]).served == (n < 4)
        assert process.store.current(versions[0]).id == moved.id or n == 4  # nothing else published
    demoted = process.store.current(versions[0])
    assert demoted.reason == "gate: base served again, w won 5 of the last 10 decided comparisons"
    np.testing.assert_array_equal(demoted.weights, moved.weights)
    summary = process.summary
    assert (summary.gate_comparisons, summary.promotions, summary.demotions, summary.comparisons) == (10, 1, 1, 1)
    metrics = generate_latest(learner_registry(process)).decode()
    assert "recsys_learner_promotions_total 1.0" in metrics and "recsys_learner_promoted 0.0" in metrics


def test_dbgd_feeds_the_gate_from_its_own_lists_and_a_rollback_serves_the_base_again(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, comparisons=50, gate_window=10, gate_min_comparisons=1)
    process.store.publish(versions[0], np.array([3.0, 3.0, 1.0]), np.array([3.1, 3.0, 1.0]), None, "planted learned w")
    process.step()
    for n in range(5):  # the current team's items clicked, the base team's not
        revision = process.store.current(versions[0])
        assert not revision.served
        feedback.request(f"learner:{revision.id}", ["current", "base", "explore"], [0])
        feedback.close_window()
        process.step()
    promoted = process.store.current(versions[0])
    assert promoted.served and promoted.reason.startswith("gate: w served") and process.summary.promotions == 1
    np.testing.assert_array_equal(promoted.weights, [3.0, 3.0, 1.0])

    for n in range(10):  # then it loses every comparison: the rollback (window 10, threshold 0.4) serves the base
        revision = process.store.current(versions[0])
        feedback.request(f"learner:{revision.id}", ["current", "base", "explore"], [1])
        feedback.close_window()
        process.step()
    rolled = process.store.current(versions[0])
    assert rolled.reason.startswith("rollback:") and not rolled.served
    np.testing.assert_array_equal(rolled.weights, [3.0, 4.0, 0.0])


def test_with_promote_off_w_is_never_served(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, algorithm="pdgd", promote=False, gate_window=10)
    process.store.publish(versions[0], np.array([8.0, 2.0, 1.0]), None, None, "planted learned w")
    process.step()
    resumed = process.store.current(versions[0])
    for _ in range(10):
        feedback.request(f"learner:{resumed.id}", ["current", "base"], [0])
    feedback.close_window()
    process.step()
    assert process.store.current(versions[0]) == resumed and process.summary.gate_comparisons == 0


def test_clicks_read_before_their_impressions_wait_for_them(tmp_path: Path) -> None:
    """The API logs a click at once and its impressions from a queue: a fast client's click comes
    first in the log, in the same file or an earlier one, and still counts; a click whose impression
    never comes waits `ORPHAN_WAIT_MS` of event time, then is dropped."""
    feedback = Feedback(tmp_path / "events")
    feedback.request("learner:r1", ["current", "base", "current"], [1, 2], clicks_first="line")
    feedback.request("learner:r1", ["base", "current"], [0], clicks_first="file")
    feedback.request("learner:r1", ["base", "current"], [1])
    feedback.log.append([Event(event_id="lost", user_id="u1", item_id="i9", type="click", ts=T0,
                               context={"request_id": "never-served"})])
    reader = ComparisonReader(tmp_path / "events", WINDOW)
    feedback.log.roll_all()
    assert reader.poll() == [] and len(reader._orphans) == 1  # the unmatched click waits
    feedback.close_window()
    read = sorted((c.request_id, c.teams, c.clicked) for c in reader.poll())
    assert read == [("req1", ("current", "base", "current"), (False, True, True)),
                    ("req2", ("base", "current"), (True, False)), ("req3", ("base", "current"), (False, True))]
    assert reader._orphans == {} and reader._shown == {}  # expired: the watermark is WINDOW past it


def test_two_users_under_one_request_id_are_two_comparisons(tmp_path: Path) -> None:
    feedback = Feedback(tmp_path / "events")
    feedback.request("learner:r1", ["current", "base"], [0], user="u1", rid="page")
    feedback.request("learner:r1", ["base", "current", "base"], [2], user="u2", rid="page")
    reader = ComparisonReader(tmp_path / "events", WINDOW)
    feedback.close_window()
    read = sorted((c.user_id, c.request_id, c.items, c.teams, c.clicked) for c in reader.poll())
    assert read == [("u1", "page", ("i0", "i1"), ("current", "base"), (True, False)),
                    ("u2", "page", ("i0", "i1", "i2"), ("base", "current", "base"), (False, False, True))]


def test_the_orphans_are_bounded(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path / "events")
    log.append([Event(event_id=f"c{n}", user_id="u1", item_id=f"i{n}", type="click", ts=T0 + timedelta(seconds=n),
                      context={"request_id": f"r{n}"}) for n in range(5)])
    log.roll_all()
    reader = ComparisonReader(tmp_path / "events", WINDOW, max_orphans=3)
    reader.poll()
    assert list(reader._orphans) == ["c2", "c3", "c4"] and reader.orphans_dropped == 2


def _limited(redis_client: redis.Redis, *rules: str) -> redis.Redis:
    """A client of the test Redis as the user `learner`, with all rights less `rules` (a deployment's
    ACL, or a Redis refusing the command); changing them closes the user's connections."""
    redis_client.execute_command("ACL", "SETUSER", "learner", "on", ">pw", "~*", "+@all", *rules)
    host, port = redis_client.connection_pool.connection_kwargs["host"], redis_client.connection_pool.connection_kwargs["port"]
    return redis.Redis(host=host, port=port, username="learner", password="pw")


def _refused(process: LearnerProcess, redis_client: redis.Redis, *rules: str) -> None:
    """One `process.step()` on a Redis refusing `rules`: it fails, as a step on Redis away does."""
    process.store = RevisionStore(_limited(redis_client, *rules), "t", history=process.settings.history)
    process.shown = ShownStore(_limited(redis_client, *rules), "t", ttl_s=600)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            process.step()
    finally:
        redis_client.execute_command("ACL", "DELUSER", "learner")
    process.store = RevisionStore(redis_client, "t", history=process.settings.history)
    process.shown = ShownStore(redis_client, "t", ttl_s=600)


def _restarted(process: LearnerProcess, settings: LearnerSettings) -> LearnerProcess:
    """A new learner process on the same Redis, registry, event log and bases as `process`."""
    return LearnerProcess(settings, process.store, process.registry, process.comparisons, process.head_of,
                          shown=process.shown)


def test_a_redis_failure_while_switching_base_leaves_no_half_switched_learner(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    limited = _limited(redis_client)
    process.store = RevisionStore(limited, "t", history=process.settings.history)
    try:
        process.step()
        first = process.store.current(versions[0])
        feedback.request(f"learner:{first.id}", ["current", "explore"], [1])  # explore wins: w moves on v1
        feedback.close_window()
        process.step()
        assert not np.array_equal(process.store.current(versions[0]).weights, [3.0, 4.0, 0.0])
        ModelRegistry(tmp_path / "registry").set_current("ranker", versions[1])
        _limited(redis_client, "-evalsha", "-eval")  # the publish of v2's first revision fails
        limited.connection_pool.disconnect()
        with pytest.raises(redis.exceptions.NoPermissionError):
            process.step()
        _limited(redis_client, "+evalsha", "+eval")
        limited.connection_pool.disconnect()
        process.step()
    finally:
        redis_client.execute_command("ACL", "DELUSER", "learner")
    started = RevisionStore(redis_client, "t").current(versions[1])
    np.testing.assert_array_equal(started.weights, [1.0, -1.0, 2.0])  # v2's own layer, not v1's learned w
    assert started.parent is None and process.base == versions[1]


def test_a_step_failing_on_redis_loses_no_feedback(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    process.step()
    first = process.store.current(versions[0])
    feedback.request(f"learner:{first.id}", ["current", "explore"], [1])
    feedback.close_window()
    _refused(process, redis_client, "-hgetall")  # the kill switch unreadable
    process.step()
    assert process.summary.comparisons == 1 and process.store.current(versions[0]).parent == first.id


def test_a_registry_rollback_to_an_older_base_starts_from_its_layer_not_its_old_revision(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    registry = ModelRegistry(tmp_path / "registry")
    process.step()
    first = process.store.current(versions[0])
    feedback.request(f"learner:{first.id}", ["current", "explore"], [1])
    feedback.close_window()
    process.step()
    assert not np.array_equal(process.store.current(versions[0]).weights, [3.0, 4.0, 0.0])  # learned on v1
    registry.set_current("ranker", versions[1])
    process.step()
    registry.set_current("ranker", versions[0])  # the registry goes back
    process.step()
    again = process.store.current(versions[0])
    np.testing.assert_array_equal(again.weights, [3.0, 4.0, 0.0])
    assert again.parent is None and not again.served

    restarted = _restarted(process, process.settings)  # a restart on the same base resumes
    restarted.step()
    assert restarted.store.current(versions[0]).parent == again.id


def test_switching_the_algorithm_starts_from_the_algorithms_own_origin(tmp_path: Path, redis_client: redis.Redis) -> None:
    dbgd, _, versions = _process(tmp_path, redis_client)
    dbgd.step()
    pdgd = _restarted(dbgd, dbgd.settings.model_copy(update={"algorithm": "pdgd", "sharpness": 4.0}))
    pdgd.step()
    resumed = pdgd.store.current(versions[0])
    np.testing.assert_array_equal(resumed.weights, [12.0, 16.0, 0.0])  # 4 × the base: PDGD's origin, not DBGD's w
    assert resumed.parent is None and resumed.algorithm == "pdgd"


def test_revision_ids_are_not_reused_by_a_redis_restored_from_an_older_snapshot(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t")
    first = store.publish("v1", np.ones(3), None, None, "first")
    redis_client.set("t:learn:{ranker}:seq", 0)  # the counter as a snapshot taken before `first` has it
    second = store.publish("v1", np.ones(3), None, None, "after the restore")
    assert first.id != second.id and first.id.split("-")[0] == second.id.split("-")[0] == "r1"


def test_clicks_in_another_workers_unrolled_file_still_count(tmp_path: Path) -> None:
    """Three API workers, each publishing its own files when they roll (up to the roll age after they
    opened): the newest visible event time runs ahead of what the others hold. A click read before
    its impression's file is published waits for it; a click near the window's end, still in an
    unrolled file, is not read as none."""
    root, lateness = tmp_path / "events", log_lateness(EventLogSettings().roll_max_age_s)
    with LocalEventLog(root) as a, LocalEventLog(root) as b, LocalEventLog(root) as c:
        context = {"position": 0, "experiment": "learner", "team": "current", "arm": "learner:online",
                   "policy": "ranker=v1;explore=learner:r1-abcdef"}
        a.append([Event(event_id="imp1", user_id="u1", item_id="i0", type="impression", ts=T0,
                        context={**context, "request_id": "req1"})])  # in A's open file
        b.append([Event(event_id="click1", user_id="u1", item_id="i0", type="click", ts=T0 + timedelta(seconds=0.2),
                        context={"request_id": "req1"})])
        b.roll_all()
        c.append([Event(event_id="x1", user_id="u9", item_id="x", type="impression", ts=T0 + timedelta(seconds=60.5))])
        c.roll_all()  # C's file rolled before A's
        reader = ComparisonReader(root, WINDOW, lateness=lateness)
        assert reader.poll() == [] and list(reader._orphans) == ["click1"]  # waits for its impression
        a.roll_all()
        a.append([Event(event_id="imp2", user_id="u2", item_id="i0", type="impression", ts=T0 + timedelta(seconds=61),
                        context={**context, "request_id": "req2"})])
        a.roll_all()
        b.append([Event(event_id="click2", user_id="u2", item_id="i0", type="click",
                        ts=T0 + timedelta(seconds=61) + WINDOW - timedelta(seconds=5), context={"request_id": "req2"})])
        c.append([Event(event_id="x2", user_id="u9", item_id="x", type="impression", ts=T0 + timedelta(seconds=62) + WINDOW)])
        c.roll_all()  # past req2's window, while click2 is still in B's open file
        assert [(r.request_id, r.clicked) for r in reader.poll()] == [("req1", (True,))]
        b.roll_all()
        c.append([Event(event_id="x3", user_id="u9", item_id="x", type="impression",
                        ts=T0 + timedelta(seconds=62) + WINDOW + lateness)])
        c.roll_all()
        assert [(r.request_id, r.clicked) for r in reader.poll()] == [("req2", (True,))]


def test_a_future_dated_event_neither_finishes_requests_early_nor_stops_the_reading(tmp_path: Path) -> None:
    """The watermark stops at the reader's clock: a click dated 14 min ahead (inside the API's clock
    skew allowance) finished a request served 20 min before with its 30-min window still open, and a
    2099 event (an import) left every later partition unread."""
    now = [datetime.now(timezone.utc).timestamp()]
    served = datetime.fromtimestamp(now[0], timezone.utc) - timedelta(minutes=20)
    with LocalEventLog(tmp_path / "events") as log:
        context = {"position": 0, "experiment": "learner", "team": "current", "arm": "learner:online",
                   "policy": "ranker=v1;explore=learner:r1-abcdef"}
        log.append([Event(event_id="imp1", user_id="u1", item_id="i0", type="impression", ts=served,
                          context={**context, "request_id": "req1"}),
                    Event(event_id="ahead", user_id="u9", item_id="x", type="click", ts=served + timedelta(minutes=34)),
                    Event(event_id="far", user_id="u9", item_id="x", type="click", ts=datetime(2099, 1, 1, tzinfo=timezone.utc))])
        log.roll_all()
        reader = ComparisonReader(tmp_path / "events", WINDOW, clock=lambda: now[0])
        assert reader.poll() == []  # 20 min into a 30-min window: not finished
        log.append([Event(event_id="click1", user_id="u1", item_id="i0", type="click", ts=served + timedelta(minutes=15),
                          context={"request_id": "req1"})])
        log.roll_all()
        assert reader.poll() == []
        now[0] += 11 * 60  # the window has passed by the reader's clock; no new event needed
        assert [(c.request_id, c.clicked) for c in reader.poll()] == [("req1", (True,))]


def test_pdgd_refuses_features_that_expire_before_their_lists_are_learned(settings: Settings,
                                                                          redis_client: redis.Redis) -> None:
    """The learner waits out the window and the log's lateness (30 min + 61 s by default) before it
    learns a list: a features TTL shorter than that would expire every list first."""
    short = settings.model_copy(update={"learner": LearnerSettings(algorithm="pdgd", shown_ttl_s=1860.0)})
    with pytest.raises(ValueError, match=r"learner.shown_ttl_s \(1860 s\) must be over .* \(1861 s\)"):
        build(short, redis_client)
    build(settings.model_copy(update={"learner": LearnerSettings(algorithm="pdgd", shown_ttl_s=1862.0)}), redis_client)


def _publish(registry: ModelRegistry, folder: Path, role: str, manifest: dict) -> str:
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"planted")
    version = registry.publish(role, folder, {"params": {}, "data_window": {}, "metrics": {}, **manifest})
    registry.set_current(role, version)
    return version


def test_a_learner_that_can_compare_nothing_says_why_at_start(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The default stack ends with `comparisons: 0`: one warning at start names the reason and the
    setting (no share; or the recall artifact's blend serves its own order, not the ranker)."""
    def warnings_of(learner: LearnerSettings) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="services.learner"):
            build(settings.model_copy(update={"learner": learner}), redis_client)
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]

    (shown,) = warnings_of(LearnerSettings())
    assert "learner.share is 0" in shown and "RECSYS_LEARNER__SHARE" in shown
    assert warnings_of(LearnerSettings(share=0.1)) == []  # nothing published yet: nothing known not served

    registry = ModelRegistry(settings.model_registry_dir)
    ranker = _publish(registry, tmp_path / "ranker", "ranker", {})
    order = {"order": "blend", "blend_ndcg10": 0.3, "ranker_ndcg10": 0.2, "users": 50, "depth": 100, "ranker_version": ranker}
    recall = _publish(registry, tmp_path / "recall", "recall", {"blend": {"order": order}})
    (shown,) = warnings_of(LearnerSettings(share=0.1))
    assert f"recall version {recall} serves its blend's own order" in shown and "RECSYS_TRAINING__BLEND=false" in shown
    _publish(registry, tmp_path / "recall-ranked", "recall", {"blend": {"order": {**order, "order": "ranker"}}})
    assert warnings_of(LearnerSettings(share=0.1)) == []
