"""Request and response bodies of the HTTP API (separate from the storage models in feature_store)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from feature_store.schemas import CONTROL_CHARACTERS, EventContext, ItemAttributes

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendedItem(BaseModel):
    item_id: str
    position: int = Field(description="0-based slot in the list (the impression's `context.position`)")
    score: float
    sources: list[str] = Field(description="Recall channels that proposed the item")
    reason: str = Field(description="Why, in words a person can read")
    propensity: float | None = Field(
        default=1.0, description="Probability that the explore policy placed this item in this slot (the impression's); "
        "null for Thompson sampling when the service logs the impressions: its estimate is computed off the request "
        "path and logged with the impression",
    )
    team: str | None = Field(default=None, description="Interleaving: the arm whose ranker placed the item")


class RecommendationsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{
            "request_id": "6f1c0a…", "user_id": "196",
            "items": [{"item_id": "50", "position": 0, "score": 0.91, "sources": ["item2vec", "popular"],
                       "reason": "because you watched Toy Story (1995)"}],
            "model_versions": {"recall": "20240101T000000-ab12", "ranker": "20240101T010000-cd34"},
            "fallback": None, "degraded": False, "timings_ms": {"features": 0.4, "recall": 1.2, "rank": 2.1},
        }]}
    )

    request_id: str
    user_id: str
    items: list[RecommendedItem]
    model_versions: dict[str, str] = Field(description="Registry versions used, per role; empty without models")
    fallback: str | None = Field(
        description="`popularity`: no trained ranker yet; `last_known_popular`: the online store was unreachable"
    )
    degraded: bool = Field(description="True when answered from the in-process fallback")
    explore: str = Field(
        default="greedy",
        description="The explore policy that chose the slots, with its parameters; `greedy (stats unavailable)` "
        "when its statistics could not be read",
    )
    experiment: str | None = Field(default=None, description="The experiment that served the list (the impressions')")
    arm: str | None = Field(default=None, description="Its arm, as `<experiment>:<arm>`; interleaving: `<experiment>:interleaved`")
    timings_ms: dict[str, float] = Field(
        description="Per-stage time: features, recall, filter, rank, explore, explain; a degraded answer "
        "has only the stages that ran, the failed one included (none after a missed deadline)",
    )


class RecommendationsQuery(_Strict):
    """The POST form: the same parameters plus the request context."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"k": 10, "exclude": ["50"], "category": "Comedy",
                                         "context": {"page": "home"}}]},
    )

    k: int = Field(default=10, ge=1, le=100)
    exclude: list[ItemId] = Field(default_factory=list, max_length=500)
    category: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    context: EventContext = Field(default_factory=EventContext)
    log_impressions: bool = Field(
        default=True, description="false: the client logs its own impressions; the service logs none for this list",
    )

    @field_validator("context")
    @classmethod
    def _printable_labels(cls, context: EventContext) -> EventContext:
        # Copied into the impressions the service logs and into attribution keys, where U+001E/U+001F
        # are the feature store's separators (as ids and categories refuse them).
        for name in ("page", "experiment", "arm"):
            value = getattr(context, name)
            if value is not None and CONTROL_CHARACTERS.search(value):
                raise ValueError(f"context.{name} must not contain control characters")
        return context


class SimilarItem(BaseModel):
    item_id: str
    score: float


class SimilarItemsResponse(BaseModel):
    item_id: str
    source: str = Field(description="`embedding` (recall model) or `category` (cold start neighbours)")
    items: list[SimilarItem]
    request_id: str


class EventReject(BaseModel):
    index: int = Field(description="Position of the event in the posted array")
    errors: list[dict[str, Any]]


class EventsResponse(BaseModel):
    accepted: int = Field(description="New events, durably appended to the event log")
    duplicates: int = Field(description="Events whose event_id was already accepted (idempotent)")
    rejected: list[EventReject]
    degraded: bool = Field(description="True if live features could not be updated (Redis down)")
    request_id: str


class ItemUpsert(ItemAttributes):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"title": "Toy Story (1995)", "categories": ["Animation", "Comedy"],
                                         "available": True, "metadata": {"year": 1995}}]},
    )


class UserUpsert(_Strict):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"attributes": {"age": 24, "occupation": "technician"}}]}
    )

    attributes: dict[str, Any] = Field(default_factory=dict)


class UpsertResponse(BaseModel):
    id: str
    created: bool
    request_id: str


class ReloadResponse(BaseModel):
    swapped: bool
    model_versions: dict[str, str]
    error: str | None
    request_id: str
