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


def _resumable_at_promote(settings: Settings, run_id: str) -> None:
    """A run of the training DAG that stopped before promote, whose gate blessed a ranker the
    registry holds no blessing of (removed since): resuming it fails at promote, at once."""
    from models.registry import ModelRegistry
    from pipelines.training.records import RunRecord, StepRecord
    from pipelines.training.steps import training_steps

    registry = ModelRegistry(settings.model_registry_dir)
    published = {}
    for role in ("ranker", "recall"):
        folder = settings.state_dir / f"{role}-artifact"
        folder.mkdir(parents=True)
        (folder / "weights.bin").write_bytes(b"w")
        published[role] = registry.publish(role, folder, {"params": {}, "data_window": {}, "metrics": {}})
    unchanged = {"baseline": None, "current": None}
    outputs = {
        "ranker": {"ranker_version": published["ranker"]}, "embeddings": {"recall_version": published["recall"]},
        "evaluate": {"evaluation": {role: {"candidate": v} | unchanged for role, v in published.items()}},
        "gate": {"blessed": {"ranker": True, "recall": False}},
    }  # fmt: skip
    steps = [StepRecord(step.name, "succeeded", 1, outputs=outputs.get(step.name, {})) for step in training_steps()]
    steps[-2].status = steps[-1].status = "pending"  # promote, notify
    RunStore(runs_dir(settings)).save(RunRecord(run_id, steps, "failed", started_at="2024-01-01T00:00:00+00:00"))


def test_runs_are_listed_by_start_and_a_failed_resume_shows_the_run_it_resumed(settings: Settings, tmp_path: Path) -> None:
    store = RunStore(runs_dir(settings))
    _resumable_at_promote(settings, "nightly-2024")  # named: sorted by its name, it was the newest
    later = run_steps([_write(tmp_path / "later")], settings, store, RetryPolicy())
    assert [run.run_id for run in store.runs()] == [later.run_id, "nightly-2024"]
    assert store.runs(1)[0].run_id == later.run_id

    resumed = CliRunner().invoke(app, ["train", "run", "--resume", "nightly-2024", "--state-dir", str(settings.state_dir)],
                                 env={"RECSYS_TRAINING__STEP_RETRIES": "0"})  # fmt: skip
    assert resumed.exit_code == 1 and "step promote failed" in resumed.output, resumed.output
    assert "nightly-2024" in resumed.output and later.run_id not in resumed.output, resumed.output


def test_history_shows_whole_run_and_version_ids_at_80_columns(settings: Settings) -> None:
    """Piped at 80 columns, a run that blessed and promoted both roles: `recsys train history --run`
    and `recsys models promote` take the ids as the table shows them."""
    from tests.services.test_cli_errors import recsys

    versions = {"recall": "20261208T011028186852Z-1a2b3c", "ranker": "20261208T011031554120Z-4d5e6f"}

    def publish(context: StepContext) -> StepResult:
        return StepResult({"blessed": dict.fromkeys(versions, True), "promoted": versions}, {})

    run = run_steps([Step("promote", publish)], settings, RunStore(runs_dir(settings)), RetryPolicy(),
                    name="20261208T011028Z-scheduled-nightly-retrain")
    listing = recsys("train", "history", "--state-dir", str(settings.state_dir), columns=80)
    assert listing.returncode == 0, listing.stderr
    assert run.run_id in listing.stderr and all(v in listing.stderr for v in versions.values()), listing.stderr
