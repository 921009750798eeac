"""One ranker training run end to end: spec -> train -> evaluate (with baselines) -> export ->
publish. The ``recsys train ranker`` command is a thin wrapper around `train_ranker`."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.ranking import build_model, samples
from models.ranking.baselines import PopularityRanker
from models.ranking.dataset import build_spec, open_samples
from models.ranking.export import build_manifest, export_ranker, publish_ranker
from models.ranking.trainer import TrainConfig, Trainer, TrainResult, seed_everything
from models.registry import ModelRegistry

LR_BASELINE = "lr"
POPULARITY_BASELINE = "popularity"


@dataclass
class RankerRun:
    """Outcome of `train_ranker`: metrics per model per split, and the published version."""

    kind: str
    result: TrainResult
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    version: str | None = None


def resolve_dense_features(path: Path, names: Sequence[str] | None) -> tuple[str, ...]:
    """The given dense feature names, or every extra numeric column of the samples if None."""
    if names is not None:
        return tuple(names)
    return samples.infer_dense_features(open_samples(path, ()).schema)


def train_ranker(
    path: Path,
    kind: str,
    *,
    dense_features: Sequence[str] | None = None,
    max_seq_len: int = samples.DEFAULT_MAX_SEQ_LEN,
    model_params: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    evaluate_baselines: bool = False,
    registry: ModelRegistry | None = None,
    set_current: bool = True,
    show_progress: bool = True,
) -> RankerRun:
    """Train ``kind`` on the samples at ``path``; with ``evaluate_baselines`` also train the LR
    baseline and fit popularity, and score all of them on validation and test."""
    config = config or TrainConfig()
    spec = build_spec(path, resolve_dense_features(path, dense_features), max_seq_len)
    seed_everything(config.seed)
    model = build_model(kind, spec, **(model_params or {}))
    trainer = Trainer(model, config, show_progress=show_progress)
    run = RankerRun(kind=kind, result=trainer.fit(path))
    run.metrics[kind] = {"validation": run.result.validation, "test": _maybe_test(trainer, path)}
    if evaluate_baselines:
        run.metrics.update(_baselines(path, spec, config, show_progress, kind))
    if registry is not None:
        manifest = build_manifest(model, config, run.result, run.metrics)
        with tempfile.TemporaryDirectory() as scratch:
            artifact = export_ranker(model, Path(scratch) / "ranker")
            run.version = publish_ranker(registry, artifact, manifest, set_current=set_current)
    return run


def _maybe_test(trainer: Trainer, path: Path) -> dict[str, float]:
    try:
        return trainer.evaluate(path, "test")
    except ValueError:  # no test rows: report validation only
        return {}


def _baselines(
    path: Path, spec: Any, config: TrainConfig, show_progress: bool, kind: str
) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    if kind != LR_BASELINE:
        seed_everything(config.seed)
        lr_trainer = Trainer(build_model(LR_BASELINE, spec), config, show_progress=show_progress)
        lr_result = lr_trainer.fit(path)
        out[LR_BASELINE] = {
            "validation": lr_result.validation,
            "test": _maybe_test(lr_trainer, path),
        }
    popularity = PopularityRanker().fit(path, spec, config.eval_batch_size)
    out[POPULARITY_BASELINE] = {}
    for split in ("validation", "test"):
        try:
            out[POPULARITY_BASELINE][split] = popularity.evaluate(
                path, spec, split, config.eval_batch_size
            )
        except ValueError:  # the split has no rows
            out[POPULARITY_BASELINE][split] = {}
    return out
