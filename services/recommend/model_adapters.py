"""Adapters from registry artifacts to the pipeline's parts.

Ranker artifacts (`models.ranking.export`): a SavedModel whose `score_user` endpoint scores one
user's candidates in one call and returns DIN's attention per history item. The request is
assembled exactly as the training samples were (`models.ranking.samples`): history most recent
LAST with each item's primary category, the candidate's primary category, and the dense features
named by the artifact's feature spec, read from the feature store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from feature_store.definitions import Entity, user_category_id
from models.registry import ModelVersion, RegistryError
from services.recommend.online_store import ServingStore
from services.recommend.types import Candidate, RankOutput, RecallChannel, SimilarItems, UserContext

log = logging.getLogger(__name__)

# Ranking-sample dense feature -> (entity, feature-store feature) it is computed from.
DENSE_FEATURE_SOURCES: dict[str, tuple[Entity, str]] = {
    "item_pop_1d": (Entity.ITEM, "popularity_1d"),
    "item_pop_7d": (Entity.ITEM, "popularity_7d"),
    "item_pop_30d": (Entity.ITEM, "popularity_30d"),
    "item_pop_all": (Entity.ITEM, "popularity_all"),
    "item_ctr": (Entity.ITEM, "ctr"),
    "item_ctr_24h": (Entity.ITEM, "ctr_24h"),
    "user_event_count": (Entity.USER, "event_count"),
    "user_positive_count": (Entity.USER, "positive_count"),
    "user_cat_affinity": (Entity.USER_CATEGORY, "affinity"),
}


class ExportedRanker:
    """A registry ranker version behind the `Ranker` interface."""

    def __init__(self, saved_model: object, spec: object, kind: str, store: ServingStore) -> None:
        self.saved_model = saved_model
        self.spec = spec
        self.name = kind
        self.store = store
        self.has_attention = kind == "din"
        unknown = [name for name in spec.dense_features if name not in DENSE_FEATURE_SOURCES]  # type: ignore[attr-defined]
        if unknown:
            log.warning("ranker dense features %s have no online source: served at their training mean", unknown)

    def rank(self, user: UserContext, candidates: Sequence[Candidate]) -> RankOutput:
        import tensorflow as tf

        history = list(reversed(user.history[: self.spec.max_seq_len]))  # type: ignore[attr-defined]
        items = [c.item_id for c in candidates]
        primary = self._primary_categories(history + items)
        request = {
            "user_id": tf.constant(user.user_id),
            "hist_item_ids": tf.constant(history, tf.string),
            "hist_categories": tf.constant([primary.get(i, "") for i in history], tf.string),
            "item_id": tf.constant(items, tf.string),
            "item_category": tf.constant([primary.get(i, "") for i in items], tf.string),
            **{name: tf.constant(values) for name, values in self._dense(user, items, primary).items()},
        }
        output = self.saved_model.score_user(request)  # type: ignore[attr-defined]
        scores = output["score"].numpy().astype(np.float32)
        if not self.has_attention or not history:
            return RankOutput(scores=scores)
        # Column j of the model's attention is history[j] (oldest first); the pipeline's history
        # is newest first, so reverse the used columns.
        attention = output["attention"].numpy()[:, : len(history)][:, ::-1]
        return RankOutput(scores=scores, attention=np.ascontiguousarray(attention))

    def _primary_categories(self, item_ids: list[str]) -> dict[str, str]:
        categories = self.store.categories_of(sorted(set(item_ids)))
        return {item: cats[0] for item, cats in categories.items() if cats}

    def _dense(self, user: UserContext, items: list[str], primary: dict[str, str]) -> dict[str, np.ndarray]:
        spec = self.spec
        columns: dict[str, np.ndarray] = {}
        wanted: dict[Entity, list[tuple[str, str]]] = {}
        for index, name in enumerate(spec.dense_features):  # type: ignore[attr-defined]
            if name in DENSE_FEATURE_SOURCES:
                entity, feature = DENSE_FEATURE_SOURCES[name]
                wanted.setdefault(entity, []).append((name, feature))
            else:
                mean = spec.dense_mean[index] if spec.dense_mean else 0.0  # type: ignore[attr-defined]
                columns[name] = np.full(len(items), mean, np.float32)
        ids = {
            Entity.ITEM: items,
            Entity.USER: [user.user_id] * len(items),
            Entity.USER_CATEGORY: [user_category_id(user.user_id, primary.get(i, "")) for i in items],
        }
        for entity, pairs in wanted.items():
            read = self.store.read_features(entity, ids[entity], [feature for _, feature in pairs])
            for name, feature in pairs:
                columns[name] = np.asarray(read[feature], np.float32)
        return columns


def configure_tensorflow(threads: int) -> None:
    """Few threads per worker: requests are small batches, and concurrency comes from requests
    and workers, not from splitting one op across cores. Only effective before TF's first use."""
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.info("TensorFlow already initialised; keeping its thread settings")


def load_ranker(version: ModelVersion, family: str, store: ServingStore, tf_threads: int = 1) -> ExportedRanker:
    """Load a published ranker; refuses one of another family than the configured one."""
    from models.ranking.export import load_exported

    configure_tensorflow(tf_threads)
    kind = str(version.manifest.get("model", ""))
    if kind != family:
        raise RegistryError(
            f"ranker {version.version} is a {kind or 'unknown'} model but settings.api.ranker is {family!r}"
        )
    saved_model, spec = load_exported(version.path)
    return ExportedRanker(saved_model, spec, kind, store)


def load_recall(version: ModelVersion, store: ServingStore) -> tuple[list[RecallChannel], SimilarItems | None]:
    """Recall artifacts are not servable yet: `models.retrieval` has no loader to build channels from."""
    raise RegistryError(
        f"recall {version.version}: serving recall models needs models.retrieval's loader, not in this build"
    )
