"""The real stream job updates LinUCB's statistics from attributed outcomes (issue 19 item 1).

Planted: contexts saved for two users as the API saves them (one user with an older and a newer
context), impressions served by LinUCB and by another policy, clicks on some of them. Once the
watermark passes every impression's window plus the allowed lateness, each item's (A⁻¹, b) must be
(λI + Σ x xᵀ)⁻¹ and Σ r x over its LinUCB impressions only, x being the user's newest context at or
before the impression, r = 1 for a clicked one: computed here independently of the job.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import redis

from feature_store.event_log import LocalEventLog
from feature_store.linucb_store import RedisLinUcbStore, context_dim
from feature_store.redis_client import ConnectionSpec
from feature_store.schemas import Event
from feature_store.settings import EventLogSettings, Settings
from pipelines.flink.runner import StreamJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

WINDOW = timedelta(minutes=5)
LATENESS = timedelta(minutes=10)
LINUCB, OTHER = "ranker=popularity;explore=linucb(alpha=1)", "ranker=popularity;explore=greedy"
RIDGE = 2.0


def _event(event_id: str, user: str, item: str, kind: str, ts: datetime, **context: object) -> Event:
    return Event.model_validate({"event_id": event_id, "user_id": user, "item_id": item, "type": kind,
                                 "ts": ts.isoformat(), "context": context})


def test_the_stream_job_adds_finalised_linucb_impressions_to_the_items_statistics(
    settings: Settings, redis_client: redis.Redis
) -> None:
    url, prefix, d = settings.redis.url or "", settings.redis.key_prefix, context_dim()
    # The tick falls in the next hour's partition of the event log: the job must read that file
    # after the impressions' (path order, pipelines/flink/ordered_splits.py), or they are too late.
    start = datetime.now(timezone.utc).replace(minute=50, second=0, microsecond=0) - timedelta(hours=2)
    ms = lambda at: int(at.timestamp() * 1000)  # noqa: E731
    rng = np.random.default_rng(7)
    store = RedisLinUcbStore(ConnectionSpec(url, key_prefix=prefix), d, RIDGE)
    contexts = {"u1": [(start, rng.normal(size=d)), (start + timedelta(seconds=30), rng.normal(size=d))],
                "u2": [(start, rng.normal(size=d))]}
    for user, saved in contexts.items():
        for at, x in saved:
            store.save_context(user, ms(at), x, ttl_ms=10 * 3_600_000)

    # (user, item, seconds after start, policy, clicked)
    shown = [("u1", "a", 10, LINUCB, True), ("u1", "b", 10, LINUCB, False), ("u1", "a", 40, LINUCB, False),
             ("u2", "a", 20, LINUCB, True), ("u2", "b", 20, OTHER, True), ("u3", "a", 20, LINUCB, True)]
    events = []
    for n, (user, item, after, policy, clicked) in enumerate(shown):
        at = start + timedelta(seconds=after)
        events.append(_event(f"imp{n}", user, item, "impression", at, request_id=f"r{n}", position=0, policy=policy))
        if clicked:
            events.append(_event(f"click{n}", user, item, "click", at + timedelta(seconds=5), request_id=f"r{n}"))
    events.append(_event("tick", "u9", "z", "impression", start + WINDOW + LATENESS + timedelta(minutes=2)))

    expected = {item: (RIDGE * np.eye(d), np.zeros(d)) for item in ("a", "b")}
    for user, item, after, policy, clicked in shown:
        usable = [x for at, x in contexts.get(user, []) if at <= start + timedelta(seconds=after)]
        if policy == LINUCB and usable:
            A, b = expected[item]
            expected[item] = (A + np.outer(usable[-1], usable[-1]), b + float(clicked) * usable[-1])

    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=0.1, fsync=False))
    log.append(events)
    log.roll_all()
    job = StreamJob(settings.state_dir, env={
        "RECSYS_REDIS__URL": url, "RECSYS_EXPLORE__LINUCB_RIDGE": str(RIDGE),
        "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(int(LATENESS.total_seconds() * 1000)),
        "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": "1000", "RECSYS_ATTRIBUTION__WINDOW_S": str(WINDOW.total_seconds()),
    }).start()

    def learned() -> bool:
        A_inv, b = store.read(["a", "b"])
        return all(np.allclose(A_inv[n], np.linalg.inv(expected[item][0])) and np.allclose(b[n], expected[item][1])
                   for n, item in enumerate(("a", "b")))

    try:
        deadline = time.monotonic() + 240
        while not learned() and time.monotonic() < deadline:
            assert job.running, job.log_file.read_text()[-3000:]
            time.sleep(0.3)
        assert learned(), f"statistics not as expected; job log: {job.log_file.read_text()[-4000:]}"
    finally:
        job.stop()
        log.close()
    A_inv, b = store.read(["a", "b"])
    store.close()
    for n, item in enumerate(("a", "b")):
        np.testing.assert_allclose(A_inv[n], np.linalg.inv(expected[item][0]), err_msg=item)
        np.testing.assert_allclose(b[n], expected[item][1], err_msg=item)
    assert np.count_nonzero(b[0]) and not np.allclose(A_inv[1], np.eye(d) / RIDGE)  # both items learned something
