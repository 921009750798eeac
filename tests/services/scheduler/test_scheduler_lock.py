"""The scheduler's run lock on a real Redis, with real scheduler instances running a real child
process that holds until released: a run longer than the lock's TTL keeps the lock (renewed) so a
second scheduler cannot start one; a crashed scheduler's lock expires and the other then runs; a
scheduler whose lock is gone stops its run.

The TTL is 9 s, renewed every 3 s, so a renewal would have to be 6 s late for a test to see the
lock lapse; the tests wait for events (renewals counted by the scheduler, a key gone from Redis),
never sleep for a fixed time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from feature_store.settings import Settings
from services.scheduler.service import TrainingScheduler
from tests.services.test_scheduler import HOLD

TTL_S = 9.0
ROOT = Path(__file__).resolve().parents[3]

# A scheduler in its own process, ticking once (the test kills it mid-run).
CRASHING = """
import sys, redis
from feature_store.settings import Settings
from services.scheduler.service import TrainingScheduler
settings = Settings.model_validate_json(sys.argv[1])
scheduler = TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), [sys.executable, "-c", sys.argv[2], sys.argv[3]])
scheduler.tick()
"""


def _with_ttl(settings: Settings) -> Settings:
    return settings.model_copy(update={"scheduler": settings.scheduler.model_copy(update={"lock_ttl_s": TTL_S})})


def _scheduler(settings: Settings, folder: Path) -> TrainingScheduler:
    return TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), [sys.executable, "-c", HOLD, str(folder)])


def _until(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s  # waited for, not slept on
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _runs(folder: Path) -> int:
    path = folder / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _tick_in_thread(scheduler: TrainingScheduler, results: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(scheduler.tick()))
    thread.start()
    return thread


def test_a_run_longer_than_the_ttl_keeps_its_lock(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    settings = _with_ttl(settings)
    first, second = _scheduler(settings, tmp_path), _scheduler(settings, tmp_path)
    results: list[str] = []
    thread = _tick_in_thread(first, results)
    try:
        _until(lambda: _runs(tmp_path) == 1, "the first run started")
        started = time.monotonic()
        _until(lambda: first.metrics.lock_renewals._value.get() >= 4, "four renewals")
        assert time.monotonic() - started > TTL_S  # the run has outlived one TTL: only renewals kept the lock
        assert redis_client.exists(first.lock_key) and 0 < redis_client.pttl(first.lock_key) <= TTL_S * 1000
        assert second.tick() == "locked" and _runs(tmp_path) == 1
        assert second.metrics.skipped.labels("locked")._value.get() == 1
    finally:
        (tmp_path / "release").touch()
        thread.join(60)
    assert results == ["succeeded"] and not redis_client.exists(first.lock_key)
    assert second.tick() == "succeeded" and _runs(tmp_path) == 2


def test_a_crashed_schedulers_lock_expires_and_the_other_runs(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    settings = _with_ttl(settings)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    crashing = subprocess.Popen([sys.executable, "-c", CRASHING, settings.model_dump_json(), HOLD, str(tmp_path)], env=env, cwd=ROOT)
    survivor = _scheduler(settings, tmp_path)
    try:
        _until(lambda: _runs(tmp_path) == 1, "the crashing scheduler's run started")
        assert survivor.tick() == "locked"
        os.kill(crashing.pid, signal.SIGKILL)  # no release, no more renewals
        crashing.wait(60)
        _until(lambda: not redis_client.exists(survivor.lock_key), "the dead scheduler's lock to expire", timeout_s=TTL_S * 4)
        (tmp_path / "release").touch()  # also ends the orphaned run of the dead scheduler
        assert survivor.tick() == "succeeded" and _runs(tmp_path) == 2
    finally:
        (tmp_path / "release").touch()
        if crashing.poll() is None:
            crashing.kill()
            crashing.wait(60)


def test_a_scheduler_that_lost_its_lock_stops_its_run(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    settings = _with_ttl(settings)
    scheduler = _scheduler(settings, tmp_path)
    results: list[str] = []
    thread = _tick_in_thread(scheduler, results)
    try:
        _until(lambda: _runs(tmp_path) == 1, "the run started")
        redis_client.set(scheduler.lock_key, "another-scheduler's token")  # as if it expired and was taken
        thread.join(TTL_S * 4)
        assert results == ["lock_lost"], results  # stopped at its next renewal, not at the release
        assert not (tmp_path / "release").exists()
        assert redis_client.get(scheduler.lock_key) == b"another-scheduler's token"  # not freed by the loser
        assert scheduler.metrics.runs.labels("lock_lost")._value.get() == 1
    finally:
        (tmp_path / "release").touch()
        thread.join(60)
