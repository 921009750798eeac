"""Ticks a scheduler did not see: missed while no scheduler was up (a restart across the schedule),
or due while its process was frozen past the misfire grace. The newest one due within
`scheduler.misfire_grace_s` runs once at start; older ones, and a tick fired late in a running
scheduler, are counted `skipped{reason="missed"}`; every handled tick is recorded in Redis beside
the run lock, so a tick that ran is not run again by a restarted scheduler.

The decision is checked on fixed times; the schedulers run on real Redis and APScheduler with a
daily schedule put a few minutes before or after the wall clock, and the tests wait for events
(a run counted, a skip counted), never for a cron minute."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import redis

from feature_store.cron import cron_trigger
from feature_store.settings import Settings
from services.scheduler.service import JOB_ID, TrainingScheduler
from tests.services.scheduler.test_scheduler_lock import _until

TOUCH = "import pathlib, sys; pathlib.Path(sys.argv[1]).touch()"
NOW = datetime(2026, 12, 2, 3, 2, 30, tzinfo=timezone.utc)  # a Wednesday, 2.5 min after the 03:00 tick


def _daily_at(tick: datetime, settings: Settings) -> Settings:
    schedule = f"{tick.minute} {tick.hour} * * *"
    return settings.model_copy(update={"training": settings.training.model_copy(update={"schedule": schedule})})


def _scheduler(settings: Settings, marker: Path) -> TrainingScheduler:
    return TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), [sys.executable, "-c", TOUCH, str(marker)])


def _last_tick(client: Any, settings: Settings) -> datetime | None:
    value = client.get(f"{settings.redis.key_prefix}:training:last_tick")
    return None if value is None else datetime.fromisoformat(value.decode())


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def test_what_a_scheduler_owes_at_start() -> None:
    from services.scheduler.ticks import owed_at_start

    daily, hourly = cron_trigger("0 3 * * *"), cron_trigger("0 * * * *")
    today, yesterday = datetime(2026, 12, 2, 3, tzinfo=timezone.utc), datetime(2026, 12, 1, 3, tzinfo=timezone.utc)
    assert owed_at_start(daily, None, NOW, 300).run == today  # nothing recorded: the tick in the grace runs
    assert owed_at_start(daily, yesterday, NOW, 300).run == today
    assert owed_at_start(daily, today, NOW, 300).run is None and owed_at_start(daily, today, NOW, 300).missed is None
    late = NOW + timedelta(minutes=10)
    assert owed_at_start(daily, yesterday, late, 300).run is None and owed_at_start(daily, yesterday, late, 300).missed == today
    assert owed_at_start(daily, None, late, 300).missed is None  # nothing recorded: nothing known missed
    # Down for a day of hourly ticks: one run (the newest), the older ones coalesced into it.
    assert owed_at_start(hourly, yesterday, NOW, 300).run == today
    assert owed_at_start(daily, yesterday, NOW, 60).missed == today  # a shorter grace


def test_a_tick_due_while_no_scheduler_was_up_runs_once_at_start(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    due = _minute(datetime.now(timezone.utc) - timedelta(minutes=2))  # the tick a restart spanned
    settings = _daily_at(due, settings)
    redis_client.set(f"{settings.redis.key_prefix}:training:last_tick", (due - timedelta(days=1)).isoformat())
    scheduler = _scheduler(settings, tmp_path / "ran")
    scheduler.start()
    try:
        _until(lambda: scheduler.metrics.runs.labels("succeeded")._value.get() == 1, "the catch-up run", timeout_s=60)
        assert (tmp_path / "ran").exists() and scheduler.metrics.ticks._value.get() == 1
        assert _last_tick(redis_client, settings) == due
        assert scheduler.next_run() == due + timedelta(days=1)
    finally:
        scheduler.shutdown()


def test_a_tick_already_handled_is_not_run_again_at_start(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    due = _minute(datetime.now(timezone.utc) - timedelta(minutes=2))
    settings = _daily_at(due, settings)
    redis_client.set(f"{settings.redis.key_prefix}:training:last_tick", due.isoformat())  # another scheduler's, or ours before
    scheduler = _scheduler(settings, tmp_path / "ran")
    scheduler.start()
    try:
        assert scheduler.next_run() == due + timedelta(days=1)
        assert scheduler.metrics.ticks._value.get() == 0 and not (tmp_path / "ran").exists()
    finally:
        scheduler.shutdown()


def test_a_tick_missed_past_the_grace_is_counted_at_start(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    due = _minute(datetime.now(timezone.utc) - timedelta(minutes=20))
    settings = _daily_at(due, settings)
    redis_client.set(f"{settings.redis.key_prefix}:training:last_tick", (due - timedelta(days=1)).isoformat())
    scheduler = _scheduler(settings, tmp_path / "ran")
    scheduler.start()
    try:
        sample = scheduler.metrics.registry.get_sample_value
        assert sample("recsys_training_skipped_total", {"reason": "missed"}) == 1
        assert sample("recsys_training_ticks_total") == 1 and not (tmp_path / "ran").exists()
        assert scheduler.next_run() == due + timedelta(days=1)
        assert _last_tick(redis_client, settings) >= due  # counted once: a second restart does not count it again
    finally:
        scheduler.shutdown()
    again = _scheduler(settings, tmp_path / "ran")
    again.start()
    again.shutdown()
    assert again.metrics.ticks._value.get() == 0


def test_a_tick_later_than_the_grace_in_a_running_scheduler_is_counted_missed(
    settings: Settings, redis_client: Any, tmp_path: Path
) -> None:
    scheduler = _scheduler(settings, tmp_path / "ran")
    scheduler.start()
    try:
        late = datetime.now(timezone.utc) - timedelta(seconds=400)  # its process was frozen past 300 s
        scheduler._scheduler.modify_job(JOB_ID, next_run_time=late)
        _until(lambda: scheduler.metrics.skipped.labels("missed")._value.get() == 1, "the late tick counted missed", timeout_s=60)
        assert scheduler.metrics.ticks._value.get() == 1 and not (tmp_path / "ran").exists()
        assert _last_tick(redis_client, settings) == late
    finally:
        scheduler.shutdown()
