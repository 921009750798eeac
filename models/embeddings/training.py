"""Train the three embedding models of the recall stage on the same sequences and graph:
Item2vec on user sequences, DeepWalk and Node2vec on walks over the item graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from models.embeddings.item_embeddings import ItemEmbeddings
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer, TrainingStats
from models.embeddings.walks import ItemGraph, RandomWalker

PhaseProgress = Callable[[str, float], None]  # (phase, share done)


@dataclass(frozen=True)
class WalkConfig:
    walks_per_node: int = 10
    walk_length: int = 40
    node2vec_p: float = 0.5
    node2vec_q: float = 2.0


@dataclass(frozen=True)
class EmbeddingTrainingConfig:
    skipgram: SkipGramConfig = field(default_factory=SkipGramConfig)
    walks: WalkConfig = field(default_factory=WalkConfig)
    models: tuple[str, ...] = ("item2vec", "deepwalk", "node2vec")

    def to_dict(self) -> dict[str, Any]:
        return {"skipgram": self.skipgram.to_dict(), "walks": asdict(self.walks), "models": list(self.models)}


@dataclass
class TrainedEmbeddings:
    embeddings: dict[str, ItemEmbeddings]
    stats: dict[str, TrainingStats]


def train_embeddings(
    sequences: Sequence[Sequence[str]], graph: ItemGraph, config: EmbeddingTrainingConfig,
    progress: PhaseProgress | None = None, walks: Mapping[str, Sequence[Sequence[str]]] | None = None,
) -> TrainedEmbeddings:  # fmt: skip
    """Train each model named in `config.models` with the same skip-gram hyper-parameters.

    DeepWalk/Node2vec train on `walks[name]` when given (e.g. from the Spark random_walks job),
    else on walks generated here from `graph`."""
    unknown = set(config.models) - {"item2vec", "deepwalk", "node2vec"}
    if unknown:
        raise ValueError(f"unknown embedding models {sorted(unknown)}: use item2vec, deepwalk, node2vec")
    result = TrainedEmbeddings({}, {})
    for name in config.models:
        if name == "item2vec":
            corpus = sequences
        elif walks is not None and name in walks:
            corpus = walks[name]
        else:
            corpus = _walks(graph, config.walks, name, config.skipgram.seed)
        trainer = SkipGramTrainer(replace(config.skipgram, seed=config.skipgram.seed + len(result.stats)))
        report = (lambda share, _pairs, phase=name: progress(phase, share)) if progress else None
        result.embeddings[name] = trainer.fit(corpus, report)
        result.stats[name] = trainer.stats
    return result


def _walks(graph: ItemGraph, config: WalkConfig, name: str, seed: int) -> list[list[str]]:
    p, q = (config.node2vec_p, config.node2vec_q) if name == "node2vec" else (1.0, 1.0)
    if len(graph.targets) == 0:
        raise ValueError("the item graph has no edges: nothing to walk")
    return RandomWalker(graph, p=p, q=q, seed=seed).item_walks(config.walks_per_node, config.walk_length)

