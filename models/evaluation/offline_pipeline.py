"""The offline pipeline behind ``recsys evaluate``: train recall and rankers on each user's
positives before the held-out one, then compare recall-only, recall -> Wide&Deep and
recall -> DIN with Pop and ItemKNN on leave-last-one-out, with bootstrap intervals over users."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender, PopularityRecommender
from models.evaluation.end_to_end import (
    DENSE_FEATURES, CandidateFeatures, RerankRecommender, SampleConfig, bootstrap_ci, per_user_metrics,
    write_training_samples,
)  # fmt: skip
from models.evaluation.split import LeaveLastOut

Progress = Callable[[str, int, int], None]  # (phase, done, total)
METRICS = ("HR@10", "NDCG@10", "HR@50")


@dataclass(frozen=True)
class EvaluationConfig:
    """What to train: embedding models for recall, rankers, and their sizes."""

    recall_models: tuple[str, ...] = ("item2vec",)
    rankers: tuple[str, ...] = ("wide_deep", "din")
    samples: SampleConfig = field(default_factory=SampleConfig)
    embedding_dim: int = 64
    embedding_epochs: int = 5
    ranker_epochs: int = 5
    ranker_embedding_dim: int = 16
    bootstrap_rounds: int = 1000
    baseline: str = "ItemKNN"
    seed: int = 0


@dataclass
class EvaluationResult:
    """Per-model mean, CI and per-user values of each metric, plus paired differences vs the
    baseline (``diff[model][metric] = (mean, low, high)``)."""

    users: int
    per_user: dict[str, dict[str, np.ndarray]]
    summary: dict[str, dict[str, tuple[float, float, float]]]
    diff: dict[str, dict[str, tuple[float, float, float]]]
    sample_counts: dict[str, int]
    ranker_validation: dict[str, dict[str, float]]


def run_offline_evaluation(
    split: LeaveLastOut, categories: Mapping[str, str], config: EvaluationConfig,
    progress: Progress | None = None,
) -> EvaluationResult:  # fmt: skip
    """Train everything on ``split.train`` only and evaluate every model on ``split.test``."""
    sequences = split.train_sequences()
    if not split.test:
        raise ValueError("no user has a held-out item: every user needs at least 2 positives")
    popular = PopularityRecommender(sequences)
    item_cf = ItemKNNRecommender(sequences)
    recall = _build_recall(sequences, popular, item_cf, config)
    features = CandidateFeatures(split.train, categories, config.samples.max_seq_len)
    contenders: dict[str, Any] = {"Pop": popular, "ItemKNN": item_cf, "recall only": recall}
    validation: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    if config.rankers:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "samples.parquet"
            counts = write_training_samples(split, recall, features, config.samples, path,
                                            _phase(progress, "ranker samples"))  # fmt: skip
            for kind in config.rankers:
                score, spec, validation[kind] = _train_ranker(path, kind, config)
                contenders[f"recall → {kind}"] = RerankRecommender(recall, features, spec, score, config.samples.recall_depth)
    per_user = {
        name: per_user_metrics(model, split, (10, 50), _phase(progress, f"evaluate {name}"))
        for name, model in contenders.items()
    }
    return _summarise(per_user, config, counts, validation)


def _phase(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(name, done, total))


def _build_recall(sequences: Sequence[Sequence[str]], popular: PopularityRecommender, item_cf: ItemKNNRecommender,
                  config: EvaluationConfig) -> Any:  # fmt: skip
    from models.embeddings.inputs import transition_graph
    from models.embeddings.skipgram import SkipGramConfig
    from models.embeddings.training import EmbeddingTrainingConfig, train_embeddings
    from models.embeddings.walks import ItemGraph
    from models.retrieval.artifact import RecallArtifact

    if not config.recall_models:
        from models.retrieval.multichannel import ItemCFChannel, MultiChannelRecall, PopularChannel

        return MultiChannelRecall([ItemCFChannel(item_cf), PopularChannel(popular.top)])
    skipgram = SkipGramConfig(dim=config.embedding_dim, epochs=config.embedding_epochs, seed=config.seed)
    graph = ItemGraph.from_edges(*transition_graph(sequences))
    trained = train_embeddings(sequences, graph, EmbeddingTrainingConfig(skipgram, models=config.recall_models))
    return RecallArtifact.build(trained.embeddings, popular).multichannel(item_cf)


def _train_ranker(path: Path, kind: str, config: EvaluationConfig) -> tuple[Any, Any, dict[str, float]]:
    from models.ranking import build_model
    from models.ranking.dataset import build_spec
    from models.ranking.inference import compile_scorer
    from models.ranking.trainer import TrainConfig, Trainer, seed_everything

    spec = build_spec(path, DENSE_FEATURES, config.samples.max_seq_len)
    seed_everything(config.seed)
    params = {} if kind == "lr" else {"embedding_dim": config.ranker_embedding_dim}
    model = build_model(kind, spec, **params)
    trainer = Trainer(model, TrainConfig(epochs=config.ranker_epochs, seed=config.seed), show_progress=False)
    result = trainer.fit(path)
    scorer = compile_scorer(model)

    def score(batch: dict[str, np.ndarray]) -> np.ndarray:
        return scorer.score_batch(batch)["score"].numpy()

    return score, spec, result.validation


def _summarise(per_user: dict[str, dict[str, np.ndarray]], config: EvaluationConfig, counts: dict[str, int],
               validation: dict[str, dict[str, float]]) -> EvaluationResult:  # fmt: skip
    summary: dict[str, dict[str, tuple[float, float, float]]] = {}
    diff: dict[str, dict[str, tuple[float, float, float]]] = {}
    base = per_user.get(config.baseline)
    for name, values in per_user.items():
        summary[name] = {m: (float(values[m].mean()), *bootstrap_ci(values[m], config.bootstrap_rounds, seed=config.seed)) for m in METRICS}
        if base is not None and name != config.baseline:
            diff[name] = {}
            for m in METRICS:
                delta = values[m] - base[m]  # paired: same users, same order
                diff[name][m] = (float(delta.mean()), *bootstrap_ci(delta, config.bootstrap_rounds, seed=config.seed))
    users = len(next(iter(per_user.values()))["HR@10"])
    return EvaluationResult(users, per_user, summary, diff, counts, validation)
