"""The training DAG's recall blend (issue 20, docs/evaluation.md "The blended pipeline"): the
channels the offline protocol blends, their weights and the order choice fitted on validation, and
the served channels refitted on every training sequence.

Validation: each training sequence of >= 3 items gives its last item as the target and the rest as
the history; every channel (ItemKNN over the last `blend_recent` / last 1 / all items, sequential
rules over the last `blend_recent` / last 1, GRU4Rec, each recall embedding) is fitted on those
prefixes only, the blend's weights and normalisation on the targets
(`models.retrieval.blend.fit_blend`), the reason selection's penalty on the same targets
(`models.retrieval.reason_selection.fit_reason_penalty`, reasons tried among the last
`api.reason_recent` items as served, `training.blend_min_reasons` distinct reasons asked), and the
order choice re-ranks the blend's top `api.recall_candidates` with a ranker that never saw the
targets (`pipelines.training.rankers`, `models.retrieval.order_choice`).

Serving: once the weights and the order are chosen, the channels are fitted again on the whole
training sequences (targets included) with the same hyper-parameters and keep the fitted weights,
normalisation and reason penalty, as the field's protocol refits on training + validation before
the test phase: a user's newest item, and an item seen only there, is in the served models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from feature_store.definitions import UNKNOWN_CATEGORY
from feature_store.settings import Settings, TrainingSettings
from models.embeddings.item_embeddings import ItemEmbeddings
from models.embeddings.training import EmbeddingTrainingConfig
from models.evaluation.baselines import ItemKNNRecommender, ItemTransitions
from models.retrieval.artifact import RecallArtifact
from models.retrieval.blend import BlendedRecall, fit_blend
from models.retrieval.order_choice import Rerank, choose_order
from models.retrieval.reason_selection import fit_reason_penalty
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, ScoredChannel, SequentialScores
from models.retrieval.sequential import GRU4Rec
from pipelines.training.recall import fit_embeddings

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


def validation_target_times(positives: Iterable[tuple[str, str, datetime]], cutoff: datetime) -> dict[str, datetime]:
    """user -> event time of their validation target (the last item `validation_split` takes from
    the time-ordered sequence of their positives before `cutoff`), for users with >= 3 of them."""
    counts: dict[str, int] = {}
    newest: dict[str, datetime] = {}
    for user, _, ts in positives:
        ts = ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
        if ts < cutoff:
            counts[user] = counts.get(user, 0) + 1
            newest[user] = max(newest.get(user, ts), ts)
    return {user: ts for user, ts in newest.items() if counts[user] >= MIN_VALIDATION_LENGTH}


def blend_channels(sequences: list[list[str]], embeddings: dict[str, ItemEmbeddings], cfg: TrainingSettings) -> list[ScoredChannel]:
    """The blend's channels fitted on `sequences` with the settings' hyper-parameters."""
    knn = ItemKNNRecommender(sequences, neighbours=cfg.blend_neighbours, recent=cfg.blend_recent)
    rules = ItemKNNRecommender(sequences, cfg.blend_neighbours, cfg.blend_recent, ItemTransitions(sequences, cfg.blend_rules_window))
    channels: list[ScoredChannel] = []
    for model in (knn, rules):
        channels += [ItemKNNScores(model)] + [ItemKNNScores(model, 1)] * (cfg.blend_recent != 1)
    channels.append(ItemKNNScores(knn, whole_history=True))
    channels.append(SequentialScores(GRU4Rec(sequences, seed=cfg.seed).fit(cfg.blend_gru_epochs)))
    return channels + [EmbeddingScores(name, model.ids, model.vectors) for name, model in embeddings.items()]


def fit_serving_blend(prefixes: list[list[str]], histories: list[list[str]], targets: list[str],
                      embeddings: dict[str, ItemEmbeddings], cfg: TrainingSettings) -> BlendedRecall:  # fmt: skip
    """The channels fitted on `prefixes`, blended with weights fitted on (history, target)."""
    items = sorted({item for sequence in prefixes for item in sequence})
    return fit_blend(blend_channels(prefixes, embeddings, cfg), items, histories, targets, seed=cfg.seed)


def refit_blend(fitted: BlendedRecall, sequences: list[list[str]], embeddings: dict[str, ItemEmbeddings],
                cfg: TrainingSettings) -> BlendedRecall:  # fmt: skip
    """`fitted`'s channels fitted again on `sequences` (same hyper-parameters), with `fitted`'s
    weights, normalisation, reason selection and validation figures."""
    channels = blend_channels(sequences, embeddings, cfg)
    if [c.name for c in channels] != [c.name for c in fitted.channels]:
        raise ValueError(f"refit channels {[c.name for c in channels]} differ from the fitted {[c.name for c in fitted.channels]}")
    items = sorted({item for sequence in sequences for item in sequence})
    return BlendedRecall(channels, fitted.weights, items, fitted.normalisation, fitted.validation_ndcg, fitted.fit_trace,
                         fitted.reason_penalty, fitted.reason_depth)  # fmt: skip


def attach_blend(artifact: RecallArtifact, sequences: list[list[str]], config: EmbeddingTrainingConfig,
                 settings: Settings, ranker: tuple[str, Path] | None) -> None:  # fmt: skip
    """Fit the blend and its order choice on validation (module docstring) and put the blend
    refitted on `sequences` into `artifact`, whose embeddings are the ones trained on `sequences`.
    `ranker`: (the served ranker's version, the folder of its copy that never saw the validation
    targets); the ranker is served only where that copy beats the blend's own order on validation."""
    cfg = settings.training
    prefixes, histories, targets = validation_split(sequences)
    if not histories:
        return
    validation_embeddings = fit_embeddings(prefixes, config)[0].embeddings
    fitted = fit_serving_blend(prefixes, histories, targets, validation_embeddings, cfg)
    chosen = np.random.default_rng(cfg.seed).permutation(len(histories))[:MAX_VALIDATION_USERS]
    histories, targets = [histories[i] for i in chosen], [targets[i] for i in chosen]
    recent = settings.api.reason_recent or None
    selection = fit_reason_penalty(fitted, histories, targets, recent, cfg.blend_min_reasons)
    fitted.reason_penalty, fitted.reason_depth = selection.penalty, selection.depth
    rerank = None
    if ranker is not None:
        categories = catalog_categories(settings.catalog_source_dir / "items.parquet")
        rerank = exported_rerank(ranker[1], categories)
    artifact.order = choose_order(fitted, histories, targets, rerank, ranker and ranker[0], settings.api.recall_candidates,
                                  recent=recent)  # fmt: skip
    artifact.blend = refit_blend(fitted, sequences, artifact.embeddings, cfg)


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
            "user_id": f"validation-{row}", "hist_item_ids": recent, "hist_categories": [categories.get(i, UNKNOWN_CATEGORY) for i in recent],
            "item_id": items, "item_category": [categories.get(i, UNKNOWN_CATEGORY) for i in items],
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
