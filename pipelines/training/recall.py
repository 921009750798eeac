"""Recall training: embeddings (Item2vec, DeepWalk, Node2vec) → recall indexes → the published
recall artifact. Used by the training DAG's embeddings step and by `recsys train embeddings`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store.settings import Settings
from models.embeddings.inputs import read_walks_parquet, transition_graph
from models.embeddings.training import EmbeddingTrainingConfig, TrainedEmbeddings, train_embeddings
from models.embeddings.walks import ItemGraph
from models.evaluation import ItemKNNRecommender, LeaveLastOut, PopularityRecommender, evaluate
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact, publish_recall
from models.retrieval.multichannel import ChannelRecommender, MultiChannelRecall

PhaseProgress = Callable[[str, float], None]


@dataclass
class RecallRun:
    """A trained recall artifact with what it was trained on and how training went."""

    artifact: RecallArtifact
    trained: TrainedEmbeddings
    popular: PopularityRecommender
    sequences: list[list[str]]
    graph: ItemGraph

    def metrics(self) -> dict[str, Any]:
        return {
            name: {"pairs": stats.pairs, "pairs_per_s": round(stats.pairs_per_second), "device": stats.device,
                   "loss_per_epoch": stats.loss_per_epoch}
            for name, stats in self.trained.stats.items()
        }  # fmt: skip


def train_recall(
    sequences: list[list[str]], config: EmbeddingTrainingConfig, index_kind: str = "auto",
    graph_edges: tuple[Any, Any, Any] | None = None, walks: dict[str, list[list[str]]] | None = None,
    progress: PhaseProgress | None = None,
) -> RecallRun:  # fmt: skip
    """Train the configured embeddings on `sequences` (and on walks over `graph_edges`, default the
    sequences' transition graph) and build one recall index per model."""
    trained, graph = fit_embeddings(sequences, config, graph_edges, walks, progress)
    popular = PopularityRecommender(sequences)
    return RecallRun(RecallArtifact.build(trained.embeddings, popular, index_kind), trained, popular, sequences, graph)


def fit_embeddings(
    sequences: list[list[str]], config: EmbeddingTrainingConfig, graph_edges: tuple[Any, Any, Any] | None = None,
    walks: dict[str, list[list[str]]] | None = None, progress: PhaseProgress | None = None,
) -> tuple[TrainedEmbeddings, ItemGraph]:  # fmt: skip
    """The configured embeddings trained on `sequences` (and walks over `graph_edges`, default the
    sequences' transition graph), with that graph; no recall index."""
    if not sequences:
        raise ValueError("no training sequences: import events first (recsys data import-movielens …)")
    graph = ItemGraph.from_edges(*(graph_edges if graph_edges is not None else transition_graph(sequences)))
    return train_embeddings(sequences, graph, config, progress, walks), graph


WALK_MODELS = ("deepwalk", "node2vec")


def read_walks(path: Path | None, models: Sequence[str]) -> dict[str, list[list[str]]] | None:
    """Walk corpora by model, from `recsys batch random_walks`. A folder with model folders
    (`<path>/deepwalk`, `<path>/node2vec`) gives each model its own; a model without one is left
    out, so it walks here from the graph, as without walks. A path with no model folder (one
    Parquet file or a folder of part files) serves every walk model."""
    if path is None:
        return None
    if not path.exists():
        raise ValueError(f"{path}: no such walks folder or file (run `recsys batch random_walks`)")
    wanted = [name for name in models if name in WALK_MODELS]
    if not any((path / name).is_dir() for name in WALK_MODELS):
        return {name: read_walks_parquet(path) for name in wanted}
    # Never fall back to `path` here: pyarrow reads it recursively, so a model would train on
    # another model's walks.
    return {name: read_walks_parquet(path / name) for name in wanted if (path / name).is_dir()}


def compare_recall(run: RecallRun, split: LeaveLastOut) -> dict[str, dict[str, float]]:
    """HR@10, NDCG@10, HR@50, Recall@50 of Pop, ItemKNN, each embedding channel and the
    multi-channel recall on `split` (`models.evaluation.evaluate`)."""
    item_cf = ItemKNNRecommender(run.sequences)
    channels = run.artifact.channels(item_cf)
    contenders: dict[str, Any] = {"Pop": run.popular, "ItemKNN": item_cf}
    contenders |= {c.name: ChannelRecommender(c) for c in channels if c.name in run.artifact.embeddings}
    contenders["multi-channel"] = MultiChannelRecall(channels)
    return {name: evaluate(model, split) for name, model in contenders.items()}


def publish(settings: Settings, run: RecallRun, params: dict[str, Any], window: dict[str, Any],
            metrics: dict[str, Any], set_current: bool) -> str:  # fmt: skip
    """Publish the artifact as a new recall version (current only when `set_current`)."""
    manifest = {"params": params, "data_window": window, "metrics": metrics}
    scratch = settings.state_dir if settings.state_dir.exists() else None
    return publish_recall(ModelRegistry(settings.model_registry_dir), run.artifact, manifest, scratch, set_current)
