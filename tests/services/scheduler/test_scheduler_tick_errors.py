"""A tick that fails outside the run is still counted, so ticks = runs + skips: the lock cannot be
taken because Redis does not answer (retried with backoff within the misfire grace, then
`skipped{reason="redis_error"}`), or the run's process cannot start (`runs{status="failed"}`).
And the step metrics show only the run the scheduler last started, also when it wrote no record
or had other steps. Real Redis servers, real child processes."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from feature_store.redis_server import EmbeddedRedis, free_port
from feature_store.settings import Settings
from pipelines.training.dag import runs_dir
from services.scheduler.service import TrainingScheduler

ROOT = Path(__file__).resolve().parents[3]

# A fake run that records itself (succeeded) under the id the scheduler gives it, with the steps named.
RECORDED = """
import pathlib, sys
from pipelines.training.records import RunRecord, RunStore, StepRecord, now
store, steps, run_id = RunStore(pathlib.Path(sys.argv[1])), sys.argv[2].split(","), sys.argv[-1]
store.save(RunRecord(run_id, [StepRecord(step, "succeeded", duration_s=1.0) for step in steps], "succeeded", "schedule", now()))
"""


def _with_grace(settings: Settings, grace_s: int) -> Settings:
    return settings.model_copy(update={"scheduler": settings.scheduler.model_copy(update={"misfire_grace_s": grace_s})})


def _counts(scheduler: TrainingScheduler) -> tuple[float, float, float]:
    """(ticks, runs, skips) as /metrics shows them."""
    metrics = scheduler.metrics.registry.collect()
    totals = {metric.name: sum(s.value for s in metric.samples if s.name.endswith("_total")) for metric in metrics}
    return totals["recsys_training_ticks"], totals["recsys_training_runs"], totals["recsys_training_skipped"]


def test_a_tick_redis_does_not_answer_is_counted_as_a_skip(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens
    settings = _with_grace(Settings(state_dir=tmp_path / "state", redis={"url": url}), 1)
    scheduler = TrainingScheduler(settings, redis.Redis.from_url(url, socket_timeout=1), [sys.executable, "-c", "pass"])
    assert scheduler.tick() == "redis_error"
    assert scheduler.metrics.skipped.labels("redis_error")._value.get() == 1
    assert _counts(scheduler) == (1, 0, 1) and scheduler.metrics.running._value.get() == 0


def test_a_tick_takes_the_lock_once_redis_answers_within_the_grace(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings = _with_grace(Settings(state_dir=tmp_path / "state", redis={"url": url}), 120)
    scheduler = TrainingScheduler(settings, redis.Redis.from_url(url, socket_timeout=1), [sys.executable, "-c", "pass"])
    results: list[str] = []
    caplog.set_level(logging.WARNING, logger="services.scheduler.service")
    thread = threading.Thread(target=lambda: results.append(scheduler.tick()))
    thread.start()
    server = None
    try:
        deadline = time.monotonic() + 60
        while "Redis did not answer" not in caplog.text:  # the first try failed
            assert time.monotonic() < deadline and thread.is_alive(), results
            time.sleep(0.02)
        server = EmbeddedRedis(tmp_path / "redis", port=port).start()
        thread.join(90)
        assert results == ["succeeded"] and _counts(scheduler) == (1, 1, 0)
    finally:
        scheduler.shutdown()  # ends the retries if the test failed before Redis came up
        thread.join(60)
        if server is not None:
            server.stop()


def test_a_run_that_cannot_start_is_counted_failed(settings: Settings, redis_client: Any, tmp_path: Path) -> None:
    scheduler = TrainingScheduler(settings, redis.Redis.from_url(settings.redis.url), [str(tmp_path / "no-such-program")])
    assert scheduler.tick() == "failed"
    assert scheduler.metrics.runs.labels("failed")._value.get() == 1 and _counts(scheduler) == (1, 1, 0)
    assert not redis_client.exists(scheduler.lock_key) and scheduler.metrics.running._value.get() == 0


def test_step_metrics_show_only_the_run_last_started(settings: Settings, redis_client: Any) -> None:
    client = redis.Redis.from_url(settings.redis.url)
    recorded = [sys.executable, "-c", RECORDED, str(runs_dir(settings))]
    scheduler = TrainingScheduler(settings, client, [*recorded, "ranker,promote"])
    sample = scheduler.metrics.registry.get_sample_value
    assert scheduler.tick() == "succeeded"
    assert sample("recsys_training_step_status", {"step": "promote", "status": "succeeded"}) == 1.0

    scheduler.command = [*recorded, "ranker"]  # the step set changed
    assert scheduler.tick() == "succeeded"
    assert sample("recsys_training_step_status", {"step": "ranker", "status": "succeeded"}) == 1.0
    assert sample("recsys_training_step_status", {"step": "promote", "status": "succeeded"}) is None
    assert sample("recsys_training_step_seconds", {"step": "promote"}) is None

    scheduler.command = [sys.executable, "-c", "import sys; sys.exit(1)"]  # dies before it records anything
    assert scheduler.tick() == "failed"
    assert sample("recsys_training_step_status", {"step": "ranker", "status": "succeeded"}) is None
    assert sample("recsys_training_step_seconds", {"step": "ranker"}) is None


@pytest.mark.parametrize("schedule", ["0 0 30 2 *", "0 3 * * 1/"])
def test_a_schedule_that_cannot_run_stops_the_scheduler_at_load(settings: Settings, schedule: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "RECSYS_TRAINING__SCHEDULE": schedule,
           "RECSYS_REDIS__URL": settings.redis.url, "RECSYS_SCHEDULER__METRICS_PORT": "0"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", "from services.cli import app; app()", "scheduler", "--state-dir",
                           str(tmp_path / "state")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"error: invalid settings: training.schedule: Value error, cron '{schedule}'" in done.stderr, done.stderr
