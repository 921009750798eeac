"""Adapters from registry artifacts to the pipeline's parts.

Ranker artifacts (`models.ranking.export`): a SavedModel whose `score_user` endpoint scores one
user's candidates in one call and returns DIN's attention per history item. The request has the
training samples' columns (`models.ranking.samples`): history most recent LAST with each item's
primary category, the candidate's primary category, and the dense features named by the
artifact's feature spec, read from the feature store (`RankerInputs` says where serving differs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feature_store.definitions import UNKNOWN_CATEGORY, Entity, user_category_id
from models.ranking.features import FeatureSpec
from models.ranking.samples import DENSE_FEATURE_SOURCES
from models.registry import ModelVersion, RegistryError
from services.recommend.item_cache import ItemCache
from services.recommend.online_store import ServingStore
from models.retrieval.multichannel import RecallChannel
from services.recommend.types import Candidate, RankOutput, SimilarItems, UserContext

log = logging.getLogger(__name__)


class RankerInputs:
    """Assembles a ranker's input for one user's candidates from the feature store, as a training
    row (`ranking_samples`) timed at the request holds it: the same history, categories
    (`UNKNOWN_CATEGORY` for an item without one) and dense values, except where
    docs/feature_store.md ("Ranker inputs at serving") says they differ: the user×category
    affinity (as of the batch watermark), the order of one millisecond's positives since the
    watermark, a history past the live sequence's cap since the watermark, and dense features
    without an online source (their training mean). tests/pipelines/spark/test_feature_parity.py
    checks the rest."""

    def __init__(self, spec: FeatureSpec, store: ServingStore) -> None:
        self.spec = spec
        self.store = store
        # Item features are the same for every user: one feature-store read per item per
        # global-cache TTL instead of one read of all candidates per request.
        self._item_features = ItemCache(ttl_s=store.global_cache.ttl_s)
        unknown = [name for name in spec.dense_features if name not in DENSE_FEATURE_SOURCES]
        if unknown:
            log.warning("ranker dense features %s have no online source: served at their training mean", unknown)

    def request(self, user: UserContext, items: list[str]) -> dict[str, object]:
        """The model input for one user's candidates, keyed like the ranking-samples columns
        (history oldest first, as in training rows)."""
        history = list(reversed(user.history[: self.spec.max_seq_len]))
        primary = self._primary_categories(history + items)
        return {
            "user_id": user.user_id,
            "hist_item_ids": history,
            "hist_categories": [primary[i] for i in history],
            "item_id": items,
            "item_category": [primary[i] for i in items],
            **self._dense(user, items, primary),
        }

    def _primary_categories(self, item_ids: list[str]) -> dict[str, str]:
        """Each item's first catalog category, else `UNKNOWN_CATEGORY` (as `ranking_samples` does)."""
        known = self.store.categories_of(sorted(set(item_ids)))
        return {item: (known.get(item) or [UNKNOWN_CATEGORY])[0] for item in item_ids}

    def _dense(self, user: UserContext, items: list[str], primary: dict[str, str]) -> dict[str, np.ndarray]:
        spec = self.spec
        columns: dict[str, np.ndarray] = {}
        wanted: dict[Entity, list[tuple[str, str]]] = {}
        for index, name in enumerate(spec.dense_features):
            if name in DENSE_FEATURE_SOURCES:
                entity, feature = DENSE_FEATURE_SOURCES[name]
                wanted.setdefault(entity, []).append((name, feature))
            else:
                mean = spec.dense_mean[index] if spec.dense_mean else 0.0
                columns[name] = np.full(len(items), mean, np.float32)
        ids = {
            Entity.ITEM: items,
            Entity.USER: [user.user_id] * len(items),
            Entity.USER_CATEGORY: [user_category_id(user.user_id, primary[i]) for i in items],
        }
        for entity, pairs in wanted.items():
            features = [feature for _, feature in pairs]
            if entity is Entity.ITEM:
                read = self._cached_item_features(items, features)
            else:
                read = self.store.read_features(entity, ids[entity], features)
            for name, feature in pairs:
                columns[name] = np.asarray(read[feature], np.float32)
        return columns

    def _cached_item_features(self, items: list[str], features: list[str]) -> dict[str, list[object]]:
        def fetch(ids: list[str]) -> dict[str, dict[str, object]]:
            read = self.store.read_features(Entity.ITEM, ids, features)
            return {item: {f: read[f][i] for f in features} for i, item in enumerate(ids)}

        found = self._item_features.get_many(items, fetch)
        return {f: [found[item][f] for item in items] for f in features}


class ExportedRanker:
    """A registry ranker version behind the `Ranker` interface."""

    def __init__(self, saved_model: object, spec: FeatureSpec, kind: str, store: ServingStore) -> None:
        self.saved_model = saved_model
        self.name = kind
        self.inputs = RankerInputs(spec, store)
        self.has_attention = kind == "din"
        # The SavedModel's default signature is `score_user` (see `models.ranking.export`); a
        # signature call takes flat keyword tensors and skips the restored function's
        # structured-input binding, ~0.1 ms per request.
        self._score_user = saved_model.signatures["serving_default"]  # type: ignore[attr-defined]
        # DIN artifacts also return the tower's last hidden layer and the output layer (`hidden`,
        # `head`): what an online learner re-weighs (`services.learner`).
        self.has_penultimate = "hidden" in self._score_user.structured_outputs

    def rank(self, user: UserContext, candidates: Sequence[Candidate]) -> RankOutput:
        output, history = self._call(user, candidates)
        scores = output["score"].numpy().astype(np.float32)
        return RankOutput(scores=scores, attention=self._attention(output, history))

    def penultimate(self, user: UserContext, candidates: Sequence[Candidate]) -> Penultimate:
        """The candidates' `h(u, i)` [N, H], the output layer `[w ; b]` [H + 1] and the attention,
        from the one model call `rank` makes."""
        if not self.has_penultimate:
            raise RegistryError(f"this {self.name} artifact exports no penultimate features")
        output, history = self._call(user, candidates)
        return Penultimate(output["hidden"].numpy().astype(np.float64), output["head"].numpy().astype(np.float64),
                           self._attention(output, history))

    def _call(self, user: UserContext, candidates: Sequence[Candidate]) -> tuple[dict[str, Any], list[str]]:
        from models.ranking.inference import as_request

        request = self.inputs.request(user, [c.item_id for c in candidates])
        return self._score_user(**as_request(request)), request["hist_item_ids"]  # type: ignore[return-value]

    def _attention(self, output: dict[str, Any], history: list[str]) -> np.ndarray | None:
        if not self.has_attention or not history:
            return None
        # Column j of the model's attention is history[j] (oldest first); the pipeline's history
        # is newest first, so reverse the used columns.
        attention = output["attention"].numpy()[:, : len(history)][:, ::-1]
        return np.ascontiguousarray(attention)


@dataclass(frozen=True)
class Penultimate:
    """One request's penultimate features `h(u, i)` (rows: candidates), the output layer `[w ; b]`
    (score = σ(w · h + b)) and the ranker's attention (None without)."""

    hidden: np.ndarray
    head: np.ndarray
    attention: np.ndarray | None


def load_ranker(version: ModelVersion, family: str, store: ServingStore) -> ExportedRanker:
    """Load a published ranker; refuses one of another family than the configured one."""
    from models.ranking.export import load_exported

    kind = str(version.manifest.get("model", ""))
    if kind != family:
        raise RegistryError(
            f"ranker {version.version} is a {kind or 'unknown'} model but settings.api.ranker is {family!r}"
        )
    saved_model, spec = load_exported(version.path)
    return ExportedRanker(saved_model, spec, kind, store)


USER_VECTOR_CHANNEL = "user_vector"
PREFERRED_SIMILAR_MODELS = ("item2vec", "node2vec", "deepwalk")


def load_recall(version: ModelVersion, recent_items: int = 5, threads: int = 1) -> tuple[list[RecallChannel], SimilarItems]:
    """A published recall artifact (`models.retrieval.artifact`) as serving parts: one
    neighbour channel per embedding model (tagged with the model's name) over the user's
    `recent_items` latest items, a user-vector channel and item-to-item neighbours from the
    preferred model (Item2vec when present). The artifact's training-time popular list is not
    used: serving reads live popularity from the feature store."""
    from models.retrieval.artifact import RecallArtifact
    from models.retrieval.faiss_index import FaissIndex
    from models.retrieval.multichannel import EmbeddingNeighbourChannel, EmbeddingSimilarItems, UserVectorChannel

    models = version.manifest.get("models")
    if not isinstance(models, list) or not models:
        raise RegistryError(f"recall {version.version}: manifest lists no embedding models ('models')")
    artifact = RecallArtifact.load(version.path, [str(name) for name in models])
    for index in artifact.indexes.values():
        if isinstance(index, FaissIndex):
            index.search_threads = threads  # one request's search is too small to split
    channels: list[RecallChannel] = [
        EmbeddingNeighbourChannel(name, artifact.embeddings[name], artifact.indexes[name], recent_items)
        for name in artifact.embeddings
    ]
    main = next((name for name in PREFERRED_SIMILAR_MODELS if name in artifact.embeddings), next(iter(artifact.embeddings)))
    channels.append(UserVectorChannel(USER_VECTOR_CHANNEL, artifact.embeddings[main], artifact.indexes[main]))
    return channels, EmbeddingSimilarItems(artifact.embeddings[main], artifact.indexes[main])
