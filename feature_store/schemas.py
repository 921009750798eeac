"""Event and catalog schemas (DESIGN.md "Contracts"), validated with pydantic v2."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=128, strip_whitespace=True)]


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    LIKE = "like"
    RATING = "rating"
    PURCHASE = "purchase"
    ADD_TO_CART = "add_to_cart"
    SHARE = "share"
    SKIP = "skip"


class EventContext(BaseModel):
    """Where an event happened: which request, slot and experiment arm produced it."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, max_length=128)
    position: int | None = Field(default=None, ge=0)
    page: str | None = Field(default=None, max_length=128)
    experiment: str | None = Field(default=None, max_length=128)
    arm: str | None = Field(default=None, max_length=128)


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
        if ts.tzinfo is None:
            return ts.replace(tzinfo=timezone.utc)
        return ts.astimezone(timezone.utc)

    def to_json_line(self) -> str:
        return self.model_dump_json(exclude_defaults=False) + "\n"


class ItemAttributes(BaseModel):
    """What a catalog item says about itself; `Item` adds its id (the API's upsert body is this)."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=1024)
    categories: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=64
    )
    available: bool = True
    created_at: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Item(ItemAttributes):
    """A catalog item. `available=False` removes it from recommendations without deleting it."""

    item_id: Identifier


class User(BaseModel):
    """A catalog user with optional profile attributes (age, gender, occupation, ...)."""

    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    attributes: dict[str, Any] = Field(default_factory=dict)
