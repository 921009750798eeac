"""Prometheus metrics of the scheduler: ticks, runs by outcome, skips by reason, and the last
run's per-step durations and statuses (from its run record)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from pipelines.training.records import RunRecord

STEP_STATUSES = ("pending", "running", "succeeded", "failed", "timed_out")


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.ticks = Counter("recsys_training_ticks_total", "Cron ticks seen", registry=r)
        self.runs = Counter("recsys_training_runs_total", "Training runs by outcome", ["status"], registry=r)
        self.skipped = Counter("recsys_training_skipped_total", "Ticks that started no run", ["reason"], registry=r)
        self.lock_renewals = Counter("recsys_training_lock_renewals_total", "Renewals of the run lock's TTL during runs", registry=r)
        self.running = Gauge("recsys_training_running", "1 while this scheduler runs the DAG", registry=r)
        self.last_run_end = Gauge("recsys_training_last_run_end_timestamp_seconds", "When the last run ended", registry=r)
        self.last_run_seconds = Gauge("recsys_training_last_run_seconds", "Wall time of the last run", registry=r)
        self.step_seconds = Gauge("recsys_training_step_seconds", "Duration of each step of the last run", ["step"], registry=r)
        self.step_status = Gauge("recsys_training_step_status", "1 for each step's status in the last run", ["step", "status"],
                                 registry=r)  # fmt: skip

    def run_started(self) -> None:
        """A run begins: the step series go until its record is published, so they never show an
        older run's steps (one that wrote no record, or had other steps)."""
        self.running.set(1)
        self.step_seconds.clear()
        self.step_status.clear()

    def record_run(self, record: RunRecord) -> None:
        """Publish one run record's per-step numbers."""
        for step in record.steps:
            self.step_seconds.labels(step.name).set(step.duration_s or 0.0)
            for status in STEP_STATUSES:
                self.step_status.labels(step.name, status).set(1.0 if step.status == status else 0.0)
