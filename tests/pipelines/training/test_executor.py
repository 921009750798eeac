"""The DAG executor on small real steps that write files: a failing step is retried, a stuck one
times out and fails the run, a resumed run skips what succeeded (while its output exists) and
redoes the rest, and every step's record holds status, attempts, duration, inputs, outputs and
metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from feature_store.settings import Settings
from pipelines.training.executor import RetryPolicy, Step, StepContext, StepFailed, StepResult, run_steps
from pipelines.training.records import RunStore


class Steps:
    """Three steps writing `a.txt`, `b.txt` (failing its first `b_failures` attempts) and `c.txt`,
    counting how often each ran."""

    def __init__(self, folder: Path, b_failures: int = 0, block_c: threading.Event | None = None) -> None:
        self.folder, self.b_failures, self.block_c = folder, b_failures, block_c
        self.calls = {"a": 0, "b": 0, "c": 0}

    def step(self, name: str) -> Step:
        def run(context: StepContext) -> StepResult:
            self.calls[name] += 1
            if name == "b" and self.calls["b"] <= self.b_failures:
                raise OSError(f"b failed on call {self.calls['b']}")
            if name == "c" and self.block_c is not None:
                self.block_c.wait(30)
            path = self.folder / f"{name}.txt"
            path.write_text(f"{name} after {sorted(context.outputs)}")
            return StepResult({f"{name}_path": str(path)}, {"calls": self.calls[name]}, {"upstream": sorted(context.outputs)})

        return Step(name, run, lambda context, outputs: Path(outputs[f"{name}_path"]).exists())

    def all(self) -> list[Step]:
        return [self.step(name) for name in "abc"]


def test_retry_then_success_records_every_step(settings: Settings, tmp_path: Path) -> None:
    store, dag = RunStore(tmp_path / "runs"), Steps(tmp_path, b_failures=1)
    record = run_steps(dag.all(), settings, store, RetryPolicy(retries=1, backoff_s=0.0, timeout_s=30))
    saved = store.load(record.run_id)
    assert saved.status == "succeeded" and dag.calls == {"a": 1, "b": 2, "c": 1}
    b = saved.step("b")
    assert (b.status, b.attempts, b.error) == ("succeeded", 2, "attempt 1: OSError: b failed on call 1")
    assert saved.step("c").inputs == {"upstream": ["a_path", "b_path"]} and saved.step("c").metrics == {"calls": 1}
    assert all(step.duration_s is not None and step.duration_s >= 0 for step in saved.steps)
    assert (tmp_path / "c.txt").read_text() == "c after ['a_path', 'b_path']"


def test_failure_after_retries_then_resume_skips_what_succeeded(settings: Settings, tmp_path: Path) -> None:
    store, dag = RunStore(tmp_path / "runs"), Steps(tmp_path, b_failures=2)
    policy = RetryPolicy(retries=1, backoff_s=0.0, timeout_s=30)
    with pytest.raises(StepFailed, match="step b failed: b failed on call 2"):
        run_steps(dag.all(), settings, store, policy)
    failed = store.runs()[0]
    assert failed.status == "failed" and [s.status for s in failed.steps] == ["succeeded", "failed", "pending"]

    (tmp_path / "a.txt").unlink()  # a's output is gone: resuming must redo it
    run_steps(dag.all(), settings, store, policy, run_id=failed.run_id)
    assert dag.calls == {"a": 2, "b": 3, "c": 1}
    run_steps(dag.all(), settings, store, policy, run_id=failed.run_id)  # everything there: nothing reruns
    assert dag.calls == {"a": 2, "b": 3, "c": 1} and store.load(failed.run_id).status == "succeeded"
    assert len(store.runs()) == 1


def test_a_step_that_runs_again_on_resume_is_followed_by_every_step_after_it(settings: Settings, tmp_path: Path) -> None:
    """c used what b made: when b runs again (its output is gone), c runs again too, and until it
    has, the record holds no stale outcome of c."""
    store, dag = RunStore(tmp_path / "runs"), Steps(tmp_path)
    policy = RetryPolicy(retries=0, backoff_s=0.0, timeout_s=30)
    run_id = run_steps(dag.all(), settings, store, policy).run_id
    (tmp_path / "b.txt").unlink()
    dag.b_failures = 2  # the rerun of b fails once
    with pytest.raises(StepFailed, match="step b failed"):
        run_steps(dag.all(), settings, store, policy, run_id=run_id)
    failed = store.load(run_id)
    assert [(s.status, s.outputs) for s in failed.steps[1:]] == [("failed", {}), ("pending", {})]
    run_steps(dag.all(), settings, store, policy, run_id=run_id)
    assert dag.calls == {"a": 1, "b": 3, "c": 2} and store.load(run_id).status == "succeeded"


def test_a_step_past_its_timeout_fails_the_run_without_retry(settings: Settings, tmp_path: Path) -> None:
    release = threading.Event()
    store, dag = RunStore(tmp_path / "runs"), Steps(tmp_path, block_c=release)
    try:
        with pytest.raises(StepFailed, match="step c timed_out: still running after 0.5 s"):
            run_steps(dag.all(), settings, store, RetryPolicy(retries=3, backoff_s=0.0, timeout_s=0.5))
    finally:
        release.set()
    record = store.runs()[0]
    assert record.status == "failed" and record.step("c").status == "timed_out" and record.step("c").attempts == 1
    assert dag.calls["c"] == 1


def test_an_undefined_metric_is_recorded_as_null_not_the_non_json_nan(settings: Settings, tmp_path: Path) -> None:
    def one_class_auc(context: StepContext) -> StepResult:
        return StepResult({}, {"auc": float("nan"), "rows": 3.0}, {})

    store = RunStore(tmp_path / "runs")
    record = run_steps([Step("rank", one_class_auc, lambda context, outputs: True)], settings, store,
                       RetryPolicy(retries=0, backoff_s=0.0, timeout_s=30))  # fmt: skip
    text = (tmp_path / "runs" / f"{record.run_id}.json").read_text(encoding="utf-8")
    assert "NaN" not in text
    assert store.load(record.run_id).step("rank").metrics == {"auc": None, "rows": 3.0}


def test_a_step_refusing_its_data_fails_at_once_without_the_retries(settings: Settings, tmp_path: Path) -> None:
    calls = []

    def too_few_events(context: StepContext) -> StepResult:
        calls.append(1)
        raise ValueError("no sequence has two or more known items: nothing to train on")

    store = RunStore(tmp_path / "runs")
    with pytest.raises(StepFailed, match="nothing to train on"):
        run_steps([Step("embeddings", too_few_events, lambda context, outputs: True)], settings, store,
                  RetryPolicy(retries=3, backoff_s=0.0, timeout_s=30))  # fmt: skip
    assert len(calls) == 1 and store.runs()[0].step("embeddings").attempts == 1


# `recsys train run` runs the DAG under `sigterm_exits`, as here.
STOPPED_BY_SIGTERM = """
import sys, time
from pathlib import Path
from feature_store.processes import sigterm_exits
from feature_store.settings import Settings
from pipelines.training.executor import RetryPolicy, Step, StepResult, run_steps
from pipelines.training.records import RunStore
folder = Path(sys.argv[1])
def block(context):
    (folder / "started").touch()
    time.sleep(300)
    return StepResult({}, {}, {})
with sigterm_exits():
    run_steps([Step("long", block, lambda context, outputs: True)], Settings(state_dir=folder / "state"),
              RunStore(folder / "runs"), RetryPolicy(retries=0, backoff_s=0.0, timeout_s=600))
"""


def test_a_run_stopped_by_sigterm_is_recorded_failed_not_left_running(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", STOPPED_BY_SIGTERM, str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "started").exists():
            assert time.monotonic() < deadline and process.poll() is None, "the step never started"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 143
    finally:
        if process.poll() is None:
            process.kill()
    (record,) = RunStore(tmp_path / "runs").runs()
    assert record.status == "failed" and record.steps[0].status == "failed" and record.steps[0].error == "SystemExit: 143"
