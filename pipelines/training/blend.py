"""The training DAG's recall blend (issue 20, docs/evaluation.md "The blended pipeline"): the
channels the offline protocol blends, fitted here on the DAG's training sequences, and the
validation choice between the blend's order and the ranker's.

Validation: each training sequence of >= 3 items gives its last item as the target and the rest
as the history; every channel (ItemKNN over the last `blend_recent` / last 1 / all items, GRU4Rec,
each recall embedding) is fitted on those prefixes only, the blend's weights on the targets
(`models.retrieval.blend.fit_blend`), and the order choice re-ranks the blend's top
`api.recall_candidates` with the ranker the same run trained (`models.retrieval.order_choice`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feature_store.settings import Settings, TrainingSettings
from models.embeddings.item_embeddings import ItemEmbeddings
from models.evaluation.baselines import ItemKNNRecommender
from models.retrieval.artifact import RecallArtifact
from models.retrieval.blend import BlendedRecall, fit_blend
from models.retrieval.order_choice import Rerank, choose_order
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, ScoredChannel, SequentialScores
from models.retrieval.sequential import GRU4Rec

MIN_VALIDATION_LENGTH = 3
MAX_VALIDATION_USERS = 2000  # as `fit_blend`: enough for the choice, bounded in time


def validation_split(sequences: Sequence[Sequence[str]]) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """(training prefixes of every sequence, validation histories, their targets): a sequence of
    >= 3 items gives up its last item; shorter ones are trained on whole."""
    prefixes, histories, targets = [], [], []
    for sequence in sequences:
        if len(sequence) >= MIN_VALIDATION_LENGTH:
            prefixes.append(list(sequence[:-1]))
            histories.append(list(sequence[:-1]))
            targets.append(sequence[-1])
        else:
            prefixes.append(list(sequence))
    return prefixes, histories, targets


def fit_serving_blend(prefixes: list[list[str]], histories: list[list[str]], targets: list[str],
                      embeddings: dict[str, ItemEmbeddings], cfg: TrainingSettings) -> BlendedRecall:  # fmt: skip
    """The channels fitted on `prefixes`, blended with weights fitted on (history, target)."""
    knn = ItemKNNRecommender(prefixes, neighbours=cfg.blend_neighbours, recent=cfg.blend_recent)
    channels: list[ScoredChannel] = [ItemKNNScores(knn)] + [ItemKNNScores(knn, 1)] * (cfg.blend_recent != 1)
    channels.append(ItemKNNScores(knn, whole_history=True))
    channels.append(SequentialScores(GRU4Rec(prefixes, seed=cfg.seed).fit(cfg.blend_gru_epochs)))
    channels += [EmbeddingScores(name, model.ids, model.vectors) for name, model in embeddings.items()]
    items = sorted({item for sequence in prefixes for item in sequence})
    return fit_blend(channels, items, histories, targets, seed=cfg.seed)


def attach_blend(artifact: RecallArtifact, prefixes: list[list[str]], histories: list[list[str]], targets: list[str],
                 settings: Settings, ranker: tuple[str, Path] | None) -> None:  # fmt: skip
    """Fit the blend into `artifact` with its order choice against `ranker` (version, folder):
    the ranker is served only where it beats the blend's own order on validation."""
    cfg = settings.training
    artifact.blend = fit_serving_blend(prefixes, histories, targets, artifact.embeddings, cfg)
    chosen = np.random.default_rng(cfg.seed).permutation(len(histories))[:MAX_VALIDATION_USERS]
    histories, targets = [histories[i] for i in chosen], [targets[i] for i in chosen]
    rerank = None
    if ranker is not None:
        categories = catalog_categories(Path(settings.batch.catalog_uri or settings.catalog_dir) / "items.parquet")
        rerank = exported_rerank(ranker[1], categories)
    artifact.order = choose_order(artifact.blend, histories, targets, rerank, ranker and ranker[0],
                                  settings.api.recall_candidates)  # fmt: skip


def exported_rerank(artifact_dir: Path, categories: dict[str, str]) -> Rerank:
    """The published ranker's scores of a validation history's candidates: the history and the
    catalog's categories as served; dense features at their training means (the DAG has no
    point-in-time feature values for arbitrary candidates of a validation history)."""
    from models.ranking.export import load_exported
    from models.ranking.inference import as_request

    loaded, spec = load_exported(artifact_dir)
    score_user = loaded.signatures["serving_default"]

    def rerank(row: int, history: Sequence[str], items: list[str]) -> np.ndarray:
        recent = list(history)[-spec.max_seq_len :]
        request: dict[str, object] = {
            "user_id": f"validation-{row}", "hist_item_ids": recent, "hist_categories": [categories.get(i, "") for i in recent],
            "item_id": items, "item_category": [categories.get(i, "") for i in items],
        }  # fmt: skip
        for index, name in enumerate(spec.dense_features):
            request[name] = np.full(len(items), spec.dense_mean[index] if spec.dense_mean else 0.0, np.float32)
        return score_user(**as_request(request))["score"].numpy()

    return rerank


def catalog_categories(items_parquet: Path) -> dict[str, str]:
    """item -> its first category from the catalog's items.parquet ({} without a catalog)."""
    if not items_parquet.exists():
        return {}
    import pyarrow.parquet as pq

    table = pq.read_table(items_parquet, columns=["item_id", "categories"]).to_pylist()
    return {row["item_id"]: row["categories"][0] for row in table if row["categories"]}
