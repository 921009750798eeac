"""The offline pipeline behind ``recsys evaluate``: train recall and rankers on each user's
positives before the held-out one, then compare recall-only, recall -> Wide&Deep and
recall -> DIN with Pop and ItemKNN on leave-last-one-out, with bootstrap intervals over users.

The rankers' item embedding tables start from the recall stage's Item2vec vectors (trained on
the same training positives; `warm_start_items`): a training choice, not a feature, so the
serving path needs nothing it does not already have."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender, PopularityRecommender
from models.evaluation.end_to_end import (
    CandidateFeatures, RerankRecommender, SampleConfig, bootstrap_ci, per_user_metrics,
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
    ranker_epochs: int = 10
    ranker_embedding_dim: int = 16
    ranker_batch_size: int = 256
    ranker_learning_rate: float = 1e-3
    bootstrap_rounds: int = 1000
    baseline: str = "ItemKNN"
    warm_start: bool = True
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
    with single_threaded_faiss():
        return _run(split, sequences, categories, config, progress)


@contextmanager
def single_threaded_faiss() -> Iterator[None]:
    """Sample writing searches a small flat index tens of thousands of times, one query batch of
    a few vectors each; faiss's OpenMP threads cost more than they save there (3.5x slower per
    search measured on 2 busy cores), so they are switched off for the run and restored after."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _run(split: LeaveLastOut, sequences: list[list[str]], categories: Mapping[str, str], config: EvaluationConfig,
         progress: Progress | None) -> EvaluationResult:  # fmt: skip
    contenders, counts, validation = build_contenders(split, sequences, categories, config, progress)
    per_user = {
        name: per_user_metrics(model, split, (10, 50), _phase(progress, f"evaluate {name}"))
        for name, model in contenders.items()
    }
    return _summarise(per_user, config, counts, validation)


def build_contenders(
    split: LeaveLastOut, sequences: list[list[str]], categories: Mapping[str, str], config: EvaluationConfig,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], dict[str, int], dict[str, dict[str, float]]]:  # fmt: skip
    """Pop, ItemKNN, the recall stage and recall -> each ranker, all trained on ``split.train``;
    with the ranker sample counts and each ranker's validation metrics."""
    popular = PopularityRecommender(sequences)
    item_cf = ItemKNNRecommender(sequences)
    recall, embeddings = _build_recall(sequences, popular, item_cf, config)
    if progress is not None:
        progress("train recall", 1, 1)
    item_vectors = embeddings.get(config.recall_models[0]) if config.warm_start and config.recall_models else None
    features = CandidateFeatures(split, categories, config.samples.max_seq_len, config.samples.dense_features)
    contenders: dict[str, Any] = {"Pop": popular, "ItemKNN": item_cf, "recall only": recall}
    validation: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    if config.rankers:
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "samples.parquet"
            counts = write_training_samples(split, recall, features, config.samples, path,
                                            _phase(progress, "ranker samples"))  # fmt: skip
            for kind in config.rankers:
                score, spec, validation[kind] = _train_ranker(path, kind, config, item_vectors)
                if progress is not None:
                    progress(f"train {kind}", 1, 1)
                contenders[f"recall → {kind}"] = RerankRecommender(recall, features, spec, score, config.samples.recall_depth)
    return contenders, counts, validation


def with_recall(contenders: Mapping[str, Any], recall: Any, name: str) -> dict[str, Any]:
    """`recall` itself as contender `name`, and `name -> ranker` for each trained ranker of
    `contenders` (their `recall -> ranker`), the ranker unchanged over another recall stage."""
    out = {name: recall}
    for label, model in contenders.items():
        if isinstance(model, RerankRecommender):
            ranker = label.split(" → ", 1)[1]
            out[f"{name} → {ranker}"] = RerankRecommender(recall, model.features, model.spec, model.score, model.depth)
    return out


def _phase(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(name, done, total))


def _build_recall(sequences: Sequence[Sequence[str]], popular: PopularityRecommender, item_cf: ItemKNNRecommender,
                  config: EvaluationConfig) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """The multi-channel recall and the embeddings it searches (by model name)."""
    from models.embeddings.inputs import transition_graph
    from models.embeddings.skipgram import SkipGramConfig
    from models.embeddings.training import EmbeddingTrainingConfig, train_embeddings
    from models.embeddings.walks import ItemGraph
    from models.retrieval.artifact import RecallArtifact

    if not config.recall_models:
        from models.retrieval.multichannel import ItemCFChannel, MultiChannelRecall, PopularChannel

        return MultiChannelRecall([ItemCFChannel(item_cf), PopularChannel(popular.top)]), {}
    # Per-element Adagrad: end to end on ml-100k (seed 0) recall -> DIN NDCG@10 is 0.077 with it and
    # 0.068 with the trainer's row-wise default, although both score alike on neighbour HR@10.
    skipgram = SkipGramConfig(
        dim=config.embedding_dim, epochs=config.embedding_epochs, seed=config.seed, optimizer="adagrad"
    )
    graph = ItemGraph.from_edges(*transition_graph(sequences))
    trained = train_embeddings(sequences, graph, EmbeddingTrainingConfig(skipgram, models=config.recall_models))
    return RecallArtifact.build(trained.embeddings, popular).multichannel(item_cf), trained.embeddings


def _train_ranker(path: Path, kind: str, config: EvaluationConfig, item_vectors: Any = None) -> tuple[Any, Any, dict[str, float]]:
    """Train one ranker on the samples at ``path``; with ``item_vectors`` (`ItemEmbeddings`), its
    item embedding table starts from them (see `warm_start_items`)."""
    from models.ranking import build_model
    from models.ranking.dataset import build_spec, iter_batches
    from models.ranking.inference import compile_scorer
    from models.ranking.trainer import TrainConfig, Trainer, seed_everything

    spec = build_spec(path, config.samples.dense_features, config.samples.max_seq_len)
    seed_everything(config.seed)
    # The logistic baseline keeps its own defaults (no embeddings; a higher FTRL-style rate).
    params: dict[str, Any] = {}
    if kind != "lr":
        params = {"embedding_dim": config.ranker_embedding_dim, "learning_rate": config.ranker_learning_rate}
    model = build_model(kind, spec, **params)
    train_config = TrainConfig(epochs=config.ranker_epochs, batch_size=config.ranker_batch_size, seed=config.seed)
    trainer = Trainer(model, train_config, show_progress=False)
    if item_vectors is not None and hasattr(model, "item_embedding"):
        batch = next(b for b, _ in iter_batches(path, spec, "train", 2))
        batch.pop("label")
        model(batch, training=False)  # creates the embedding table
        warm_start_items(model, item_vectors)
    result = trainer.fit(path)
    scorer = compile_scorer(model)

    def score(batch: dict[str, np.ndarray]) -> np.ndarray:
        return scorer.score_batch(batch)["score"].numpy()

    return score, spec, result.validation


def warm_start_items(model: Any, vectors: Any) -> None:
    """Set the ranker's item embedding rows to the recall stage's vectors of the same items
    (trained on the same training positives), reduced by PCA to the table's width and scaled
    to the table's initial spread; items without a vector keep their random start."""
    table = model.item_embedding.embeddings
    weights = np.array(table.numpy())
    vocabulary = model.item_lookup.get_vocabulary()  # [PAD, OOV, *spec.item_vocab]
    position = vectors.position()
    rows = [(row, position[item]) for row, item in enumerate(vocabulary) if row >= 2 and item in position]
    if not rows:
        return
    centred = vectors.vectors - vectors.vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ components[: weights.shape[1]].T
    width = weights.shape[1]
    if reduced.shape[1] < width:  # fewer components than the table is wide: pad with zeros
        reduced = np.pad(reduced, ((0, 0), (0, width - reduced.shape[1])))
    reduced *= weights[2:].std() / max(float(reduced.std()), 1e-12)
    target, source = zip(*rows)
    weights[list(target)] = reduced[list(source)]
    table.assign(weights)


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
