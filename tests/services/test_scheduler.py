"""The training scheduler on real Redis and APScheduler, running a real child process that holds
until released: two schedulers ticking at once start one run, a tick during a run is skipped,
the lock is free again after the run, and /metrics counts it all."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client import start_http_server

from feature_store.redis_server import free_port
from feature_store.settings import Settings
from pipelines.training.dag import runs_dir
from pipelines.training.records import RunRecord, RunStore, StepRecord, now
from services.scheduler.service import TrainingScheduler

# The fake training run: records itself, holds until the test creates `release` (at most 300 s,
# so a run orphaned by a killed scheduler ends by itself).
HOLD = """
import os, pathlib, sys, time
folder = pathlib.Path(sys.argv[1])
with (folder / "runs.txt").open("a") as runs:
    runs.write(f"run {os.getpid()} {os.environ.get('RECSYS_REDIS__URL')}\\n")
deadline = time.monotonic() + 300
while not (folder / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
"""

# A fake training run that records itself under the id the scheduler gives it, then holds as HOLD.
RECORDED = """
import pathlib, sys, time
from pipelines.training.records import RunRecord, RunStore, StepRecord, now
folder, store, run_id = pathlib.Path(sys.argv[1]), RunStore(pathlib.Path(sys.argv[2])), sys.argv[-1]
record = RunRecord(run_id, [StepRecord("scheduled_step", "running")], "running", "schedule", now())
store.save(record)
deadline = time.monotonic() + 300
while not (folder / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.02)
record.steps[0].status = record.status = "succeeded"
store.save(record)
"""


def _scheduler(settings: Settings, folder: Path) -> TrainingScheduler:
    client = redis.Redis.from_url(settings.redis.url)
    return TrainingScheduler(settings, client, [sys.executable, "-c", HOLD, str(folder)])


def _until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 60  # waited for, not slept on
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _runs(folder: Path) -> int:
    path = folder / "runs.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_two_schedulers_start_one_run_and_the_lock_frees_after_it(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    first, second = _scheduler(settings, tmp_path), _scheduler(settings, tmp_path)
    results: list[str] = []
    by_scheduler: dict[int, str] = {}

    def tick(number: int, scheduler: TrainingScheduler) -> None:
        by_scheduler[number] = scheduler.tick()
        results.append(by_scheduler[number])

    ticks = [threading.Thread(target=tick, args=(n, s)) for n, s in enumerate((first, second))]
    for thread in ticks:
        thread.start()
    _until(lambda: _runs(tmp_path) == 1 and results == ["locked"], f"one run and one locked tick, got {results}")
    (tmp_path / "release").touch()
    for thread in ticks:
        thread.join()
    assert sorted(results) == ["locked", "succeeded"] and _runs(tmp_path) == 1

    assert second.tick() == "succeeded" and _runs(tmp_path) == 2  # the lock was released
    locked = first if by_scheduler[0] == "locked" else second
    assert locked.metrics.skipped.labels("locked")._value.get() == 1


def test_a_tick_while_a_run_goes_on_is_skipped_and_counted_on_metrics(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    scheduler = _scheduler(settings, tmp_path)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=scheduler.metrics.registry)
    scheduler.start()
    try:
        next_run = scheduler.next_run()  # the default schedule "0 3 * * *", in UTC
        assert (next_run.hour, next_run.minute, next_run.utcoffset().total_seconds()) == (3, 0, 0), next_run
        scheduler.run_now()
        _until(lambda: _runs(tmp_path) == 1, "the first run started")
        scheduler.run_now()  # APScheduler's max_instances=1 refuses it while the run goes on
        _until(lambda: scheduler.metrics.skipped.labels("running")._value.get() == 1, "the second tick skipped")
        (tmp_path / "release").touch()
        _until(lambda: scheduler.metrics.runs.labels("succeeded")._value.get() == 1, "the run finished")
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        scheduler.shutdown()
        server.shutdown()
    assert _runs(tmp_path) == 1
    assert 'recsys_training_skipped_total{reason="running"} 1.0' in body
    assert 'recsys_training_runs_total{status="succeeded"} 1.0' in body
    assert "recsys_training_ticks_total 2.0" in body and "recsys_training_running 0.0" in body


def test_metrics_show_the_run_the_scheduler_started_not_one_started_after_it(
    settings: Settings, redis_client: Any, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(settings.redis.url)
    command = [sys.executable, "-c", RECORDED, str(tmp_path), str(runs_dir(settings))]
    scheduler = TrainingScheduler(settings, client, command)
    results: list[str] = []
    thread = threading.Thread(target=lambda: results.append(scheduler.tick()))
    thread.start()
    _until(lambda: any(runs_dir(settings).glob("*.json")), "the scheduled run recorded itself")
    # A manual run started while the scheduled one goes on (no lock spans an embedded Redis).
    manual = RunRecord("manual", [StepRecord("manual_step", "running")], "running", "manual", now())
    RunStore(runs_dir(settings)).save(manual)
    (tmp_path / "release").touch()
    thread.join(60)
    assert results == ["succeeded"]
    sample = scheduler.metrics.registry.get_sample_value
    assert sample("recsys_training_step_status", {"step": "scheduled_step", "status": "succeeded"}) == 1.0
    assert sample("recsys_training_step_status", {"step": "manual_step", "status": "running"}) is None


def test_run_now_prints_the_schedules_next_regular_tick(settings: Settings) -> None:
    """`recsys scheduler --run-now` (the real CLI) prints the cron's next tick, not the run it just
    asked for (which `next_run()` reads as now until the tick fires)."""
    import os
    import re
    import signal
    import subprocess
    from datetime import datetime, timezone

    from tests.services.test_cli_errors import ROOT

    env = {**os.environ, "RECSYS_REDIS__URL": str(settings.redis.url), "RECSYS_STATE_DIR": str(settings.state_dir),
           "RECSYS_TRAINING__SCHEDULE": "0 3 * * *", "RECSYS_SCHEDULER__METRICS_PORT": "0"}
    command = [sys.executable, "-c", "from services.cli import app; app()", "scheduler", "--run-now"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(120, process.kill)  # a line that never comes fails the test, not hangs it
    watchdog.start()
    try:
        assert process.stderr is not None
        line = next((line for line in process.stderr if line.startswith("scheduler: ")), "")
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        watchdog.cancel()
        process.kill()
    shown = re.search(r"next run (\S+ \S+);", line)
    assert shown is not None, line
    tick = datetime.fromisoformat(shown.group(1))
    assert tick > datetime.now(timezone.utc) and (tick.hour, tick.minute, tick.second, tick.microsecond) == (3, 0, 0, 0), line
