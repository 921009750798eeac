"""The real speed-layer job on a local Flink mini-cluster, against the real test Redis.

One job run covers: events appended to the log show up as live features; a malformed line, a
duplicate event and one dated in the far future lose nothing else (the last is not applied); SIGKILL after a checkpoint, events appended while it is down,
restart from the retained checkpoint, and the live features equal those of a writer that never
stopped (no double counts, no gaps); an event within the allowed lateness is applied, one beyond
it is skipped (and logged), as docs/speed_layer.md documents.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Callable

import pytest
import redis

from feature_store.catalog import Catalog
from feature_store.definitions import Entity
from feature_store.event_log import LocalEventLog, partition_of
from feature_store.live_writes import LiveWriter
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.schemas import Event, Item
from feature_store.settings import EventLogSettings, Settings
from pipelines.flink.runner import StreamJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

LATENESS = timedelta(minutes=10)
OUT_OF_ORDERNESS = timedelta(seconds=1)
CATEGORIES = {f"i{n}": [["Drama"], ["Comedy", "Drama"], ["Action"]][n % 3] for n in range(12)}


def make_events(first: int, count: int, start: datetime) -> list[Event]:
    kinds = ["impression", "impression", "click", "rating", "purchase"]
    return [
        Event(event_id=f"e{n}", user_id=f"u{n % 5}", item_id=f"i{(n * 7) % 12}", type=kinds[n % 5],
              value=float(n % 5 + 1) if kinds[n % 5] == "rating" else None, ts=start + timedelta(seconds=n))
        for n in range(first, first + count)
    ]


def live_snapshot(client: redis.Redis, prefix: str) -> dict[str, object]:
    """Every live key (replay markers aside) with its value, prefix stripped."""
    snapshot: dict[str, object] = {}
    for key in client.scan_iter(f"{prefix}:s:*"):
        name = key.decode()
        if name.startswith(f"{prefix}:s:seen:"):
            continue
        kind = client.type(key)
        value = client.hgetall(key) if kind == b"hash" else client.zrange(key, 0, -1, withscores=True)
        snapshot[name[len(prefix):]] = value
    return snapshot


def markers(client: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(f"{prefix}:s:seen:*"))


def wait_for(condition: Callable[[], bool], what: str, job: StreamJob, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        assert job.running, f"stream job exited while waiting for {what}; log: {job.log_file.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; log tail: {job.log_file.read_text()[-3000:]}")


def test_live_features_survive_kill_and_restart(settings: Settings, redis_client: redis.Redis) -> None:
    prefix = settings.redis.key_prefix
    Catalog(settings.catalog_dir).upsert_items(Item(item_id=i, categories=c) for i, c in CATEGORIES.items())
    # Half past an hour, so the late events below share the newest events' hour partition (one file).
    start = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0) - timedelta(hours=2)
    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=0.1, fsync=False))
    first, second, third = make_events(0, 60, start), make_events(60, 40, start), make_events(100, 40, start)
    # A client retry (the same events twice), and an event from the far future (logged before the
    # API checked the clock skew): it must neither be applied nor hold the event-time watermark.
    far_future = Event(event_id="far-future", user_id="u2", item_id="i11", type="click",
                       ts=datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc))
    log.append(first + first[:3] + [far_future])
    bad_file = settings.event_log_dir / partition_of(start) / "part-manual-0001.jsonl"
    bad_file.write_text('{"event_id": "broken"\n' + make_events(500, 1, start)[0].to_json_line())
    log.roll_all()
    env = {
        "RECSYS_REDIS__URL": settings.redis.url or "",
        "RECSYS_FLINK__CHECKPOINT_INTERVAL_MS": "500",
        "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(int(LATENESS.total_seconds() * 1000)),
        "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": str(int(OUT_OF_ORDERNESS.total_seconds() * 1000)),
    }
    job = StreamJob(settings.state_dir, env=env, checkpoint_dir=settings.flink_checkpoint_dir).start()
    try:
        wait_for(lambda: markers(redis_client, prefix) == 61, "the first events", job)
        layout = KeyLayout(prefix)
        assert redis_client.zrange(layout.live_zset(Entity.USER, "u2", "recent_items"), 0, -1), "no behaviour sequence written"
        job.wait_for_checkpoint(newer_than=time.time())
        log.append(second)
        log.roll_all()
        time.sleep(0.3)  # let part of it through, so the restart replays events applied after the checkpoint
        job.kill()
        log.append(third)  # appended while the job is down: must not be a gap
        log.roll_all()
        job.start(resume=True)
        wait_for(lambda: markers(redis_client, prefix) == 141, "every event after the restart", job)
        newest = third[-1].ts
        within = Event(event_id="late-ok", user_id="u1", item_id="i1", type="click", ts=newest - LATENESS / 2)
        too_late = Event(event_id="late-no", user_id="u1", item_id="i2", type="click", ts=newest - 2 * LATENESS)
        log.append([too_late, within])  # one file, too-late line first: once `within` is applied, both were seen
        log.roll_all()
        wait_for(lambda: markers(redis_client, prefix) == 142, "the late event within lateness", job)
    finally:
        job.stop()
        log.close()

    assert redis_client.exists(f"{prefix}:s:seen:late-ok") and not redis_client.exists(f"{prefix}:s:seen:late-no")
    assert not redis_client.exists(KeyLayout(prefix).seen_marker(far_future.event_id))
    reference = LiveWriter(ConnectionSpec(settings.redis.url or "", key_prefix="ref"), settings.feature_store.dedup_ttl_s,
                           settings.events.max_future_skew_s)
    reference.write(first + make_events(500, 1, start) + second + third + [within], item_categories=CATEGORIES)
    reference.close()
    streamed, expected = live_snapshot(redis_client, prefix), live_snapshot(redis_client, "ref")
    assert streamed == expected
    clicks = sum(1 for e in first + second + third + [within] if e.type == "click")
    item_hashes = [v for k, v in streamed.items() if k.startswith(":s:{item:") and isinstance(v, dict)]
    assert sum(int(n) for h in item_hashes for f, n in h.items() if f.startswith(b"clicks_1h:")) <= clicks
    assert sum(int(n) for h in item_hashes for f, n in h.items() if f.startswith(b"clicks_24h:")) == clicks
