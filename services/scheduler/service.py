"""The scheduler process: APScheduler 3 fires the cron schedule (`training.schedule`, UTC); each
tick takes the Redis run lock and runs the DAG as a child process (`recsys train run --trigger
schedule`), so a step that overran its timeout dies with its run and a crash in training never
takes the scheduler down.

A tick is skipped and counted by reason when this scheduler's previous run is still going
(`running`: APScheduler's `max_instances=1`), another scheduler holds the lock (`locked`), Redis
does not answer within `scheduler.misfire_grace_s`, retried with backoff meanwhile (`redis_error`),
or it fires more than that grace late, its process frozen or the clock stepped (`missed`); a run
that cannot start is a failed run; so ticks = runs + skips. Each tick handled is recorded in Redis
(`ticks.TickLog`): at start, the ticks due while no scheduler was up are coalesced into one, run at
once if the newest is at most that grace old, else counted `missed` (`ticks.owed_at_start`).

Why APScheduler 3.x: a mature in-process cron (standard 5-field crontab, time zones, misfire grace,
coalescing, max instances, event listeners for metrics) with no broker or database to run; 4.x is
still a pre-release with a different API, and Celery beat or Airflow would add a broker or a
metadata database for one job.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import redis
from apscheduler.events import (EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, EVENT_JOB_SUBMITTED, JobExecutionEvent,
                                JobSubmissionEvent)
from apscheduler.schedulers.background import BackgroundScheduler

from feature_store.cron import cron_trigger
from feature_store.processes import die_with_parent
from feature_store.settings import Settings
from pipelines.training.dag import runs_dir
from pipelines.training.records import RUNNING, RunRecord, RunStore, new_run_id
from services.scheduler.lock import LockKeeper, RunLock, socket_timeout_s, training_lock_key
from services.scheduler.metrics import SchedulerMetrics
from services.scheduler.ticks import Owed, TickLog, owed_at_start

log = logging.getLogger(__name__)

JOB_ID = "training-dag"
POLL_S = 1.0  # how often a run going on is checked on: the lock's renewal, a stop, the timeout
MAX_BACKOFF_S = 30.0  # the longest wait between two tries of a lock Redis did not answer


def default_command(settings: Settings) -> list[str]:
    """`recsys train run` for this state directory, run by this interpreter."""
    return [sys.executable, "-c", "from services.cli import app; app()", "train", "run",
            "--trigger", "schedule", "--holds-lock", "--state-dir", str(settings.state_dir)]  # fmt: skip


class TrainingScheduler:
    """Cron ticks → locked runs of `command` (default: the training DAG)."""

    def __init__(self, settings: Settings, client: redis.Redis, command: Sequence[str] | None = None,
                 metrics: SchedulerMetrics | None = None, redis_url: str | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.client = client
        self.command = list(command or default_command(settings))
        # The run publishes its features to the scheduler's Redis: an embedded one is not started twice.
        self.env = {**os.environ, "RECSYS_REDIS__URL": redis_url} if redis_url else None
        self._stopping = threading.Event()
        self.metrics = metrics or SchedulerMetrics()
        self.lock_key = training_lock_key(settings.redis.key_prefix)
        self.call_timeout_s = socket_timeout_s(client)
        if 3 * self.call_timeout_s >= settings.scheduler.lock_ttl_s:  # see `LockKeeper`
            raise ValueError(f"scheduler.lock_ttl_s ({settings.scheduler.lock_ttl_s:g} s) must be over 3 times how long a "
                             f"Redis call may block ({self.call_timeout_s:g} s): a renewal could outlast the lock")
        self.trigger = cron_trigger(settings.training.schedule)
        self.tick_log = TickLog(client, settings.redis.key_prefix)
        self._scheduler = BackgroundScheduler(timezone="UTC")
        self._scheduler.add_listener(self._on_submitted, EVENT_JOB_SUBMITTED)
        self._scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._scheduler.add_listener(self._on_missed, EVENT_JOB_MISSED)

    def start(self) -> None:
        """Schedule the job; a tick owed since the last one handled is fired at once (it runs,
        or is counted missed when APScheduler finds it past the grace)."""
        owed = self._owed(datetime.now(timezone.utc))
        first = {"next_run_time": owed.run} if owed.run is not None else {}
        self._scheduler.add_job(self.tick, self.trigger, id=JOB_ID, max_instances=1, coalesce=True,
                                misfire_grace_time=self.settings.scheduler.misfire_grace_s, replace_existing=True,
                                **first)  # fmt: skip
        self._scheduler.start()
        log.info("training scheduled '%s' (UTC); next run at %s", self.settings.training.schedule, self.next_run())

    def run_now(self) -> None:
        """Fire the scheduled job now (same lock and skip rules as a cron tick)."""
        self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(timezone.utc))

    def next_run(self) -> object:
        job = self._scheduler.get_job(JOB_ID)
        return None if job is None else job.next_run_time

    def shutdown(self) -> None:
        """Stop ticking, and have a run going on stopped as a timed-out one is (within a second),
        rather than wait for it up to `scheduler.run_timeout_s`."""
        self._stopping.set()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def _owed(self, now: datetime) -> Owed:
        """What this start owes; ticks missed past the grace are counted here, as one."""
        try:
            last = self.tick_log.last()
        except redis.RedisError as exc:  # nothing known missed; a tick within the grace still runs
            log.warning("last training tick not read, Redis did not answer: %s", exc)
            last = None
        owed = owed_at_start(self.trigger, last, now, self.settings.scheduler.misfire_grace_s)
        if owed.missed is not None:
            self._count_missed(owed.missed, handled=now)
        if owed.run is not None:
            log.info("training tick of %s was due while no scheduler was up: running it now", owed.run.isoformat())
        return owed

    def _on_submitted(self, event: JobSubmissionEvent) -> None:
        self._handled(max(event.scheduled_run_times))

    def _on_max_instances(self, event: JobSubmissionEvent) -> None:
        self.metrics.ticks.inc()
        self.metrics.skipped.labels("running").inc()
        self._handled(max(event.scheduled_run_times))
        log.info("tick skipped: the previous training run is still going")

    def _on_missed(self, event: JobExecutionEvent) -> None:
        self._count_missed(event.scheduled_run_time, handled=event.scheduled_run_time)

    def _count_missed(self, tick: datetime, handled: datetime) -> None:
        self.metrics.ticks.inc()
        self.metrics.skipped.labels("missed").inc()
        self._handled(handled)
        log.warning("training tick of %s missed: more than scheduler.misfire_grace_s (%g s) late, not run",
                    tick.isoformat(), self.settings.scheduler.misfire_grace_s)  # fmt: skip

    def _handled(self, tick: datetime) -> None:
        try:
            self.tick_log.handled(tick)
        except redis.RedisError as exc:  # a restart within the grace may then run this tick again
            log.warning("training tick %s not recorded, Redis did not answer: %s", tick.isoformat(), exc)

    def tick(self) -> str:
        """One tick: run the DAG under the lock, renewed every third of its TTL while the run goes
        on. Returns "succeeded", "failed" (also: its process could not start), "locked" (another
        scheduler holds the lock), "redis_error" (Redis did not answer within the misfire grace) or
        "lock_lost" (a renewal found the lock gone, so the run was stopped)."""
        self.metrics.ticks.inc()
        lock = RunLock(self.client, self.lock_key, self.settings.scheduler.lock_ttl_s)
        acquired = self._acquire(lock)
        if acquired is None:
            return self._skip("redis_error", f"Redis did not answer within scheduler.misfire_grace_s to take {self.lock_key}",
                              logging.ERROR)
        if not acquired:
            return self._skip("locked", f"another scheduler holds {self.lock_key}")
        self.metrics.run_started()
        started = time.monotonic()
        run_id = new_run_id()  # named here: its record is found by it (to publish, or to mark killed)
        try:
            status = self._run(lock, run_id)
        finally:
            lock.release()
            self.metrics.running.set(0)
        self.metrics.runs.labels(status).inc()
        self.metrics.last_run_seconds.set(time.monotonic() - started)
        self.metrics.last_run_end.set(time.time())
        record = self._record(run_id)
        if record is not None:
            self.metrics.record_run(record)
        log.info("training run %s in %.1f s", status, time.monotonic() - started)
        return status

    def _skip(self, reason: str, why: str, level: int = logging.INFO) -> str:
        self.metrics.skipped.labels(reason).inc()
        log.log(level, "tick skipped: %s", why)
        return reason

    def _acquire(self, lock: RunLock) -> bool | None:
        """Take the lock: True, or False when another holds it; retried with backoff while Redis
        does not answer, for up to the misfire grace (a later run is a missed tick), then None."""
        deadline = time.monotonic() + self.settings.scheduler.misfire_grace_s
        backoff = POLL_S
        while True:
            try:
                return lock.acquire()
            except redis.RedisError as exc:
                log.warning("training lock %s not taken, Redis did not answer: %s", self.lock_key, exc)
            if time.monotonic() + backoff > deadline or self._stopping.wait(backoff):
                return None
            backoff = min(2 * backoff, MAX_BACKOFF_S)

    def _run(self, lock: RunLock, run_id: str) -> str:
        command = [*self.command, "--run-id", run_id]
        log.info("training run %s starting: %s", run_id, " ".join(command))
        # Its progress goes to our stdout/stderr; it dies with this thread's process, so a scheduler
        # killed mid-run leaves no run going on without the lock.
        try:
            process = subprocess.Popen(command, env=self.env, preexec_fn=die_with_parent)
        except (OSError, subprocess.SubprocessError) as exc:
            log.error("training run %s could not start: %s", run_id, exc)
            return "failed"
        deadline = time.monotonic() + self.settings.scheduler.run_timeout_s
        keeper = LockKeeper(lock, self.settings.scheduler.lock_ttl_s, self.call_timeout_s, self.metrics.lock_renewals.inc,
                            retry_s=POLL_S)
        while True:
            try:
                code = process.wait(timeout=POLL_S)
                return "succeeded" if code == 0 else "failed"
            except subprocess.TimeoutExpired:
                pass
            if not keeper.keep():
                # Lost, or not confirmed in time (Redis down or hanging): another scheduler may take
                # it, and two runs must not go on at once: killed now.
                log.error("training lock lost: stopping run %s (resume it with recsys train run --resume)", run_id)
                process.kill()
                process.wait()
                self._mark_stopped(run_id, "stopped by the scheduler: its run lock was lost")
                return "lock_lost"
            if self._stopping.is_set() or time.monotonic() >= deadline:
                why = "the scheduler is stopping" if self._stopping.is_set() else "past scheduler.run_timeout_s"
                log.error("training run %s: %s: stopping it", run_id, why)
                self._stop(process, keeper, run_id, f"stopped by the scheduler: {why}")
                return "failed"

    def _stop(self, process: subprocess.Popen[bytes], keeper: LockKeeper, run_id: str, reason: str) -> None:
        """SIGTERM (the run records itself failed, resumable), SIGKILL after `scheduler.stop_grace_s`
        or as soon as the lock is lost (the lock kept meanwhile); a record the run left `running`
        is then marked failed for `reason`."""
        process.terminate()
        grace_ends = time.monotonic() + self.settings.scheduler.stop_grace_s
        while time.monotonic() < grace_ends and keeper.keep():
            try:
                process.wait(timeout=min(POLL_S, max(grace_ends - time.monotonic(), 0.01)))
                break
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            process.kill()
            process.wait()
        self._mark_stopped(run_id, reason)

    def _record(self, run_id: str) -> RunRecord | None:
        """The record of the run `run_id`; None when it wrote none (killed first) or not a readable one."""
        try:
            return RunStore(runs_dir(self.settings)).load(run_id)
        except (KeyError, ValueError):
            return None

    def _mark_stopped(self, run_id: str, reason: str) -> None:
        record = self._record(run_id)
        if record is not None and record.status == RUNNING:
            record.stop(reason)
            RunStore(runs_dir(self.settings)).save(record)
