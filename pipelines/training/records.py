"""Run records of the training DAG: one JSON file per run under `<state_dir>/training/runs/`.

A run record holds the run id, its status and, per step, the status (pending, running,
succeeded, failed, timed_out, skipped), attempts, start/end times, duration, inputs, outputs
and metrics. It is rewritten atomically (temp file + rename) after every change, so a reader
(`recsys train history`, the scheduler's /metrics) never sees half a record, and a resumed run
finds which steps already succeeded and what they produced.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feature_store.json_values import json_safe

log = logging.getLogger(__name__)

PENDING, RUNNING, SUCCEEDED, FAILED, TIMED_OUT = "pending", "running", "succeeded", "failed", "timed_out"


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_run_id() -> str:
    """Sorts by start time; the suffix keeps two runs started in one second apart."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class StepRecord:
    """One step of one run."""

    name: str
    status: str = PENDING
    attempts: int = 0
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunRecord:
    """One run of the DAG: its steps in order, and the run's own status and times."""

    run_id: str
    steps: list[StepRecord]
    status: str = PENDING
    trigger: str = "manual"
    started_at: str | None = None
    ended_at: str | None = None

    def step(self, name: str) -> StepRecord:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"run {self.run_id} has no step {name!r}")

    def outputs(self) -> dict[str, Any]:
        """Every succeeded step's outputs, merged in step order (what later steps read)."""
        merged: dict[str, Any] = {}
        for step in self.steps:
            if step.status == SUCCEEDED:
                merged.update(step.outputs)
        return merged

    def stop(self, reason: str) -> None:
        """Record the run, and its running step, as failed for `reason`: a process killed from
        outside (the scheduler's timeout) cannot record it itself."""
        ended = now()
        for step in self.steps:
            if step.status == RUNNING:
                step.status, step.error, step.ended_at = FAILED, reason, ended
        self.status, self.ended_at = FAILED, ended

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (an undefined metric, NaN, as None)."""
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        steps = [StepRecord(**step) for step in data.pop("steps")]
        return cls(steps=steps, **data)


class UnknownRunError(KeyError):
    """No run record of that id. A KeyError, printed as its message (a KeyError's str quotes it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class UnreadableRunError(ValueError):
    """A run record that is not a run record's JSON (a crash mid-write on an old version, a hand edit)."""


class RunStore:
    """Run records as `<root>/<run_id>.json`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def save(self, record: RunRecord) -> None:
        """Write the record durably (fsynced before the rename), so a crash leaves the old or the new one."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".{record.run_id}.{uuid.uuid4().hex}"
        with staging.open("w", encoding="utf-8") as handle:
            handle.write(json.dumps(record.to_dict(), indent=2, default=str))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(staging, self.root / f"{record.run_id}.json")

    def load(self, run_id: str) -> RunRecord:
        path = self.root / f"{run_id}.json"
        if not path.is_file():
            raise UnknownRunError(f"no training run {run_id!r} under {self.root}")
        try:
            return RunRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # not JSON, or not a record's fields
            raise UnreadableRunError(f"{path}: not a readable run record ({type(exc).__name__}: {exc})") from None

    def runs(self, limit: int | None = None) -> list[RunRecord]:
        """Run records, the latest started first (a run named with `--run-id` sorts by its start,
        not its name); an unreadable one is logged and left out."""
        if not self.root.is_dir():
            return []
        records: list[RunRecord] = []
        for path in self.root.glob("*.json"):
            if path.name.startswith("."):
                continue
            try:
                records.append(self.load(path.stem))
            except UnreadableRunError as exc:
                log.warning("%s", exc)
        return sorted(records, key=_started, reverse=True)[:limit]


def _started(record: RunRecord) -> tuple[datetime, str]:
    """When the run first started (its id breaks ties); a record that never started sorts oldest."""
    started = datetime.fromisoformat(record.started_at) if record.started_at else datetime.min
    return started.replace(tzinfo=started.tzinfo or timezone.utc), record.run_id
