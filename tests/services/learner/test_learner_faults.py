"""The learner and its serving through faults, on a real Redis and a real event log: an unreadable
current revision leaves the kill switch working (for the worker the admin API answers and for the
others), and so does Redis refusing the revision's read; a worker reads the revision it serves
once, then only polls ids; a worker serves no revision of a base the
learner left; PDGD keeps a step's clicked lists when Redis refuses the read of their features, and
skips a malformed record alone; after a rollback, the rolled-back revisions' lists in flight
neither move nor promote the new `w`; a failed publish leaves DBGD where the served revision is,
and a failed rollback is published at the next step; a restarted DBGD draws other perturbations
than the run before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from feature_store.settings import LearnerSettings, Settings
from models.online_revisions import RevisionStore
from services.learner.serving import LearnerServing
from services.learner.shown import ShownList, ShownStore
from tests.services.experiments.conftest import ADMIN, admin_client, admin_settings, registry_versions  # noqa: F401
from tests.services.learner.test_learner_process import Feedback, _limited, _process, _refused, _restarted
from tests.services.learner.test_promoted_plan import BUNDLE, HEAD, _outside


def _toward(w: np.ndarray, explore: np.ndarray, eta: float) -> np.ndarray:
    """DBGD's step of `w` toward `explore`, rescaled to |w|."""
    target = w + eta * (explore - w)
    return target * np.linalg.norm(w) / np.linalg.norm(target)


def test_the_kill_switch_applies_while_the_current_revision_is_unreadable(
    admin_client: TestClient, admin_settings: Settings, redis_client: redis.Redis  # noqa: F811
) -> None:
    prefix = admin_settings.redis.key_prefix
    store = RevisionStore(redis_client, prefix)
    good = store.publish("v1", np.array([-1.0, 3.0]), None, None, "planted", served=True)
    worker = admin_client.app.state.service.learner  # type: ignore[attr-defined]
    worker.served_base = lambda: "v1"  # the registry's dummy versions load no ranker: v1 stands for the served one
    other = LearnerServing(store, LearnerSettings(share=0.3), lambda: "v1")  # another worker
    assert worker.refresh().revision == other.refresh().revision == good
    redis_client.hset(f"{prefix}:learn:{{ranker}}:rev", "r99-abcdef", json.dumps({"id": "r99-abcdef", "w": [1.0]}))
    redis_client.set(f"{prefix}:learn:{{ranker}}:current:v1", "r99-abcdef")  # another version's revision

    answer = admin_client.post("/v1/admin/learner", json={"enabled": False, "reason": "incident"}, headers=ADMIN)
    assert answer.status_code == 200
    assert not answer.json()["enabled"] and answer.json()["revision"] is None
    other.refresh()
    assert not other.enabled and other.live.revision is None and other.plan(_outside(), BUNDLE, "req1") is None


def test_the_kill_switch_applies_when_redis_refuses_the_revisions_read(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t")
    first = store.publish("v1", np.array([-1.0, 3.0]), None, None, "planted", served=True)
    serving = LearnerServing(store, LearnerSettings(share=0.3), lambda: "v1")
    serving.refresh()
    store.publish("v1", np.array([-1.0, 2.0]), None, first.id, "a newer revision")
    store.set_control(False, "incident")
    serving.store = RevisionStore(_limited(redis_client, "-lrange", "-hget", "-hmget"), "t")  # the poll still answered
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            serving.refresh()
    finally:
        redis_client.execute_command("ACL", "DELUSER", "learner")
    assert not serving.enabled and serving.live.revision == first  # the last revision kept, the switch applied


def test_a_worker_reads_the_served_revision_once_and_then_only_polls_its_id(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t")
    first = store.publish("v1", np.array([-1.0, 3.0]), None, None, "planted", served=True)
    serving = LearnerServing(store, LearnerSettings(share=0.3), lambda: "v1")
    assert serving.refresh().revision == first
    serving.store = RevisionStore(_limited(redis_client, "-lrange", "-hget", "-hmget"), "t")  # no revision reads
    try:
        assert serving.refresh().revision == first  # the poll's ids say nothing changed: nothing else is read
        second = store.publish("v1", np.array([-1.0, 2.0]), None, first.id, "a newer revision")
        with pytest.raises(redis.exceptions.NoPermissionError):
            serving.refresh()  # a new id: the revision is read
    finally:
        redis_client.execute_command("ACL", "DELUSER", "learner")
    serving.store = store
    assert serving.refresh().revision == second


def test_a_base_the_learner_left_serves_no_revision_until_the_learner_starts_it_again(redis_client: redis.Redis) -> None:
    store = RevisionStore(redis_client, "t")
    served = {"base": "v1"}
    serving = LearnerServing(store, LearnerSettings(share=0.3), lambda: served["base"])
    store.publish("v1", np.array([-1.0, 3.0]), None, None, "learned on v1 and promoted", served=True)
    assert serving.refresh().revision is not None
    store.publish("v2", np.array([2.0, -1.0]), None, None, "v2 promoted: the learner started it")
    served["base"] = "v2"
    assert serving.refresh().revision is not None
    served["base"] = "v1"  # the registry goes back to v1, before the learner's next step
    assert serving.refresh().revision is None and serving.plan(_outside(), BUNDLE, "req1") is None

    again = store.publish("v1", HEAD[:-1], None, None, "the learner started v1 again")
    assert serving.refresh().revision == again


def _plant_pdgd_list(feedback: Feedback, redis_client: redis.Redis, revision_weights: np.ndarray, revision_id: str,
                     rid: str) -> None:
    x = np.random.default_rng(4).normal(size=(3, 3)) * 0.3
    s = x @ revision_weights
    ShownStore(redis_client, "t", ttl_s=600).write(
        [ShownList("u1", rid, revision_id, ("i0", "i1", "i2"), x, s, float(np.log(np.exp(s).sum())))])
    feedback.request(f"learner:{revision_id}", ["current"] * 3, [1], rid=rid)


def test_pdgd_learns_a_steps_clicked_lists_at_the_next_step_when_redis_refused_their_features(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, algorithm="pdgd", lr=0.2)
    process.step()
    first = process.store.current(versions[0])
    for rid in ("a", "b"):
        _plant_pdgd_list(feedback, redis_client, first.weights, first.id, rid)
    feedback.close_window()
    _refused(process, redis_client, "-get")
    assert process.summary.comparisons == 0 and process.store.current(versions[0]) == first
    process.step()
    assert (process.summary.comparisons, process.summary.rounds, process.summary.missing_features) == (2, 2, 0)
    assert process.store.current(versions[0]).parent == first.id


def test_pdgd_skips_a_malformed_shown_record_alone(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, algorithm="pdgd", lr=0.2)
    process.step()
    first = process.store.current(versions[0])
    for rid in ("a", "b", "c"):
        _plant_pdgd_list(feedback, redis_client, first.weights, first.id, rid)
    shown = ShownStore(redis_client, "t", ttl_s=600)
    redis_client.set(shown.key("u1", "b"), b"not a record")
    feedback.close_window()
    process.step()
    assert (process.summary.rounds, process.summary.missing_features) == (2, 1)
    assert process.store.current(versions[0]).parent == first.id


def test_after_a_rollback_the_rolled_back_revisions_lists_neither_move_nor_promote_w(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    stops: dict[str, str] = {}
    process, feedback, versions = _process(tmp_path, redis_client, lambda: dict(stops), algorithm="pdgd", sharpness=2.0,
                                           lr=0.5, gate_window=10, gate_min_comparisons=5)
    process.store.publish(versions[0], np.array([8.0, 2.0, 1.0]), None, None, "planted learned w", algorithm="pdgd")
    process.step()
    old = process.store.current(versions[0])  # served until the rollback reaches the workers
    for _ in range(5):  # the gate's comparisons of the old w against the base: the old w won each
        feedback.request(f"learner:{old.id}", ["current", "base", "base", "current"], [0])
    _plant_pdgd_list(feedback, redis_client, old.weights, old.id, "pl")  # a clicked list of the old w
    stops["online"] = "planted guardrail stop"
    feedback.close_window()
    process.step()  # the rollback, then the old revision's lists finished since
    rolled = process.store.current(versions[0])
    np.testing.assert_array_equal(rolled.weights, [6.0, 8.0, 0.0])  # 2 × the base's layer
    assert rolled.reason.startswith("rollback") and not rolled.served
    assert (process.summary.stale, process.summary.rounds, process.summary.gate_comparisons) == (6, 0, 0)


def test_a_failed_publish_leaves_dbgd_where_the_served_revision_is(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client)
    process.step()
    first = process.store.current(versions[0])
    feedback.request(f"learner:{first.id}", ["current", "explore"], [1])  # explore wins: the round's publish fails
    feedback.close_window()
    _refused(process, redis_client, "-evalsha", "-eval")
    assert process.store.current(versions[0]) == first  # the API still serves w and w~ of `first`
    np.testing.assert_array_equal(process.learner.weights, first.weights)
    np.testing.assert_allclose(process.learner.explore, first.explore_weights, rtol=1e-9)  # Redis's JSON keeps 14 digits

    feedback.request(f"learner:{first.id}", ["current", "explore"], [1])  # `first`'s w~ wins again
    feedback.close_window()
    process.step()
    second = process.store.current(versions[0])
    np.testing.assert_allclose(second.weights, _toward(first.weights, first.explore_weights, process.settings.eta),
                               rtol=1e-9)
    assert second.parent == first.id  # the failed round, learned again; the request after it is stale
    assert (process.summary.comparisons, process.summary.moves, process.summary.stale) == (1, 1, 1)


def test_a_rollback_whose_publish_failed_is_published_at_the_next_step(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, feedback, versions = _process(tmp_path, redis_client, comparisons=50)
    bad = process.store.publish(versions[0], np.array([-3.0, -4.0, 0.0]), np.array([-3.1, -4.0, 0.1]), None, "planted bad")
    process.step()
    resumed = process.store.current(versions[0])
    for _ in range(10):  # the base team's items clicked, the current team's not: 10 decided losses
        feedback.request(f"learner:{resumed.id}", ["current", "base", "explore"], [1])
    feedback.close_window()
    _refused(process, redis_client, "-evalsha", "-eval")
    np.testing.assert_array_equal(process.learner.weights, bad.weights)  # as served: not rolled back yet
    process.step()
    rolled = process.store.current(versions[0])
    np.testing.assert_array_equal(rolled.weights, [3.0, 4.0, 0.0])
    assert rolled.parent == resumed.id and rolled.reason.startswith("rollback:") and process.summary.rollbacks == 1


def test_each_restart_draws_other_perturbations(tmp_path: Path, redis_client: redis.Redis) -> None:
    process, _, versions = _process(tmp_path, redis_client)
    process.step()
    perturbations = []
    for _ in range(2):
        restarted = _restarted(process, process.settings)  # seed 0, as `recsys learn online` by default
        restarted.step()
        resumed = restarted.store.current(versions[0])
        perturbations.append(resumed.explore_weights - resumed.weights)
    assert not np.allclose(*perturbations)
