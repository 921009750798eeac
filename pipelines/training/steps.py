"""The steps of the training DAG, in order:

compact → attribution → batch views → ranker → embeddings + recall index + blend (whose order
choice re-ranks with the ranker just trained) → evaluate → gate → promote → notify serving.

Each is idempotent: the Spark jobs rewrite their outputs; training publishes a new registry
version that is not current (a resumed run skips a training step while its version still exists);
evaluate only reads (a resumed run skips it while each role's baseline and current version are
those it recorded); gate records the decision in the registry (a rewrite of the same record);
promote moves CURRENT only for a blessed candidate that is not already current, and only over the
version the gate compared it with.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx

from feature_store.settings import Settings
from models.registry import ROLES, ModelRegistry, RegistryError
from pipelines.training import gate
from pipelines.training.executor import Step, StepContext, StepResult
from pipelines.training.holdout import holdout_cutoff, newest_slice_split, read_positives

log = logging.getLogger(__name__)

BATCH_VIEWS = ("sequences", "item_graph", "batch_features", "ranking_samples")


def _spark_jobs(names: tuple[str, ...]) -> Any:
    def run(context: StepContext) -> StepResult:
        from pipelines.spark.runner import run_jobs
        from pipelines.spark.session import build_session

        spark = build_session(context.settings, "recsys-training")  # one session for the run (getOrCreate)
        summaries = {s.job: s.as_dict() for s in run_jobs(spark, context.settings, list(names))}
        outputs = {f"{job}_outputs": summary["outputs"] for job, summary in summaries.items()}
        return StepResult(outputs, summaries, {"events": str(context.settings.event_log_dir)})

    return run


def _spark_outputs_exist(context: StepContext, outputs: dict[str, Any]) -> bool:
    """A Spark step is still done while every local output it wrote exists (a remote URI, which
    only Spark's filesystem layer can list, is taken as present)."""
    paths = [path for key, listed in outputs.items() if key.endswith("_outputs") for path in listed]
    local = [path.removeprefix("file://") for path in paths if "://" not in path or path.startswith("file://")]
    return all(Path(path).exists() for path in local)


def _registry(context: StepContext) -> ModelRegistry:
    return ModelRegistry(context.settings.model_registry_dir)


def _samples(settings: Settings) -> Path:
    return settings.batch_dir / "samples"


def _version_exists(role: str) -> Any:
    def check(context: StepContext, outputs: dict[str, Any]) -> bool:
        try:
            _registry(context).get(role, outputs[f"{role}_version"])
        except (RegistryError, KeyError):
            return False
        return True

    return check


def embeddings(context: StepContext) -> StepResult:
    """Train the recall embeddings on everything before the held-out window, and (`training.blend`)
    the blend fitted on validation then refitted on the same data (`pipelines.training.blend`);
    publish, not current."""
    import tempfile

    from models.embeddings.skipgram import SkipGramConfig
    from models.embeddings.training import EmbeddingTrainingConfig, WalkConfig
    from pipelines.training import recall
    from pipelines.training.blend import attach_blend, validation_target_times
    from pipelines.training.rankers import choice_ranker

    settings, cfg = context.settings, context.settings.training
    positives = read_positives(settings)
    cutoff = holdout_cutoff(settings, positives)
    sequences = newest_slice_split(positives, cutoff).train_sequences()
    config = EmbeddingTrainingConfig(
        SkipGramConfig(dim=cfg.embedding_dim, epochs=cfg.embedding_epochs, seed=cfg.seed),
        WalkConfig(cfg.walks_per_node, cfg.walk_length), tuple(cfg.embedding_models),
    )  # fmt: skip
    run = recall.train_recall(sequences, config)
    choice_rows: dict[str, int] = {}
    if cfg.blend:
        with tempfile.TemporaryDirectory(dir=settings.state_dir if settings.state_dir.exists() else None) as scratch:
            served = context.outputs.get("ranker_version")
            targets = validation_target_times(positives, cutoff)
            ranker, choice_rows = (choice_ranker(settings, served, targets, _samples(settings), Path(scratch))
                                   if served and targets else (None, {}))  # fmt: skip
            attach_blend(run.artifact, sequences, config, settings, ranker)
    window = {"end": cutoff.isoformat(), "held_out_from": cutoff.isoformat(), "positives": len(positives)}
    version = recall.publish(settings, run, config.to_dict() | {"index_kind": "auto"}, window, run.metrics(), set_current=False)
    blend = {"blend": run.artifact.blend_summary(), "choice_ranker_rows": choice_rows} if run.artifact.blend is not None else {}
    return StepResult({"recall_version": version, "holdout_from": cutoff.isoformat()},
                      {"sequences": len(sequences), "items": len(run.graph.ids)} | run.metrics() | blend,
                      {"events": str(settings.event_log_dir)})  # fmt: skip


def ranker(context: StepContext) -> StepResult:
    """Train the ranker on the samples' train split (early stopping on validation); publish, not current."""
    from pipelines.training.rankers import fit_ranker

    run = fit_ranker(context.settings, _samples(context.settings), _registry(context))
    return StepResult({"ranker_version": run.version}, {"validation": run.result.validation, "best_epoch": run.result.best_epoch},
                      {"samples": str(_samples(context.settings))})  # fmt: skip


def evaluate(context: StepContext) -> StepResult:
    """Score each candidate and its baseline on the same held-out window."""
    from datetime import datetime

    registry, outputs = _registry(context), context.outputs
    evaluation: dict[str, Any] = {"held_out": {"ranker": f"split == 'test' of {_samples(context.settings)}"}}
    split = None
    if "recall_version" in outputs:
        split = newest_slice_split(read_positives(context.settings), datetime.fromisoformat(outputs["holdout_from"]))
        evaluation["held_out"] |= {"from": outputs["holdout_from"], "recall_users": len(split.test)}
    for role in _roles(outputs):
        candidate = registry.get(role, outputs[f"{role}_version"])
        base = gate.baseline_name(registry, role)
        entry: dict[str, Any] = {"candidate": candidate.version, "baseline": base, "current": registry.current_name(role)}
        entry["metrics"], entry["problems"] = _quality(role, candidate, split, context.settings)
        if role == "recall" and split is not None:
            entry["chance"] = gate.chance_metrics(split)  # the floors' reference (gate.thresholds)
            entry["problems"] += gate.window_problems(len(split.test), entry["chance"], context.settings.training.gate)
        if base is not None and base != candidate.version:
            try:
                baseline = registry.get(role, base)  # its folder deleted, its manifest damaged: recorded below
                registry.verify(baseline)  # a damaged file would fail deep in the model loader
                entry["baseline_metrics"], _ = _quality(role, baseline, split, context.settings)
            except Exception as exc:  # whatever keeps the baseline from scoring must not block every run
                entry["baseline_error"] = f"{type(exc).__name__}: {exc}"
        evaluation[role] = entry
    return StepResult({"evaluation": evaluation}, evaluation)


def _evaluation_holds(context: StepContext, outputs: dict[str, Any]) -> bool:
    """An evaluation still holds while each role's baseline and current version are those it
    recorded, or its candidate (blessed by this run's gate, made current by its promote)."""
    registry, evaluation = _registry(context), outputs["evaluation"]
    for role in _roles(evaluation):
        entry = evaluation[role]
        if gate.baseline_name(registry, role) not in (entry["baseline"], entry["candidate"]):
            return False
        if registry.current_name(role) not in (entry.get("current"), entry["candidate"]):
            return False
    return True


def _roles(found: dict[str, Any]) -> list[str]:
    """The roles a run trained (both in the DAG; a caller may gate one alone)."""
    return [role for role in ROLES if f"{role}_version" in found or role in found]


def _quality(role: str, version: Any, split: Any, settings: Settings) -> tuple[dict[str, float], list[str]]:
    if role == "recall":
        artifact = gate.load_recall(version)
        problems = gate.recall_problems(artifact)  # a broken artifact is not scored: its searches may fail
        return ({} if problems else gate.recall_quality(artifact, split)), problems
    metrics = gate.ranker_quality(version.path, _samples(settings))
    return metrics, gate.ranker_problems(metrics)


def decide(context: StepContext) -> StepResult:
    """Apply the gate to the evaluation; record each decision and bless the candidates that pass."""
    registry, evaluation = _registry(context), context.outputs["evaluation"]
    decisions = {}
    for role in _roles(evaluation):
        entry = evaluation[role]
        decision = gate.decide(role, entry["candidate"], entry["metrics"], entry["baseline"], entry.get("baseline_metrics"),
                               gate.thresholds(role, context.settings.training.gate, entry.get("chance")), entry["problems"])  # fmt: skip
        decision.held_out = evaluation["held_out"] | ({"baseline_error": entry["baseline_error"]} if "baseline_error" in entry else {})
        if decision.blessed:
            registry.bless(role, decision.candidate, decision.to_dict() | {"run_id": context.run_id})
        decisions[role] = decision.to_dict()
    return StepResult({"blessed": {role: d["blessed"] for role, d in decisions.items()}}, decisions)


def promote(context: StepContext) -> StepResult:
    """Make each blessed candidate current (a rejected one leaves the served version alone), only
    over the version its gate compared it with (ValueError when another one became current since)."""
    registry, outputs = _registry(context), context.outputs
    promoted: dict[str, str] = {}
    for role, blessed in outputs["blessed"].items():
        version = outputs[f"{role}_version"]
        if not blessed:
            continue
        _check_replaces_baseline(registry, role, version, outputs["evaluation"][role]["baseline"])
        registry.promote(role, version)  # by name: also over a CURRENT whose version is gone
        promoted[role] = version
    return StepResult({"promoted": promoted}, {"promoted": promoted})


def _check_replaces_baseline(registry: ModelRegistry, role: str, version: str, baseline: str | None) -> None:
    current = registry.current_name(role)
    if current not in (None, version, baseline):
        raise ValueError(f"{role}/{version} passed the gate against {baseline or 'no baseline'}, but {current} became "
                         "current since: resume the run to evaluate it against that one")


def notify(context: StepContext) -> StepResult:
    """Ask each configured API to reload now; every worker also polls CURRENT on its own
    (`api.model_poll_interval_s`), so an unreachable URL is recorded, not fatal."""
    settings = context.settings
    if not context.outputs["promoted"]:
        return StepResult({"notified": []}, {"reason": "nothing promoted"})
    keys = [key.get_secret_value() for key in settings.api.api_keys]
    headers = {"X-API-Key": keys[0]} if keys else {}
    results: dict[str, Any] = {}
    for url in settings.training.notify_urls:
        try:
            response = httpx.post(f"{url.rstrip('/')}/v1/admin/models/reload", headers=headers, timeout=30.0)
            results[url] = _reply(response)
        except httpx.HTTPError as exc:
            results[url] = f"{type(exc).__name__}: {exc}"
            log.warning("notify %s failed: %s", url, exc)
    return StepResult({"notified": list(results)}, {"responses": results, "poll_interval_s": settings.api.model_poll_interval_s})


def _reply(response: httpx.Response) -> Any:
    """The API's answer to a reload, else the status and the start of what came back instead."""
    if response.status_code == 200:
        try:
            return response.json()
        except ValueError:  # a 200 from something else (a proxy's page, another service on the port)
            pass
    return f"HTTP {response.status_code}: {response.text[:200]}"


def training_steps() -> list[Step]:
    return [
        Step("compact", _spark_jobs(("compact",)), _spark_outputs_exist),
        Step("attribution", _spark_jobs(("attribution",)), _spark_outputs_exist),
        Step("batch_views", _spark_jobs(BATCH_VIEWS), _spark_outputs_exist),
        Step("ranker", ranker, _version_exists("ranker")),
        Step("embeddings", embeddings, _version_exists("recall")),
        Step("evaluate", evaluate, _evaluation_holds),
        Step("gate", decide),
        Step("promote", promote),
        Step("notify", notify),
    ]
