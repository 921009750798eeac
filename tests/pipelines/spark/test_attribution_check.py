"""The Spark-vs-speed-layer attribution check on a real Redis: the speed layer's counts are written
through the attribution store's write path (`record_impression`, `record_credit`) by the rule of
`feature_store.attribution`, Spark's by the attribution job on the same log. Equal counts pass; a
planted extra click fails the check, which names each of its four differences and ignores a
difference in a bucket that is not closed yet."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
import redis
from typer.testing import CliRunner

from feature_store.attribution import Dimension, Impression, Outcome, attribute, is_outcome, reference_counts
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_server import EmbeddedRedis
from feature_store.schemas import Event, EventContext, EventType
from feature_store.settings import Settings
from pipelines.flink.join import AttributionJoin, KeyMaps
from pipelines.spark.attribution_check import (
    Difference, RedisCounts, check_attribution, closed_until_ms, differences, stream_watermark_ms,
)  # fmt: skip
from pipelines.spark.jobs import attribution, compact
from services.cli import app
from tests.pipelines.spark.conftest import write_events
from tests.pipelines.spark.planted_attribution import WINDOW_S, planted_log

HOUR_MS = 3_600_000
# Recent enough for the speed layer to accept (it drops records older than its replay markers).
START = datetime.now(timezone.utc).replace(minute=20, second=0, microsecond=0) - timedelta(hours=8)
# The newest event, an impression (other events do not move the stream's watermark): every bucket
# of the planted log is closed (bucket end + window + allowed lateness <= watermark).
TAIL = START + timedelta(hours=7)


@pytest.fixture(scope="module")
def batch(spark: object, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[Event]]:
    """The planted log plus a late impression (`TAIL`, of its own policy), compacted and attributed by Spark."""
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("check"), redis={"url": redis_server.url},
        spark={"master": "local[2]", "shuffle_partitions": 2}, attribution={"window_s": WINDOW_S},
    )  # fmt: skip
    events = planted_log(START) + [
        Event(event_id="tail", user_id="u9", item_id="i9", type=EventType.IMPRESSION, ts=TAIL,
              context=EventContext(policy="tail"))
    ]
    write_events(settings, events)
    compact.run(spark, settings)  # type: ignore[arg-type]
    attribution.run(spark, settings)  # type: ignore[arg-type]
    return settings, events


def _speed_layer(settings: Settings, events: list[Event]) -> list[Impression]:
    """Write what the stream job writes, by the rule, through the store; returns the impressions."""
    store = RedisOnlineStore.from_settings(settings).attribution()
    impressions = [Impression.of(e) for e in events if e.type == EventType.IMPRESSION]
    for impression in impressions:
        store.record_impression(impression)
    for event in events:
        if is_outcome(event):
            target = attribute(Outcome.of(event), impressions, WINDOW_S * 1000)
            if target is not None:
                store.record_credit(target, Outcome.of(event))
    store.close()
    return impressions


def test_a_bucket_closes_at_the_watermark_that_decides_its_last_outcome() -> None:
    """The last outcome a bucket may get (no request id, at its last ms + the window) is decided by
    the stream's join at some watermark: the bucket is closed from that watermark on, not before."""
    window, lateness = 1_800_000, 3_600_000
    last_shown = 10 * HOUR_MS - 1
    join, state = AttributionJoin(window, lateness), KeyMaps.in_memory()
    join.impression(Impression("i", "u", "x", last_shown, None, 0, None, None, None), state)
    decided_at = join.outcome(Outcome("o", "u", "x", "click", last_shown + window, None), state)
    assert decided_at is not None
    join.drain()  # the impression's count
    join.fire(decided_at - 1, state)
    assert not join.drain() and closed_until_ms(decided_at - 1, window, lateness) == 9 * HOUR_MS
    join.fire(decided_at, state)
    assert join.drain() and closed_until_ms(decided_at, window, lateness) == 10 * HOUR_MS
    # Flink's bounded out-of-orderness watermark: the newest time seen - out-of-orderness - 1 ms.
    assert stream_watermark_ms(10 * HOUR_MS + 5_000, 5_000) == 10 * HOUR_MS - 1


def test_equal_counts_pass(spark: object, batch: tuple[Settings, list[Event]], redis_client: redis.Redis) -> None:
    settings, events = batch
    _speed_layer(settings, events)

    report = check_attribution(spark, settings, RedisCounts(settings, settings.redis.url or ""))  # type: ignore[arg-type]

    assert report.ok, list(differences(spark, report))  # type: ignore[arg-type]
    assert report.compared == len(reference_counts(events[:-1], WINDOW_S * 1000)), "every planted bucket is compared"


def test_a_planted_discrepancy_fails_the_check_and_is_named(
    spark: object, batch: tuple[Settings, list[Event]], redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings, events = batch
    impressions = _speed_layer(settings, events)
    expected = reference_counts(events, WINDOW_S * 1000)
    unclicked = next(i for i in impressions if ("item", i.item_id, i.bucket_ms, "click") not in expected)
    store = RedisOnlineStore.from_settings(settings).attribution()
    fake = Outcome("planted", unclicked.user_id, unclicked.item_id, "click", unclicked.ts_ms + 1000, None)
    store.record_credit(unclicked, fake)
    open_bucket = Impression("open", "u0", "i0", int(TAIL.timestamp() * 1000) - 60_000, None, 1, None, None, None)
    store.record_impression(open_bucket)  # its hour is not closed: not compared
    store.close()
    monkeypatch.setenv("RECSYS_REDIS__URL", settings.redis.url or "")
    monkeypatch.setenv("RECSYS_SPARK__SHUFFLE_PARTITIONS", "2")
    monkeypatch.setenv("RECSYS_ATTRIBUTION__WINDOW_S", str(WINDOW_S))

    result = CliRunner().invoke(app, ["batch", "check-attribution", "--state-dir", str(settings.state_dir)])

    assert result.exit_code == 1, result.output
    named = [line.removeprefix("difference: ") for line in result.output.splitlines() if line.startswith("difference: ")]
    planted = [
        Difference(dimension, key, unclicked.bucket_ms, "click", n, n + 1)
        for dimension, key in unclicked.count_keys()
        for n in [expected.get((dimension, key, unclicked.bucket_ms, "click"), 0)]
    ]
    assert sorted(named) == sorted(str(d) for d in planted)
    assert len(named) == 4
    assert "4 differences" in result.output


def test_open_buckets_are_compared_only_when_asked(
    spark: object, batch: tuple[Settings, list[Event]], redis_client: redis.Redis
) -> None:
    """An impression the speed layer counted in the newest, open hour and Spark did not: ignored
    by default, a difference per count key with `include_open`."""
    settings, events = batch
    _speed_layer(settings, events)
    store = RedisOnlineStore.from_settings(settings).attribution()
    open_bucket = Impression("open", "u0", "i0", int(TAIL.timestamp() * 1000) - 60_000, None, 1, None, None, None)
    store.record_impression(open_bucket)
    store.close()
    source = RedisCounts(settings, settings.redis.url or "")

    assert check_attribution(spark, settings, source).ok  # type: ignore[arg-type]
    report = check_attribution(spark, settings, source, include_open=True)  # type: ignore[arg-type]

    found = list(differences(spark, report))  # type: ignore[arg-type]
    assert sorted((d.dimension, d.key) for d in found) == sorted(open_bucket.count_keys())
    assert {(d.bucket_ms, d.measure, d.spark, d.flink) for d in found} == {(open_bucket.bucket_ms, "impression", 0, 1)}
    assert report.until_ms == open_bucket.bucket_ms + HOUR_MS


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_stream_job_and_the_batch_job_agree(spark: object, settings: Settings, redis_client: redis.Redis) -> None:
    """Both real engines on the planted log (out of order within the stream's allowed lateness),
    then the check: nothing differs. The log ends with an hour the stream cannot have decided: a
    click without request id, then only a rating (which does not move the stream's watermark) past
    the window; the check must leave that hour out (it compared it, and failed, when it took a
    bucket as closed a window after its end, by the newest event of any type)."""
    from feature_store.event_log import LocalEventLog
    from feature_store.redis_layout import KeyLayout
    from feature_store.settings import EventLogSettings
    from pipelines.flink.runner import StreamJob

    lateness = timedelta(hours=6)  # more than the log spans: the file source reads hours in any order
    out_of_orderness, window = timedelta(seconds=1), timedelta(seconds=WINDOW_S)
    start = START - timedelta(hours=6)  # room after the log for the lateness and the last hour
    events = planted_log(start)
    planted_end = max(e.ts for e in events).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    # Read, it moves the watermark past every planted outcome plus the lateness: the stream decides
    # the last of them, and the check closes every planted bucket.
    tick = Event(event_id="tick", user_id="u9", item_id="i9", type=EventType.IMPRESSION,
                 ts=planted_end + window + lateness + out_of_orderness + timedelta(minutes=1))  # fmt: skip
    expected = reference_counts(events + [tick], WINDOW_S * 1000)
    last_hour = [
        Event(event_id="last", user_id="u8", item_id="i8", type=EventType.IMPRESSION, ts=tick.ts + timedelta(minutes=1),
              context=EventContext(request_id="r-last", position=0)),
        Event(event_id="last-click", user_id="u8", item_id="i8", type=EventType.CLICK, ts=tick.ts + timedelta(minutes=2)),
        Event(event_id="last-rating", user_id="u8", item_id="i8", type=EventType.RATING, value=4.0,
              ts=tick.ts + timedelta(minutes=3) + window + timedelta(hours=1)),
    ]  # fmt: skip
    assert last_hour[-1].ts < datetime.now(timezone.utc)
    env = {"RECSYS_REDIS__URL": settings.redis.url or "", "RECSYS_ATTRIBUTION__WINDOW_S": str(WINDOW_S),
           "RECSYS_FLINK__OUT_OF_ORDERNESS_MS": str(out_of_orderness // timedelta(milliseconds=1)),
           "RECSYS_FLINK__CHECKPOINT_INTERVAL_MS": "1000",
           "RECSYS_FLINK__ALLOWED_LATENESS_MS": str(lateness // timedelta(milliseconds=1))}  # fmt: skip
    source = RedisCounts(settings, settings.redis.url or "")
    layout = KeyLayout(settings.redis.key_prefix)
    markers = {layout.attribution_marker(e.event_id) for e in events if e.type == EventType.IMPRESSION}
    job = StreamJob(settings.state_dir, env=env, checkpoint_dir=settings.flink_checkpoint_dir).start()
    log = LocalEventLog(settings.event_log_dir, EventLogSettings(roll_max_age_s=0.1, fsync=False))
    try:
        log.append(events)
        log.roll_all()
        _wait(lambda: redis_client.exists(*markers) == len(markers), job, "every impression")
        log.append([tick])
        log.roll_all()
        got: dict[tuple[str, str, int, str], int] = {}

        def caught_up() -> bool:
            got.update({(r.dimension, r.key, r.bucket_ms, r.measure): r.value for d in Dimension.ALL for r in source(d)})
            return got == expected

        _wait(caught_up, job, "the rule's counts")
        log.append(last_hour)
        log.roll_all()
        _wait(lambda: bool(redis_client.exists(layout.attribution_marker("last"))), job, "the last impression")
    finally:
        log.close()
        job.stop()
    spark_settings = settings.model_copy(update={
        "attribution": settings.attribution.model_copy(update={"window_s": WINDOW_S}),
        "flink": settings.flink.model_copy(update={
            "out_of_orderness_ms": out_of_orderness // timedelta(milliseconds=1),
            "allowed_lateness_ms": lateness // timedelta(milliseconds=1),
        }),
    })  # fmt: skip
    compact.run(spark, spark_settings)  # type: ignore[arg-type]
    attribution.run(spark, spark_settings)  # type: ignore[arg-type]

    report = check_attribution(spark, spark_settings, source)  # type: ignore[arg-type]

    assert report.ok, list(differences(spark, report))  # type: ignore[arg-type]
    assert report.until_ms == planted_end.timestamp() * 1000, "every planted bucket, no later one"
    assert report.compared == len([key for key in expected if key[2] < report.until_ms]) > 300


def _wait(condition: Callable[[], bool], job: object, what: str, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert job.running, job.log_file.read_text()[-3000:]  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"the stream job did not reach {what} in {timeout_s:.0f} s"
        time.sleep(0.5)
