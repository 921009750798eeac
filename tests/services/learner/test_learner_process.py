"""The learner process on a real event log, a real Redis and a real registry: DBGD steps from planted
interleaved feedback, stale revisions' feedback is skipped, the kill switch stops updates, a planted
bad revision is rolled back to the base with the reason, and a promotion restarts from the new base.

The bases' output layers are planted (`HEADS`); reading them from a real DIN SavedModel is tested in
`test_learner_serving.py`."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import redis

from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event
from feature_store.settings import LearnerSettings
from models.online_revisions import RevisionStore
from models.registry import ModelRegistry
from services.learner.feedback import ComparisonReader
from services.learner.process import LearnerProcess
from tests.services.experiments.conftest import publish_dummy

WINDOW = timedelta(minutes=30)
T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)


class Feedback:
    """Writes interleaved requests (slots with teams, clicked slots) to a real event log."""

    def __init__(self, root: Path) -> None:
        self.log = LocalEventLog(root)
        self.requests = 0

    def request(self, arm: str, teams: list[str], clicked: list[int]) -> None:
        self.requests += 1
        served = T0 + timedelta(seconds=self.requests)
        rid = f"req{self.requests}"
        events = [Event(event_id=f"imp-{rid}-{p}", user_id="u1", item_id=f"i{p}", type="impression", ts=served,
                        context={"request_id": rid, "position": p, "experiment": "learner", "arm": arm, "team": team})
                  for p, team in enumerate(teams)]
        events += [Event(event_id=f"click-{rid}-{p}", user_id="u1", item_id=f"i{p}", type="click",
                         ts=served + timedelta(seconds=0.5), context={"request_id": rid}) for p in clicked]
        self.log.append(events)

    def close_window(self) -> None:
        """An event past every request's window (the watermark finishes them); files made visible."""
        self.log.append([Event(event_id=f"tick{self.requests}", user_id="other", item_id="x", type="impression",
                               ts=T0 + timedelta(seconds=self.requests) + WINDOW + timedelta(seconds=1))])
        self.log.roll_all()


def _process(tmp_path: Path, client: redis.Redis, **settings: object) -> tuple[LearnerProcess, Feedback, list[str]]:
    registry = ModelRegistry(tmp_path / "registry")
    versions = [publish_dummy(registry, tmp_path / "artifacts", name) for name in ("v1", "v2")]
    registry.set_current("ranker", versions[0])
    heads = {versions[0]: np.array([3.0, 4.0, 0.0, 0.5]), versions[1]: np.array([1.0, -1.0, 2.0, 0.1])}
    learner_settings = LearnerSettings(**{"comparisons": 1, "rollback_window": 10, **settings})
    store = RevisionStore(client, "t")
    feedback = Feedback(tmp_path / "events")
    process = LearnerProcess(learner_settings, store, registry, ComparisonReader(tmp_path / "events", WINDOW),
                             heads.__getitem__, seed=3)
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
    expected = first.weights + 0.05 * (first.explore_weights - first.weights)  # DRN: w + η (w̃ − w)
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
    feedback.close_window()
    assert len(ComparisonReader(tmp_path / "events", WINDOW).poll()) == 1
    assert ComparisonReader(tmp_path / "events", WINDOW, since=T0 + timedelta(hours=2)).poll() == []
