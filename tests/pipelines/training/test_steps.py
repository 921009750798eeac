"""The DAG's evaluate, gate, promote and notify steps on a real registry and real run records, with
the model scoring replaced by fixed AUCs per version (the models are small files, not SavedModels):
a resumed run evaluates its candidate again once another version became current, or once its
ranker was trained again; promote refuses a candidate gated against another version than the one
it would replace; a served version that is gone or damaged is recorded as a baseline error and
replaced; an answer to notify that is not JSON is recorded."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from feature_store.settings import Settings
from models.registry import ModelRegistry
from pipelines.training import steps
from pipelines.training.dag import runs_dir
from pipelines.training.executor import RetryPolicy, Step, StepContext, StepFailed, StepResult, run_steps
from pipelines.training.records import RunRecord, RunStore
from tests.pipelines.training.conftest import planted_click_log

NO_RETRY = RetryPolicy(retries=0, backoff_s=0.0, timeout_s=60)


class Versions:
    """Ranker and recall versions published as small files, each scored with a fixed ranker AUC."""

    def __init__(self, registry: ModelRegistry, folder: Path) -> None:
        self.registry, self.folder = registry, folder
        self.auc: dict[str, float] = {}

    def publish(self, role: str, name: str, auc: float = 0.0) -> str:
        source = self.folder / name
        source.mkdir(parents=True)
        (source / "weights.bin").write_bytes(name.encode())
        version = self.registry.publish(role, source, {"params": {}, "data_window": {}, "metrics": {}})
        self.auc[version] = auc
        return version

    def served(self, name: str, auc: float) -> str:
        """A ranker blessed and made current, as an earlier run would leave it."""
        version = self.publish("ranker", name, auc)
        self.registry.bless("ranker", version, {"blessed": True})
        self.registry.promote("ranker", version)
        return version

    def quality(self, role: str, version: Any, split: Any, settings: Settings) -> tuple[dict[str, float], list[str]]:
        if role == "recall":  # below the floors: only the ranker is promoted
            return {"NDCG@10": 0.0, "HR@50": 0.0}, []
        return {"auc": self.auc[version.version], "gauc": self.auc[version.version]}, []


@pytest.fixture
def versions(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Versions:
    made = Versions(ModelRegistry(settings.model_registry_dir), tmp_path / "artifacts")
    monkeypatch.setattr(steps, "_quality", made.quality)
    return made


def _dag(versions: Versions, ranker_auc: float, stop_at_promote: bool = False) -> list[Step]:
    """The training DAG with its Spark and training steps' work stubbed (their checks on resume
    are the real ones): the ranker step publishes a ranker of `ranker_auc`; promote is stopped
    (as by a lost lock) when `stop_at_promote`."""
    def spark(context: StepContext) -> StepResult:
        return StepResult()

    def ranker(context: StepContext) -> StepResult:
        return StepResult({"ranker_version": versions.publish("ranker", f"ranker-{len(versions.auc)}", ranker_auc)})

    def embeddings(context: StepContext) -> StepResult:
        version = versions.publish("recall", f"recall-{len(versions.auc)}")
        return StepResult({"recall_version": version, "holdout_from": "2024-01-01T05:00:00+00:00"})

    def stopped(context: StepContext) -> StepResult:
        raise OSError("stopped by the scheduler: its run lock was lost")

    work = {"compact": spark, "attribution": spark, "batch_views": spark, "ranker": ranker, "embeddings": embeddings}
    work |= {"promote": stopped} if stop_at_promote else {}
    return [dataclasses.replace(step, run=work.get(step.name, step.run)) for step in steps.training_steps()]


def _stopped_at_promote(settings: Settings, versions: Versions, candidate_auc: float) -> RunRecord:
    """Run R1: its candidate gated (against the current ranker) and blessed, then stopped at promote."""
    planted_click_log(settings, users=30, length=8, step=timedelta(hours=1))
    with pytest.raises(StepFailed, match="step promote failed"):
        dag = _dag(versions, candidate_auc, stop_at_promote=True)
        run_steps(dag, settings, RunStore(runs_dir(settings)), NO_RETRY, name="R1")
    record = RunStore(runs_dir(settings)).load("R1")
    assert record.step("gate").outputs["blessed"]["ranker"], record.step("gate").metrics
    return record


def test_a_run_resumed_after_another_promoted_is_gated_again_against_the_new_current(
    settings: Settings, versions: Versions
) -> None:
    served = versions.served("A", auc=0.65)
    r1 = _stopped_at_promote(settings, versions, candidate_auc=0.70)
    c1, evaluated = r1.step("ranker").outputs["ranker_version"], r1.step("evaluate").outputs["evaluation"]["ranker"]
    assert (evaluated["candidate"], evaluated["baseline"], evaluated["baseline_metrics"]["auc"]) == (c1, served, 0.65)
    c2 = versions.served("C2", auc=0.80)  # another run promoted a better ranker meanwhile

    resumed = run_steps(_dag(versions, 0.0), settings, RunStore(runs_dir(settings)), NO_RETRY, run_id="R1")
    assert versions.registry.current_name("ranker") == c2 and resumed.step("promote").outputs == {"promoted": {}}
    evaluation = resumed.step("evaluate").outputs["evaluation"]["ranker"]
    assert (evaluation["candidate"], evaluation["baseline"], evaluation["current"]) == (c1, c2, c2)
    assert resumed.step("gate").outputs["blessed"]["ranker"] is False  # 0.70 < 0.80 - 0.005
    assert resumed.step("ranker").started_at == r1.step("ranker").started_at  # its version is there: skipped


def test_a_resume_that_trains_the_ranker_again_evaluates_gates_and_promotes_the_new_one(
    settings: Settings, versions: Versions
) -> None:
    served = versions.served("A", auc=0.65)
    r1 = _stopped_at_promote(settings, versions, candidate_auc=0.70)
    old = r1.step("ranker").outputs["ranker_version"]
    shutil.rmtree(versions.registry.get("ranker", old).path)  # removed: the resume trains it again

    resumed = run_steps(_dag(versions, 0.72), settings, RunStore(runs_dir(settings)), NO_RETRY, run_id="R1")
    new = resumed.step("ranker").outputs["ranker_version"]
    assert new != old and resumed.status == "succeeded"
    for name in ("embeddings", "evaluate", "gate", "promote", "notify"):  # each after the ranker ran again
        assert resumed.step(name).started_at > resumed.step("ranker").started_at, name
    assert resumed.step("evaluate").outputs["evaluation"]["ranker"]["candidate"] == new
    assert resumed.step("promote").outputs["promoted"]["ranker"] == new
    assert versions.registry.current_name("ranker") == new
    assert versions.registry.history("ranker")[-1]["previous"] == served


def test_promote_refuses_a_candidate_gated_against_another_version_than_the_current(
    settings: Settings, versions: Versions
) -> None:
    served = versions.served("A", auc=0.65)
    r1 = _stopped_at_promote(settings, versions, candidate_auc=0.70)
    c2 = versions.served("C2", auc=0.80)  # promoted by hand between R1's gate and its promote
    with pytest.raises(ValueError, match=f"passed the gate against {served}, but {c2} became current since"):
        steps.promote(StepContext(settings, "R1", r1.outputs()))
    assert versions.registry.current_name("ranker") == c2


@pytest.mark.parametrize("damage", ["folder deleted", "manifest damaged"])
def test_a_served_version_that_cannot_be_read_is_a_baseline_error_and_is_replaced(
    settings: Settings, versions: Versions, damage: str
) -> None:
    served = versions.served("A", auc=0.65)
    if damage == "folder deleted":
        shutil.rmtree(versions.registry.root / "ranker" / served)
    else:
        (versions.registry.root / "ranker" / served / "manifest.json").write_text('{"trunc')
    candidate = versions.publish("ranker", "B", auc=0.70)
    context = StepContext(settings, "run", {"ranker_version": candidate})
    context.outputs |= steps.evaluate(context).outputs
    entry = context.outputs["evaluation"]["ranker"]
    assert entry["baseline"] == served and "baseline_metrics" not in entry
    assert ("no version" if damage == "folder deleted" else "manifest is not valid JSON") in entry["baseline_error"]

    context.outputs |= steps.decide(context).outputs  # the floors alone: blessed
    assert steps.promote(context).outputs == {"promoted": {"ranker": candidate}}
    assert versions.registry.current_name("ranker") == candidate
    assert versions.registry.history("ranker")[-1] | {"at": None} == {
        "at": None, "action": "promote", "version": candidate, "previous": served,
    }  # fmt: skip


@pytest.fixture
def page_server() -> Iterator[str]:
    """A server answering every POST with 200 and an HTML page (a proxy's, another service's)."""

    class Page(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = b"<html>maintenance</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_notify_records_an_answer_that_is_not_json(settings: Settings, page_server: str) -> None:
    training = settings.training.model_copy(update={"notify_urls": [page_server]})
    settings = settings.model_copy(update={"training": training})
    result = steps.notify(StepContext(settings, "run", {"promoted": {"ranker": "v1"}}))
    assert result.metrics["responses"] == {page_server: "HTTP 200: <html>maintenance</html>"}
