"""Event and catalog schemas (DESIGN.md "Contracts"), validated with pydantic v2."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, WithJsonSchema, field_validator,
    model_validator,
)

CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_ID_PATTERN = r"^[^\s\x00-\x1f\x7f-\x9f]([^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$"


def _no_control_characters(value: str) -> str:
    # Feature values are stored joined by U+001E/U+001F (feature_store.redis_layout): one such
    # character in an id or category would make every batch run that meets it fail.
    found = CONTROL_CHARACTERS.search(value)
    if found:
        raise ValueError(f"must not contain control characters (U+{ord(found.group()):04X} at position {found.start()})")
    return value


MAX_ID_LENGTH = 128


def exact_id(value: str) -> str:
    """`value` if it is an id as given: no control characters, no whitespace at either end."""
    _no_control_characters(value)
    if value != value.strip():
        raise ValueError("must not start or end with whitespace: ids are taken exactly as given")
    return value


Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
    AfterValidator(exact_id),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": _ID_PATTERN}),
]
"""An entity or event id: 1-128 characters, no control characters, no whitespace at either end."""

Category = Annotated[str, StringConstraints(min_length=1, max_length=128), AfterValidator(_no_control_characters)]


def error_message(exc: ValueError) -> str:
    """One line for a validation error: `field.path: message; ...` for pydantic's, else the message."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
    return str(exc)


def as_utc(ts: datetime) -> datetime:
    """`ts` as an aware UTC datetime (naive means UTC); ValueError where UTC cannot represent it."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    try:
        return ts.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{ts.isoformat()} is outside the UTC datetime range (years 1 to 9999)") from None


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    LIKE = "like"
    RATING = "rating"
    PURCHASE = "purchase"
    ADD_TO_CART = "add_to_cart"
    SHARE = "share"
    SKIP = "skip"


#: The largest integer a context field may hold: Spark reads them as LongType, and an event its
#: batch layer cannot read would be counted by the speed layer only.
MAX_LONG = 2**63 - 1


class EventContext(BaseModel):
    """Where an event happened: which request, slot and experiment arm produced it."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, max_length=128)
    position: int | None = Field(default=None, ge=0, le=MAX_LONG)
    page: str | None = Field(default=None, max_length=128)
    experiment: str | None = Field(default=None, max_length=128)
    # 129: the service's arms are `<experiment>:<arm>`, two names of up to 64 characters each.
    arm: str | None = Field(default=None, max_length=129)
    policy: str | None = Field(default=None, max_length=256, description="What produced the slot: ranker version and explorer")
    propensity: float | None = Field(
        default=None, gt=0.0, le=1.0, description="Probability that this item was placed in this slot under the serving policy"
    )
    team: str | None = Field(default=None, max_length=128, description="Interleaving: the ranker that contributed the item")
    ranks: dict[Annotated[str, StringConstraints(max_length=128)], Annotated[int, Field(ge=0, le=MAX_LONG)]] | None = Field(
        default=None, max_length=16,
        description="Interleaving: each team's 0-based rank of the shown item in its own ranking (a team that did not rank it is absent)",
    )
    ranker_propensities: dict[
        Annotated[str, StringConstraints(max_length=128)], Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    ] | None = Field(
        default=None, max_length=16,
        description="Probabilistic interleaving: each team's probability of placing this item in this slot given the slots above",
    )
    model_versions: dict[str, Annotated[str, StringConstraints(max_length=128)]] | None = Field(
        default=None, max_length=16, description="Registry versions that served the slot, per role"
    )
    candidates: list[Identifier] | None = Field(
        default=None, max_length=1000,
        description="First slot of a sampled request: the ranked candidates the explore stage chose from, best first (truncated)",
    )
    candidate_scores: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None, max_length=1000, description="The ranker's scores of `candidates`, in the same order"
    )
    candidate_count: int | None = Field(
        default=None, ge=0, le=MAX_LONG, description="How many candidates were ranked (`candidates` holds the first of them)"
    )

    @model_validator(mode="after")
    def _aligned_candidates(self) -> "EventContext":
        if len(self.candidates or ()) != len(self.candidate_scores or ()):
            raise ValueError("candidates and candidate_scores must have the same length")
        if self.candidates is not None and (self.candidate_count or 0) < len(self.candidates):
            raise ValueError("candidate_count must be at least the number of candidates logged")
        return self


class Event(BaseModel):
    """One user-item interaction: the unit of the event log (the master dataset).

    `event_id` is unique; an event seen twice is the same event and is dropped by readers.
    `ts` is event time, always stored as an aware UTC datetime.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier
    user_id: Identifier
    item_id: Identifier
    type: EventType
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None
    ts: datetime
    context: EventContext = Field(default_factory=EventContext)

    @field_validator("ts")
    @classmethod
    def _utc(cls, ts: datetime) -> datetime:
        return as_utc(ts)

    def to_json_line(self) -> str:
        return self.model_dump_json(exclude_defaults=False) + "\n"


class ItemAttributes(BaseModel):
    """What a catalog item says about itself; `Item` adds its id (the API's upsert body is this)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=1024)
    categories: list[Category] = Field(default_factory=list, max_length=64)
    available: bool = True
    created_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("created_at")
    @classmethod
    def _utc(cls, created_at: datetime | None) -> datetime | None:
        return None if created_at is None else as_utc(created_at)


class Item(ItemAttributes):
    """A catalog item. `available=False` removes it from recommendations without deleting it."""

    item_id: Identifier


class User(BaseModel):
    """A catalog user with optional profile attributes (age, gender, occupation, ...)."""

    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    attributes: dict[str, Any] = Field(default_factory=dict)
