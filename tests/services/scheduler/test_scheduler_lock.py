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

import pytest
import redis

from feature_store.redis_server import EmbeddedRedis
from feature_store.settings import Settings
from services.scheduler.service import TrainingScheduler
from tests.services.test_scheduler import HOLD

TTL_S = 9.0
ROOT = Path(__file__).resolve().parents[3]

# A scheduler in its own process, ticking once (the test kills it mid-run).
CRASHING = """
import sys, redis
from feature_store.redis_server import EmbeddedRedis
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


def _run_pids(folder: Path) -> list[int]:
    return [int(line.split()[1]) for line in (folder / "runs.txt").read_text().splitlines()]


def _alive(pid: int) -> bool:
    """Running (an ended child not yet reaped by its new parent is a zombie: not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


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
        orphan = _run_pids(tmp_path)[0]
        os.kill(crashing.pid, signal.SIGKILL)  # no release, no more renewals
        crashing.wait(60)
        # Its run dies with it: left going, it would overlap the survivor's once the lock expires.
        _until(lambda: not _alive(orphan), "the dead scheduler's run to end with it", timeout_s=30)
        _until(lambda: not redis_client.exists(survivor.lock_key), "the dead scheduler's lock to expire", timeout_s=TTL_S * 4)
        (tmp_path / "release").touch()
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


def test_redis_down_mid_run_stops_the_run_before_the_lock_could_expire(tmp_path: Path) -> None:
    """A renewal Redis does not answer cannot tell whether the lock is still held: the run goes on
    while the lock would still be its own, then stops, and the scheduler's gauge and counters are
    right although the release cannot reach Redis either."""
    server = EmbeddedRedis(tmp_path / "redis").start()
    settings = _with_ttl(Settings(state_dir=tmp_path / "state", redis={"url": server.url, "socket_timeout_s": 0.5,
                                                                        "connect_timeout_s": 0.5}))  # fmt: skip
    scheduler = TrainingScheduler(settings, redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5),
                                  [sys.executable, "-c", HOLD, str(tmp_path)], redis_url=server.url)  # fmt: skip
    results: list[str] = []
    thread = _tick_in_thread(scheduler, results)
    try:
        _until(lambda: _runs(tmp_path) == 1, "the run started")
        assert (tmp_path / "runs.txt").read_text().split()[2] == server.url  # the run publishes to this Redis
        server.kill()
        stopped = time.monotonic()
        thread.join(TTL_S * 4)
        assert results == ["lock_lost"] and time.monotonic() - stopped < TTL_S
        assert not _alive(_run_pids(tmp_path)[0]) and not (tmp_path / "release").exists()
        assert scheduler.metrics.running._value.get() == 0 and scheduler.metrics.runs.labels("lock_lost")._value.get() == 1
    finally:
        (tmp_path / "release").touch()
        thread.join(60)
        server.stop()


# A run that records itself running under the id the scheduler gave it (`--run-id <id>`, last),
# then ignores SIGTERM: only SIGKILL ends it.
STUBBORN = """
import signal, sys, time
from pipelines.training.records import RUNNING, RunRecord, RunStore, StepRecord
signal.signal(signal.SIGTERM, signal.SIG_IGN)
RunStore(sys.argv[1]).save(RunRecord(sys.argv[-1], [StepRecord("compact", RUNNING)], RUNNING))
time.sleep(300)
"""


def test_a_run_past_its_timeout_is_killed_and_recorded_failed(settings: Settings, redis_client: Any) -> None:
    from pipelines.training.dag import runs_dir
    from pipelines.training.records import RUNNING, RunRecord, RunStore, StepRecord

    settings = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(
        update={"lock_ttl_s": TTL_S, "run_timeout_s": 1.0, "stop_grace_s": 0.5})})
    command = [sys.executable, "-c", STUBBORN, str(runs_dir(settings))]
    scheduler = TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), command)
    other = RunRecord("20990101T000000Z-manual", [StepRecord("compact", RUNNING)], RUNNING)  # a run beside it, not the lock's
    RunStore(runs_dir(settings)).save(other)
    assert scheduler.tick() == "failed"
    records = {record.run_id: record for record in RunStore(runs_dir(settings)).runs()}
    assert records.pop(other.run_id).status == "running"  # left alone
    (record,) = records.values()
    assert record.status == "failed" and record.ended_at is not None
    assert record.steps[0].status == "failed" and record.steps[0].error == "stopped by the scheduler: past scheduler.run_timeout_s"
    assert scheduler.metrics.running._value.get() == 0


def test_stopping_the_scheduler_stops_its_run_instead_of_waiting_for_it(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    scheduler = _scheduler(_with_ttl(settings), tmp_path)
    scheduler.start()
    results: list[str] = []
    thread = _tick_in_thread(scheduler, results)
    try:
        _until(lambda: _runs(tmp_path) == 1, "the run started")
        scheduler.shutdown()
        thread.join(30)  # SIGTERM within a poll (1 s); HOLD dies of it at once
        assert results == ["failed"] and not _alive(_run_pids(tmp_path)[0])
        assert not (tmp_path / "release").exists() and not redis_client.exists(scheduler.lock_key)
    finally:
        (tmp_path / "release").touch()
        thread.join(60)


def test_the_lock_is_kept_while_a_stopped_run_has_its_grace(settings: Settings, redis_client: Any) -> None:
    """A grace longer than the TTL: without renewals the lock would lapse while the run is alive."""
    from pipelines.training.dag import runs_dir

    settings = settings.model_copy(update={"scheduler": settings.scheduler.model_copy(
        update={"lock_ttl_s": 3.0, "run_timeout_s": 0.5, "stop_grace_s": 6.0})})
    command = [sys.executable, "-c", STUBBORN, str(runs_dir(settings))]
    first = TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), command)
    second = TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), command)
    results: list[str] = []
    thread = _tick_in_thread(first, results)
    try:
        _until(lambda: runs_dir(settings).is_dir() and any(runs_dir(settings).glob("*.json")), "the run recorded itself")
        _until(lambda: first.metrics.lock_renewals._value.get() >= 5, "renewals past a TTL into the grace", timeout_s=30)
        assert not results and second.tick() == "locked"  # past the TTL since the stop began: still held
    finally:
        thread.join(60)
    assert results == ["failed"]


def test_a_manual_run_takes_the_schedulers_lock_and_is_refused_while_a_run_holds_it(
    settings: Settings, redis_client: redis.Redis, monkeypatch: Any
) -> None:
    """`recsys train run` on a shared Redis: refused (exit 2, nothing recorded) while a scheduler's
    run holds the lock; otherwise it holds the lock itself, renewed, and frees it however it ends."""
    from typer.testing import CliRunner

    from pipelines.training.dag import runs_dir
    from services.cli import app
    from services.scheduler.lock import RunLock, TrainingLockHeld, holding, training_lock_key

    monkeypatch.setenv("RECSYS_REDIS__URL", settings.redis.url)
    key = training_lock_key(settings.redis.key_prefix)
    scheduled = RunLock(redis_client, key, TTL_S)
    assert scheduled.acquire()
    state = ["--state-dir", str(settings.state_dir)]
    refused = CliRunner().invoke(app, ["train", "run", *state])
    assert refused.exit_code == 2 and "another training run holds the lock" in refused.output, refused.output
    assert not list(runs_dir(settings).glob("*.json"))  # no run started
    scheduled.release()

    lost = threading.Event()
    with holding(redis_client, key, TTL_S, lost.set):
        expires = time.monotonic() + redis_client.pttl(key) / 1000
        with pytest.raises(TrainingLockHeld):  # a second manual run, or a scheduler's tick, finds it held
            with holding(redis_client, key, TTL_S, lost.set):
                pass
        # Renewed: the key now expires a second or more later than it did when taken.
        _until(lambda: time.monotonic() + redis_client.pttl(key) / 1000 > expires + 1, "a renewal of the manual run's lock")
    assert not redis_client.exists(key) and not lost.is_set()
    with holding(redis_client, key, TTL_S, lost.set):
        redis_client.set(key, "a scheduler's token")  # expired in a stall and taken by a scheduler
        _until(lost.is_set, "the manual run told its lock is lost")
    assert redis_client.get(key) == b"a scheduler's token"  # not freed by the loser
    redis_client.delete(key)

    failed = CliRunner().invoke(app, ["train", "run", "--resume", "nope", *state])  # fails inside the lock
    assert failed.exit_code == 2 and "no training run 'nope'" in failed.output and not redis_client.exists(key)


def test_a_manual_run_on_the_embedded_redis_takes_the_lock_a_scheduler_there_holds(tmp_path: Path) -> None:
    """Without `redis.url`, `recsys train run` shares the state directory's live embedded Redis
    (the one `recsys run` or a scheduler started there), so it takes the schedulers' lock on it."""
    from typer.testing import CliRunner

    from feature_store.redis_server import redis_url
    from pipelines.training.dag import runs_dir
    from services.cli import app
    from services.scheduler.lock import RunLock, training_lock_key

    embedded = Settings(state_dir=tmp_path)
    assert embedded.redis.url is None
    with redis_url(embedded) as url:  # this process owns the state directory's server
        client = redis.Redis.from_url(url)
        scheduled = RunLock(client, training_lock_key(embedded.redis.key_prefix), TTL_S)
        assert scheduled.acquire()
        refused = CliRunner().invoke(app, ["train", "run", "--state-dir", str(tmp_path)])
        assert refused.exit_code == 2 and "another training run holds the lock" in refused.output, refused.output
        assert not list(runs_dir(embedded).glob("*.json"))  # no run started
        scheduled.release()
        client.close()
