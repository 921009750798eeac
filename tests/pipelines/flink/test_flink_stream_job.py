"""The real speed-layer job on a local Flink mini-cluster, against the real test Redis.

Two jobs read the same log: one is SIGKILLed after a checkpoint while events are flowing, events
are appended while it is down, and it restarts from the retained checkpoint; the other runs
uninterrupted. Both must end with exactly the attributed counts of the rule's oracle
(`reference_counts`): no double counts (replay markers), no gaps (checkpointed source and keyed
state). The log also holds a malformed line, a client retry (duplicate ids), an event dated far in
the future (skipped before the watermark), outcomes without a request id and with an unknown
one (unattributed, counted), an impression within the allowed lateness (counted) and an outcome
beyond it (counted as late, left to the batch layer), as docs/speed_layer.md documents.

A job started on hours of log written before it must read them oldest hour first: no outcome late.
"""

from __future__ import annotations

import random
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import pytest
import redis

from feature_store.attribution import Dimension, Impression, Outcome, attribute, is_outcome, reference_counts
from feature_store.attribution_store import RedisAttributionStore
from feature_store.event_log import LocalEventLog, partition_of
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.schemas import Event
from feature_store.settings import EventLogSettings, Settings
from pipelines.flink.join import TIMER_GRID_MS
from pipelines.flink.runner import StreamJob

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

WINDOW = timedelta(minutes=5)
LATENESS = timedelta(minutes=10)
OUT_OF_ORDERNESS = timedelta(seconds=1)
#: How far past the newest event plus the lateness a tick's time must be so that its watermark
#: passes every decision: the join decides on a grid (`join.timer_at`), up to one step later than
#: the exact time. 10 s (one step) left the last outcome undecided when the rounding took 9-10 s.
TICK_MARGIN = OUT_OF_ORDERNESS + timedelta(milliseconds=2 * TIMER_GRID_MS)


def make_events(first: int, count: int, start: datetime) -> list[Event]:
    """Requests of 3 slots, then clicks and purchases on them (most with the request id)."""
    events = []
    for n in range(first, first + count):
        user, request, at = f"u{n % 5}", f"r{n // 4}", start + timedelta(seconds=n)
        slot = n % 4
        if slot < 3:
            events.append(Event.model_validate({
                "event_id": f"e{n}", "user_id": user, "item_id": f"i{(n // 4 + slot) % 12}", "type": "impression",
                "ts": at.isoformat(), "context": {"request_id": request, "position": slot,
                                                  "policy": "ranker-v1", "arm": "AB"[n // 4 % 2]},
            }))
            continue
        kind = ["click", "click", "purchase", "rating", "click"][n // 4 % 5]
        context = [{"request_id": request}, {}, {"request_id": "no-such-request"}][n // 4 % 3]
        events.append(Event.model_validate({
            "event_id": f"e{n}", "user_id": f"u{(n - 2) % 5}", "item_id": f"i{(n // 4 + n // 8 % 3) % 12}",
            "type": kind, "value": 4.0 if kind == "rating" else None, "ts": at.isoformat(), "context": context,
        }))
    return events


def at(event_id: str, user: str, item: str, kind: str, ts: datetime, **context: object) -> Event:
    return Event.model_validate({"event_id": event_id, "user_id": user, "item_id": item, "type": kind,
                                 "ts": ts.isoformat(), "context": context})


def counts(url: str, prefix: str) -> dict[tuple[str, str, int, str], int]:
    store = RedisAttributionStore(ConnectionSpec(url, key_prefix=prefix), 2 * 86400, 900)
    rows = {(r.dimension, r.key, r.bucket_ms, r.measure): r.value for d in Dimension.ALL for r in store.scan_counts(d)}
    store.close()
    return rows


def impressions_recorded(client: redis.Redis, prefix: str, events: list[Event]) -> bool:
    layout, ids = KeyLayout(prefix), [e.event_id for e in events if e.type == "impression"]
    return client.exists(*(layout.attribution_marker(i) for i in ids)) == len(ids)


def wait_for(condition: Callable[[], bool], what: str, jobs: list[StreamJob], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for job in jobs:
            assert job.running, f"stream job exited while waiting for {what}; log: {job.log_file.read_text()[-3000:]}"
        time.sleep(0.2)
    tails = "\n".join(job.log_file.read_text()[-2000:] for job in jobs)
    raise AssertionError(f"timed out waiting for {what}; log tails: {tails}")


def wait_for_counts(url: str, prefix: str, expected: dict[tuple[str, str, int, str], int], job: StreamJob) -> None:
    try:
        wait_for(lambda: counts(url, prefix) == expected, f"the counts under {prefix}", [job])
    except AssertionError as exc:
        got = counts(url, prefix)
        differences = sorted((k, got.get(k), expected.get(k)) for k in got.keys() | expected.keys() if got.get(k) != expected.get(k))
        raise AssertionError(f"{len(differences)} counts differ (key, got, expected): {differences[:20]}") from exc


def test_attributed_counts_survive_kill_and_restart(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    url, prefix = settings.redis.url or "", settings.redis.key_prefix
    # Half past an hour, so the events and the late ones below share one hour partition.
    start = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0) - timedelta(hours=2)
    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=0.1, fsync=False))
    first, second, third = make_events(0, 120, start), make_events(120, 80, start), make_events(200, 80, start)
    far_future = at("far-future", "u2", "i11", "impression", datetime(9999, 12, 31, tzinfo=timezone.utc))
    log.append(first + first[:5] + [far_future])  # with a client retry
    bad_file = settings.event_log_dir / partition_of(start) / "part-manual-0001.jsonl"
    stray = at("stray", "u1", "i1", "impression", start, request_id="r-stray", position=4)
    bad_file.write_text('{"event_id": "broken"\n' + stray.to_json_line())
    log.roll_all()
    env = {
        "RECSYS_REDIS__URL": url,
        "RECSYS_FLINK__CHECKPOINT_INTERVAL_MS": "500",
        "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(int(LATENESS.total_seconds() * 1000)),
        "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": str(int(OUT_OF_ORDERNESS.total_seconds() * 1000)),
        "RECSYS_ATTRIBUTION__WINDOW_S": str(WINDOW.total_seconds()),
    }
    job = StreamJob(settings.state_dir, env=env, checkpoint_dir=settings.flink_checkpoint_dir).start()
    steady = StreamJob(settings.state_dir, log_file=tmp_path / "steady.log", env={
        **env, "RECSYS_REDIS__KEY_PREFIX": "steady", "RECSYS_FLINK__CHECKPOINT_DIR": str(tmp_path / "steady-chk")}).start()
    try:
        wait_for(lambda: impressions_recorded(redis_client, prefix, first + [stray]), "the first events", [job, steady])
        job.wait_for_checkpoint(newer_than=time.time())
        log.append(second)
        log.roll_all()
        time.sleep(0.3)  # let part of it through, so the restart replays events applied after the checkpoint
        job.kill()
        log.append(third)  # appended while the job is down: must not be a gap
        log.roll_all()
        job.start(resume=True)
        for one, name in ((job, prefix), (steady, "steady")):  # so the watermark is past `start`
            wait_for(lambda: impressions_recorded(redis_client, name, second + third), "the restart", [one])
        newest = third[-1].ts
        within = at("late-ok", "u1", "i1", "impression", newest - LATENESS / 2, request_id="r-late", position=0)
        too_late = at("late-no", "u1", "i1", "click", newest - 2 * LATENESS, request_id="r-late")
        log.append([too_late, within])  # one file, too-late line first: once `within` is counted, both were seen
        log.roll_all()
        for one, name in ((job, prefix), (steady, "steady")):
            wait_for(lambda: impressions_recorded(redis_client, name, [within]), "the late events", [one])
        # Moves the watermark past every outcome's time plus the allowed lateness, when outcomes
        # without a request id (or whose impression has not come) are decided.
        tick = at("tick", "u9", "i9", "impression", newest + LATENESS + TICK_MARGIN)
        log.append([tick])
        log.roll_all()
        everything = first + [stray] + second + third + [tick, within]
        expected = reference_counts(everything, int(WINDOW.total_seconds() * 1000))
        wait_for_counts(url, prefix, expected, job)
        wait_for_counts(url, "steady", expected, steady)
    finally:
        job.stop()
        steady.stop()
        log.close()

    assert sum(n for key, n in expected.items() if key[3] == "click") >= 20
    impressions = [Impression.of(e) for e in everything if e.type == "impression"]
    unattributed = {e.event_id for e in everything if is_outcome(e)
                    and attribute(Outcome.of(e), impressions, int(WINDOW.total_seconds() * 1000)) is None}
    store = RedisAttributionStore(ConnectionSpec(url, key_prefix=prefix), 2 * 86400, 900)
    misses = store.misses(0, 2**62)
    store.close()
    assert sum(n for name, n in misses.items() if name.startswith("unattributed:")) == len(unattributed) > 0
    assert misses.get("late:click") == 1
    assert not redis_client.exists(KeyLayout(prefix).attribution_marker("far-future"))
    assert all(redis_client.pttl(key) > 0 for key in redis_client.scan_iter(f"{prefix}:a:*")), "a key without a TTL"


def backlog_events(start: datetime, hours: int, seed: int) -> list[Event]:
    """A request of 3 slots every 30 s over `hours`; clicks and purchases 10-360 s after their
    impression (most within WINDOW, some in the next hour's partition), most with the request id,
    some without one or with an unknown one."""
    rng, events = random.Random(seed), []
    for n in range(hours * 120):
        shown, user = start + timedelta(seconds=30 * n), f"u{rng.randrange(5)}"
        for slot in range(3):
            item = f"i{rng.randrange(12)}"
            events.append(at(f"b{n}-{slot}", user, item, "impression", shown, request_id=f"rb{n}", position=slot))
            if rng.random() < 0.3:
                context = rng.choice([{"request_id": f"rb{n}"}] * 7 + [{}] * 2 + [{"request_id": "unknown"}])
                events.append(at(f"b{n}-{slot}-o", user, item, rng.choice(["click", "click", "purchase"]),
                                 shown + timedelta(seconds=rng.randrange(10, 360)), **context))
    return sorted(events, key=lambda e: e.ts)


def test_a_backlog_of_several_hours_is_read_without_late_outcomes(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Issue 14: a job started on hours of log written before it (first start, restart without
    --resume, after an outage) reads the hour files in event-time order, so no outcome of an
    earlier hour is read after a later hour moved the watermark past it: the counts equal the
    rule's, and no outcome is counted late (the allowed lateness here is shorter than an hour)."""
    url, prefix = settings.redis.url or "", settings.redis.key_prefix
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=6)
    events = backlog_events(start, 4, seed=14)
    tick = at("tick", "u9", "i9", "impression", events[-1].ts + LATENESS + TICK_MARGIN)
    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=3600, fsync=False))
    for first in range(0, len(events), 40):  # ~50 files over 5-6 hour partitions
        log.append(events[first:first + 40])
        log.roll_all()
    log.append([tick])
    log.close()
    impressions = [Impression.of(e) for e in events if e.type == "impression"]
    window_ms = int(WINDOW.total_seconds() * 1000)
    unattributed = sum(is_outcome(e) and attribute(Outcome.of(e), impressions, window_ms) is None for e in events)
    expected = reference_counts(events + [tick], window_ms)
    assert len({partition_of(e.ts) for e in events}) >= 4 and unattributed > 0
    assert sum(n for key, n in expected.items() if key[3] == "click") >= 50
    job = StreamJob(settings.state_dir, log_file=tmp_path / "backlog.log", env={
        "RECSYS_REDIS__URL": url,
        "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(int(LATENESS.total_seconds() * 1000)),
        "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": str(int(OUT_OF_ORDERNESS.total_seconds() * 1000)),
        "RECSYS_ATTRIBUTION__WINDOW_S": str(WINDOW.total_seconds()),
    }).start()
    store = RedisAttributionStore(ConnectionSpec(url, key_prefix=prefix), 2 * 86400, 900)

    def unattributed_and_late() -> tuple[int, dict[str, int]]:
        misses = store.misses(0, 2**62)
        return (sum(n for name, n in misses.items() if name.startswith("unattributed:")),
                {name: n for name, n in misses.items() if name.startswith("late:")})
    try:
        wait_for(lambda: impressions_recorded(redis_client, prefix, [tick]), "the tick", [job])
        # Every outcome decided once the tick's watermark passed them: credited, unattributed or late.
        wait_for(lambda: unattributed_and_late() == (unattributed, {}) and counts(url, prefix) == expected,
                 "the rule's counts", [job], timeout_s=60)
    except AssertionError as exc:
        got = counts(url, prefix)
        differences = sum(got.get(k) != expected.get(k) for k in got.keys() | expected.keys())
        raise AssertionError(f"(unattributed, late) = {unattributed_and_late()}, expected ({unattributed}, {{}}); "
                             f"{differences} counts differ") from exc
    finally:
        job.stop()
        store.close()


def misses(url: str, prefix: str) -> dict[str, int]:
    store = RedisAttributionStore(ConnectionSpec(url, key_prefix=prefix), 2 * 86400, 900)
    found = store.misses(0, 2**62)
    store.close()
    return found


def checkpoint_from_now(job: StreamJob) -> Path:
    """A checkpoint whose barrier left the source after now: the second to complete from now (the
    first may have started before)."""
    first = job.wait_for_checkpoint(newer_than=time.time())
    return job.wait_for_checkpoint(newer_than=(first / "_metadata").stat().st_mtime)


def test_a_restart_decides_no_event_again(settings: Settings, redis_client: redis.Redis, tmp_path: Path) -> None:
    """After a restore Flink's watermark starts again from nothing, and the job reads what it read
    after its checkpoint again, in path order: it decided events again, otherwise (a click without
    request id credited to an impression that had come too late, so one click credited twice; a
    click counted late, then credited; an impression dropped, then counted). Now each event is
    decided once in the store, and the checkpoint keeps the watermark. Restarts: 1. from a
    checkpoint before a later hour decided a click and a file of too-late events came (read again,
    that file comes first: in time for the restored watermark); 2. after too-late events were
    appended while the job was down; 3. without --resume, reading the whole log from nothing. The
    counts stay those of the run before: the rule's over the events that were not too late."""
    url, prefix = settings.redis.url or "", settings.redis.key_prefix
    t0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=0.1, fsync=False))
    shown = [at("I1", "u1", "i1", "impression", t0 + timedelta(minutes=1), position=0),
             at("R", "u2", "i2", "impression", t0, request_id="rX", position=1)]
    click = at("O", "u1", "i1", "click", t0 + timedelta(minutes=3))  # no request id: decided by the watermark
    later_hour = at("N", "u9", "i9", "impression", t0 + timedelta(hours=1, minutes=5))
    too_late = [at("I2", "u1", "i1", "impression", t0 + timedelta(minutes=2), position=3),  # would win O
                at("L", "u2", "i2", "click", t0 + timedelta(minutes=1), request_id="rX"), click]  # click: resent
    while_down = [at("J", "u3", "i3", "impression", t0 + timedelta(minutes=2), request_id="rJ", position=0),
                  at("K", "u3", "i3", "click", t0 + timedelta(minutes=2, seconds=1), request_id="rJ")]
    ends = [at(f"end{n}", "u9", "i9", "impression", t0 + timedelta(hours=1, minutes=5 + n)) for n in range(1, 5)]
    accepted = [*shown, click, later_hour]
    layout = KeyLayout(prefix)
    job = StreamJob(settings.state_dir, env={
        "RECSYS_REDIS__URL": url,
        "RECSYS_FLINK__CHECKPOINT_INTERVAL_MS": "1000",
        "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(int(LATENESS.total_seconds() * 1000)),
        "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": str(int(OUT_OF_ORDERNESS.total_seconds() * 1000)),
        "RECSYS_ATTRIBUTION__WINDOW_S": str(WINDOW.total_seconds()),
    }, checkpoint_dir=settings.flink_checkpoint_dir)

    def append(events: list[Event]) -> None:
        log.append(events)
        log.roll_all()

    def settled(n: int, late_clicks: int, what: str) -> None:
        """Once `ends[n]` is recorded: the counts of the events accepted and ends[:n + 1]."""
        wait_for(lambda: impressions_recorded(redis_client, prefix, [ends[n]]), what, [job])
        window_ms = int(WINDOW.total_seconds() * 1000)
        assert counts(url, prefix) == reference_counts(accepted + ends[:n + 1], window_ms), what
        assert misses(url, prefix) == {"late:click": late_clicks}, what

    append([*shown, click])
    job.start()
    try:
        wait_for(lambda: impressions_recorded(redis_client, prefix, shown), "the first events", [job])
        before_the_later_hour = Path(shutil.copytree(checkpoint_from_now(job), tmp_path / "chk-saved"))
        append([later_hour])
        wait_for(lambda: bool(redis_client.exists(layout.attribution_credit("I1", "click"))), "O credited", [job])
        append(too_late)
        append(ends[:1])
        settled(0, 1, "the too-late events")  # L is late; the resent click, credited before, is not

        job.kill()
        append(ends[1:2])
        job.start(from_checkpoint=before_the_later_hour)
        settled(1, 1, "a restart that reads the too-late file again")

        checkpoint_from_now(job)
        job.kill()
        append(while_down)
        append(ends[2:3])
        job.start(resume=True)
        settled(2, 2, "a restart that reads too-late events appended while it was down")
        assert redis_client.exists(layout.attribution_marker("J"))  # dropped, and marked so

        job.stop()
        job.start()
        append(ends[3:])
        settled(3, 2, "a start without --resume, from nothing")
    finally:
        job.stop()
        log.close()
