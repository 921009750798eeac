"""`recsys train history`: lists the recorded runs and one run's steps, as a table or JSON; an
unknown run id is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from feature_store.settings import Settings
from pipelines.training.dag import runs_dir
from pipelines.training.executor import RetryPolicy, Step, StepContext, StepFailed, StepResult, run_steps
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


def test_stored_text_prints_as_written_and_a_retried_step_survives_its_own_error(settings: Settings) -> None:
    """Errors, triggers and data hold "[...]" and control characters: the console shows them as
    they are, never reads them as markup (a "[/x]" in the retry line raised and failed the step it
    retried) and never hands an ESC to the terminal."""
    from services.cli.train import show_step

    attempts = []

    def flaky(context: StepContext) -> StepResult:
        attempts.append(context.run_id)
        if len(attempts) == 1:
            raise OSError("cannot read [/data/batch/part-0]")
        return StepResult({}, {})

    def failing(context: StepContext) -> StepResult:
        raise ValueError("shape [n, 64] \x1b[31m")  # short: the table's column never wraps it

    store = RunStore(runs_dir(settings))
    retried = run_steps([Step("compact", flaky)], settings, store, RetryPolicy(retries=1, backoff_s=0),
                        trigger="[/manual]", progress=show_step)
    assert retried.status == "succeeded" and len(attempts) == 2
    with pytest.raises(StepFailed):
        run_steps([Step("embed", failing)], settings, store, RetryPolicy(), trigger="[/manual]", name="failed-run")
    listing = CliRunner().invoke(app, ["train", "history", "--state-dir", str(settings.state_dir)])
    assert listing.exit_code == 0 and "[/manual]" in listing.output, listing.output
    shown = CliRunner().invoke(app, ["train", "history", "--run", "failed-run", "--state-dir", str(settings.state_dir)])
    assert shown.exit_code == 0, shown.output
    assert "[n, 64]" in shown.output and "\\x1b[31m" in shown.output and "\x1b" not in shown.output


def test_names_with_a_trailing_newline_are_refused(settings: Settings) -> None:
    """`$` matches before a final newline: a run id or a registry name `abc\n` passed the checks."""
    from models.registry import ModelRegistry, RegistryError

    bad = CliRunner().invoke(app, ["train", "run", "--run-id", "abc\n", "--state-dir", str(settings.state_dir)])
    assert bad.exit_code == 2 and "--run-id 'abc\\n'" in bad.output, bad.output
    with pytest.raises(RegistryError, match="invalid"):
        ModelRegistry(settings.model_registry_dir).get("ranker", "abc\n")
