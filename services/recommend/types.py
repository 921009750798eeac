"""The vocabulary of the request-time pipeline: candidates, results and the interfaces of its parts.

Parts are injected (STYLE.md: models assembled from injected parts), so the same pipeline runs
with the popularity fallback on day one, with small models trained inside a test, and with the
registry's current versions in production.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np


class DegradedError(RuntimeError):
    """An online dependency (Redis) failed or timed out; the caller answers from its fallback."""


class UnreadableEntryError(ValueError):
    """A stored catalog entry that no longer reads back (e.g. metadata PUT by a version without
    `catalog.max_metadata_depth`); a new PUT of the entry mends it."""


@dataclass
class Candidate:
    """One recalled item with the channels that produced it and its best recall score."""

    item_id: str
    recall_score: float
    sources: set[str] = field(default_factory=set)
    because: str | None = None  # the seed behind it: a history item id or a category name


@dataclass(frozen=True)
class RecommendationRequest:
    user_id: str
    k: int = 10
    exclude: frozenset[str] = frozenset()
    category: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""  # its random draws come from it (`services.explore.randomness`)


@dataclass(frozen=True)
class UserContext:
    """What the pipeline knows about the user at request time (features stage output)."""

    user_id: str
    history: list[str]  # most recent first: the DIN behaviour sequence, reversed
    seen: frozenset[str]  # every item the user is known to have interacted with

    @property
    def known(self) -> bool:
        return bool(self.seen)


@dataclass
class Recommendation:
    item_id: str
    score: float
    sources: list[str]
    reason: str
    propensity: float | None = 1.0  # probability of this item in this slot under the explore policy (None: pending)
    team: str | None = None  # interleaving: the arm whose ranker placed it
    ranks: dict[str, int] | None = None  # interleaving: each team's 0-based rank of the item
    ranker_propensities: dict[str, float] | None = None  # probabilistic interleaving: each team's P(item in slot | above)


class Merged(NamedTuple):
    """What an interleaving merge returns, per shown slot: the item, its team (index into the
    rankings), its propensity and, for probabilistic interleaving, each ranker's probability of
    placing it there given the slots above (`ranker_propensities[slot][ranker]`, whose mean is the
    propensity; empty for other merges)."""

    items: Sequence[str]
    teams: Sequence[int]
    propensities: Sequence[float]
    ranker_propensities: Sequence[Sequence[float]] = ()


@dataclass
class RecommendationResult:
    items: list[Recommendation]
    model_versions: dict[str, str]
    fallback: str | None = None
    degraded: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    explore: str = "greedy"  # the explore policy's label (services.explore)
    ranked: tuple[tuple[str, ...], tuple[float, ...]] = ((), ())  # what the explore stage chose from: ids, scores
    # Computes the items' propensities left pending by the explore stage (Thompson), off the request path.
    pending_propensities: Callable[[], tuple[float, ...]] | None = None

    def resolve_propensities(self) -> None:
        """Fill the pending propensities in now (for a list the service does not log itself)."""
        if self.pending_propensities is not None:
            for item, propensity in zip(self.items, self.pending_propensities()):
                item.propensity = propensity
            self.pending_propensities = None


@dataclass
class RankOutput:
    """Scores aligned with the candidates; attention[i, j] = weight of history[j] for candidate i."""

    scores: np.ndarray
    attention: np.ndarray | None = None


class FeatureReader(Protocol):
    """User features the pipeline needs; raises `DegradedError` when the store is unreachable."""

    def user_behaviour(self, user_id: str, limit: int) -> tuple[list[str], frozenset[str]]: ...

    def popular(self, k: int) -> list[tuple[str, float]]: ...


class ItemCatalog(Protocol):
    """Item metadata the filter and explain stages read; raises `DegradedError` when unreachable."""

    def categories_of(self, item_ids: Sequence[str]) -> dict[str, list[str]]: ...

    def unavailable(self, item_ids: Sequence[str]) -> set[str]: ...

    def titles(self, item_ids: Sequence[str]) -> dict[str, str]: ...

    def items_in_category(self, category: str, limit: int) -> list[str]: ...


class Ranker(Protocol):
    """Scores one user's candidates in one batched call."""

    name: str

    def rank(self, user: UserContext, candidates: Sequence[Candidate]) -> RankOutput: ...


class SimilarItems(Protocol):
    """Item-to-item neighbours from a recall model (embeddings)."""

    def similar(self, item_id: str, k: int) -> list[tuple[str, float]] | None: ...
