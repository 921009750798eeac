"""`recsys train history`: lists the recorded runs and one run's steps, as a table or JSON; an
unknown run id is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feature_store.settings import Settings
from pipelines.training.dag import runs_dir
from pipelines.training.executor import RetryPolicy, Step, StepContext, StepResult, run_steps
from pipelines.training.records import RunStore
from services.cli import app


def _write(path: Path) -> Step:
    def run(context: StepContext) -> StepResult:
        path.write_text(context.run_id)
        return StepResult({"written": str(path)}, {"bytes": len(context.run_id)})

    return Step(path.stem, run)


def test_history_lists_runs_and_one_runs_steps(settings: Settings, tmp_path: Path) -> None:
    store = RunStore(runs_dir(settings))
    runs = [run_steps([_write(tmp_path / "first"), _write(tmp_path / "second")], settings, store, RetryPolicy()) for _ in range(2)]
    state = ["--state-dir", str(settings.state_dir)]
    listing = CliRunner().invoke(app, ["train", "history", *state])
    assert listing.exit_code == 0 and all(run.run_id in listing.output for run in runs), listing.output

    shown = CliRunner().invoke(app, ["train", "history", "--run", runs[0].run_id, "--json", *state])
    assert shown.exit_code == 0, shown.output
    (record,) = json.loads(shown.output)
    assert record["status"] == "succeeded" and [s["name"] for s in record["steps"]] == ["first", "second"]
    assert record["steps"][1]["metrics"] == {"bytes": len(runs[0].run_id)}

    record_file = runs_dir(settings) / f"{runs[0].run_id}.json"  # a one-class validation AUC is NaN
    stored = json.loads(record_file.read_text())
    stored["steps"][1]["metrics"] = {"auc": float("nan")}
    record_file.write_text(json.dumps(stored))
    shown = CliRunner().invoke(app, ["train", "history", "--run", runs[0].run_id, "--json", *state])
    strict = json.loads(shown.output, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert strict[0]["steps"][1]["metrics"] == {"auc": None}

    missing = CliRunner().invoke(app, ["train", "history", "--run", "nope", *state])
    assert missing.exit_code == 2 and "error: no training run 'nope'" in missing.output
    resume = CliRunner().invoke(app, ["train", "run", "--resume", "nope", *state])
    assert resume.exit_code == 2 and "error: no training run 'nope'" in resume.output  # not quoted as a KeyError

    broken = runs_dir(settings) / "20990101T000000000000Z-crashed.json"  # newest: listed first if it read
    broken.write_text("")
    listing = CliRunner().invoke(app, ["train", "history", *state])
    assert listing.exit_code == 0 and all(run.run_id in listing.output for run in runs), listing.output
    shown = CliRunner().invoke(app, ["train", "history", "--run", broken.stem, *state])
    assert shown.exit_code == 2 and "not a readable run record" in shown.output
