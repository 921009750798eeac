"""Runs the steps of a DAG in order with retries, a timeout per step, and resume.

Each step is a function of a `StepContext` returning a `StepResult` (outputs, metrics, inputs);
later steps read earlier steps' outputs from `context.outputs`. The run record is saved before and
after every step. Resuming a run (same run id) skips the steps that succeeded before and still
hold (`Step.still_valid`: their outputs are still there, their inputs unchanged) up to the first
that does not, and runs that one and every step after it (pending again): a run stopped by a
crash, a timeout or Ctrl-C continues from its first unfinished step, and a step that runs again
is followed by every step that may have used what it made before.

A step that raises is retried (a Spark or file-system hiccup), except on a `ValueError`: the data
or the settings are wrong (too few events to train on, a bad parameter), and the same input fails
the same way, so a retry would only delay the failure by its backoff.

A step runs in a worker thread so its timeout can be enforced: when it expires the step is
recorded `timed_out` and the run fails at once. Python cannot kill a thread, so a timed-out step
is not retried (its thread may still be writing); the process running the DAG is expected to
exit after a failed run (`recsys train run` does; the scheduler starts each run as a child
process for this reason).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from feature_store.settings import Settings
from pipelines.training.records import (
    FAILED, RUNNING, SUCCEEDED, TIMED_OUT, RunRecord, RunStore, StepRecord, new_run_id, now,
)  # fmt: skip

log = logging.getLogger(__name__)

#: (step name, event, record) with event one of "start", "end", "skip", "retry".
Progress = Callable[[str, str, StepRecord], None]


@dataclass
class StepContext:
    """What a step sees: the settings, its run, and the outputs of the steps before it."""

    settings: Settings
    run_id: str
    outputs: dict[str, Any]


@dataclass
class StepResult:
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One node of the DAG. `still_valid(context, outputs)` says whether a step that succeeded
    in an earlier attempt of the run can be skipped (its outputs still exist)."""

    name: str
    run: Callable[[StepContext], StepResult]
    still_valid: Callable[[StepContext, dict[str, Any]], bool] = lambda context, outputs: True


class StepFailed(RuntimeError):
    """A step failed after its retries, or timed out; the run stops there."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 1
    backoff_s: float = 5.0
    timeout_s: float = 3600.0


def run_steps(
    steps: Sequence[Step], settings: Settings, store: RunStore, policy: RetryPolicy,
    run_id: str | None = None, trigger: str = "manual", progress: Progress | None = None, name: str | None = None,
) -> RunRecord:  # fmt: skip
    """Run (or resume, when `run_id` names a stored run) the steps; return the finished record.
    `name`: the new run's id (default: `new_run_id()`). Raises StepFailed when a step fails for
    good; the record says which and why."""
    record = _open(steps, store, run_id, trigger, name)
    notify = progress or (lambda name, event, step: None)
    record.status, record.started_at, record.ended_at = RUNNING, record.started_at or now(), None
    store.save(record)
    try:
        skipping = True
        for index, step in enumerate(steps):
            if skipping and _still_done(step, record, settings):
                notify(step.name, "skip", record.step(step.name))
                continue
            if skipping:  # every step from here on runs: those after this one used what it made before
                record.steps[index:] = [StepRecord(entry.name) for entry in record.steps[index:]]
                skipping = False
            _run_one(step, record, StepContext(settings, record.run_id, record.outputs()), store, policy, notify)
    except BaseException:
        record.status, record.ended_at = FAILED, now()
        store.save(record)
        raise
    record.status, record.ended_at = SUCCEEDED, now()
    store.save(record)
    return record


def _open(steps: Sequence[Step], store: RunStore, run_id: str | None, trigger: str, name: str | None) -> RunRecord:
    if run_id is None:
        if name is not None and (store.root / f"{name}.json").exists():
            raise ValueError(f"a training run {name!r} exists: resume it with --resume, or name a new one")
        return RunRecord(name or new_run_id(), [StepRecord(step.name) for step in steps], trigger=trigger)
    record = store.load(run_id)
    if [s.name for s in record.steps] != [step.name for step in steps]:
        raise ValueError(f"run {run_id} has steps {[s.name for s in record.steps]}, not this DAG's")
    return record


def _still_done(step: Step, record: RunRecord, settings: Settings) -> bool:
    entry = record.step(step.name)
    context = StepContext(settings, record.run_id, record.outputs())
    return entry.status == SUCCEEDED and step.still_valid(context, entry.outputs)


def _run_one(step: Step, record: RunRecord, context: StepContext, store: RunStore, policy: RetryPolicy,
             notify: Progress) -> None:  # fmt: skip
    entry = record.step(step.name)
    entry.status, entry.error, entry.attempts = RUNNING, None, 0
    entry.started_at, entry.ended_at, entry.duration_s = now(), None, None
    store.save(record)
    notify(step.name, "start", entry)
    started = time.perf_counter()
    try:
        result = _attempts(step, context, entry, record, store, policy, notify)
    except BaseException as exc:
        timed_out = isinstance(exc, _TimedOut)
        entry.status, entry.error = (TIMED_OUT if timed_out else FAILED), f"{type(exc).__name__}: {exc}"
        _finish(entry, started, record, store, notify)
        if isinstance(exc, Exception):
            raise StepFailed(f"step {step.name} {entry.status}: {exc}") from exc
        raise
    entry.status, entry.outputs, entry.metrics, entry.inputs = SUCCEEDED, result.outputs, result.metrics, result.inputs
    _finish(entry, started, record, store, notify)


def _finish(entry: StepRecord, started: float, record: RunRecord, store: RunStore, notify: Progress) -> None:
    entry.ended_at, entry.duration_s = now(), round(time.perf_counter() - started, 3)
    store.save(record)
    notify(entry.name, "end", entry)


def _attempts(step: Step, context: StepContext, entry: StepRecord, record: RunRecord, store: RunStore,
              policy: RetryPolicy, notify: Progress) -> StepResult:  # fmt: skip
    attempt = 0
    while True:
        attempt += 1
        entry.attempts = attempt
        try:
            return _with_timeout(step, context, policy.timeout_s)
        except _TimedOut:
            raise
        except Exception as exc:
            if attempt > policy.retries or isinstance(exc, ValueError):
                raise
            entry.error = f"attempt {attempt}: {type(exc).__name__}: {exc}"
            store.save(record)
            notify(step.name, "retry", entry)
            log.warning("step %s attempt %d failed (%s); retrying", step.name, attempt, exc)
            time.sleep(policy.backoff_s * 2 ** (attempt - 1))


class _TimedOut(Exception):
    pass


def _with_timeout(step: Step, context: StepContext, timeout_s: float) -> StepResult:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = step.run(context)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, name=f"step-{step.name}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise _TimedOut(f"still running after {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]
