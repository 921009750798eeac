"""The scheduler process: APScheduler 3 fires the cron schedule (`training.schedule`, UTC); each
tick takes the Redis run lock and runs the DAG as a child process (`recsys train run --trigger
schedule`), so a step that overran its timeout dies with its run and a crash in training never
takes the scheduler down.

A tick is skipped (and counted) when this scheduler's previous run is still going (APScheduler's
`max_instances=1`) or another scheduler holds the lock; ticks missed while the process was down
are coalesced into one. Why APScheduler 3.x: a mature in-process cron (standard 5-field crontab,
time zones, misfire grace, coalescing, max instances, event listeners for metrics) with no broker
or database to run; 4.x is still a pre-release with a different API, and Celery beat or Airflow
would add a broker or a metadata database for one job.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import redis
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from feature_store.cron import cron_trigger
from feature_store.processes import die_with_parent
from feature_store.settings import Settings
from pipelines.training.dag import history, runs_dir
from pipelines.training.records import RUNNING, RunStore
from services.scheduler.lock import RunLock
from services.scheduler.metrics import SchedulerMetrics

log = logging.getLogger(__name__)

JOB_ID = "training-dag"


def default_command(settings: Settings) -> list[str]:
    """`recsys train run` for this state directory, run by this interpreter."""
    return [sys.executable, "-c", "from services.cli import app; app()", "train", "run",
            "--trigger", "schedule", "--state-dir", str(settings.state_dir)]  # fmt: skip


class TrainingScheduler:
    """Cron ticks → locked runs of `command` (default: the training DAG)."""

    def __init__(self, settings: Settings, client: redis.Redis, command: Sequence[str] | None = None,
                 metrics: SchedulerMetrics | None = None, redis_url: str | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.client = client
        self.command = list(command or default_command(settings))
        # The run publishes its features to the scheduler's Redis: an embedded one is not started twice.
        self.env = {**os.environ, "RECSYS_REDIS__URL": redis_url} if redis_url else None
        self._process: subprocess.Popen[bytes] | None = None
        self.metrics = metrics or SchedulerMetrics()
        self.lock_key = f"{settings.redis.key_prefix}:training:lock"
        self.trigger = cron_trigger(settings.training.schedule)
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)

    def start(self) -> None:
        self._scheduler.add_job(self.tick, self.trigger, id=JOB_ID, max_instances=1, coalesce=True,
                                misfire_grace_time=300, replace_existing=True)  # fmt: skip
        self._scheduler.start()
        log.info("training scheduled '%s' (UTC); next run at %s", self.settings.training.schedule, self.next_run())

    def run_now(self) -> None:
        """Fire the scheduled job now (same lock and skip rules as a cron tick)."""
        self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(timezone.utc))

    def next_run(self) -> object:
        job = self._scheduler.get_job(JOB_ID)
        return None if job is None else job.next_run_time

    def shutdown(self) -> None:
        """Stop ticking, and stop a run going on (SIGTERM: it records itself failed, resumable with
        `recsys train run --resume`) rather than wait for it up to `scheduler.run_timeout_s`."""
        self._scheduler.shutdown(wait=False)
        process = self._process
        if process is not None and process.poll() is None:
            log.info("scheduler stopping: stopping the training run going on")
            process.terminate()

    def _on_max_instances(self, event: JobExecutionEvent) -> None:
        self.metrics.ticks.inc()
        self.metrics.skipped.labels("running").inc()
        log.info("tick skipped: the previous training run is still going")

    def tick(self) -> str:
        """One tick: run the DAG under the lock, renewed every third of its TTL while the run goes
        on. Returns "succeeded", "failed", "locked" (another scheduler holds the lock) or
        "lock_lost" (a renewal found the lock gone, so the run was stopped)."""
        self.metrics.ticks.inc()
        lock = RunLock(self.client, self.lock_key, self.settings.scheduler.lock_ttl_s)
        if not lock.acquire():
            self.metrics.skipped.labels("locked").inc()
            log.info("tick skipped: another scheduler holds %s", self.lock_key)
            return "locked"
        self.metrics.running.set(1)
        started = time.monotonic()
        try:
            status = self._run(lock)
        finally:
            lock.release()
            self.metrics.running.set(0)
        self.metrics.runs.labels(status).inc()
        self.metrics.last_run_seconds.set(time.monotonic() - started)
        self.metrics.last_run_end.set(time.time())
        runs = history(self.settings, limit=1)
        if runs:
            self.metrics.record_run(runs[0])
        log.info("training run %s in %.1f s", status, time.monotonic() - started)
        return status

    def _run(self, lock: RunLock) -> str:
        log.info("training run starting: %s", " ".join(self.command))
        # Its progress goes to our stdout/stderr; it dies with this thread's process, so a scheduler
        # killed mid-run leaves no run going on without the lock.
        process = self._process = subprocess.Popen(self.command, env=self.env, preexec_fn=die_with_parent)
        deadline = time.monotonic() + self.settings.scheduler.run_timeout_s
        ttl = self.settings.scheduler.lock_ttl_s
        renew_every, renewed = ttl / 3, time.monotonic()
        while True:
            try:
                code = process.wait(timeout=min(renew_every, max(deadline - time.monotonic(), 0.01)))
                return "succeeded" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    log.error("training run past scheduler.run_timeout_s: stopping it")
                    self._stop(process, lock, "stopped by the scheduler: past scheduler.run_timeout_s")
                    return "failed"
                held = lock.renew()
                # Lost, or not confirmed for 2/3 of the TTL (Redis down): another scheduler may hold
                # it by the next renewal, and two runs must not go on at once: killed now, and its
                # record left alone (the newest may be the other scheduler's run).
                if held is False or (held is None and time.monotonic() - renewed >= 2 * ttl / 3):
                    log.error("training lock lost: stopping this run (resume it with recsys train run --resume)")
                    process.kill()
                    process.wait()
                    return "lock_lost"
                if held:
                    renewed = time.monotonic()
                    self.metrics.lock_renewals.inc()

    def _stop(self, process: subprocess.Popen[bytes], lock: RunLock, reason: str) -> None:
        """SIGTERM (the run records itself failed), SIGKILL after `scheduler.stop_grace_s`; then,
        while the lock is still this scheduler's, so that no run can be going on, every record
        left `running` (by this run, or one killed before) is marked failed for `reason`."""
        process.terminate()
        try:
            process.wait(self.settings.scheduler.stop_grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if not lock.renew():
            return
        store = RunStore(runs_dir(self.settings))
        for record in store.runs():
            if record.status == RUNNING:
                record.stop(reason)
                store.save(record)
