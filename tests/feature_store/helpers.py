"""Builders shared by the feature store tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from feature_store.schemas import Event

WM = datetime(2024, 3, 1, 12, tzinfo=timezone.utc)


def item_row(item_id: str, **values: Any) -> dict[str, Any]:
    row = {"item_id": item_id, "popularity_1d": 0, "popularity_7d": 0, "popularity_30d": 0, "popularity_all": 0,
           "impressions_all": 0, "clicks_all": 0, "primary_category": None, "categories": None, "embedding": None}
    return {**row, **values}


def user_row(user_id: str, **values: Any) -> dict[str, Any]:
    row = {"user_id": user_id, "event_count": 0, "positive_count": 0, "top_categories": None, "history": None,
           "recent_items": None, "seen": None, "last_category": None}
    return {**row, **values}


def event(event_id: str, user: str, item: str, kind: str, minutes: float, value: float | None = None) -> Event:
    """An event `minutes` after the test watermark `WM` (negative: before it)."""
    return Event(event_id=event_id, user_id=user, item_id=item, type=kind, value=value,
                 ts=WM + timedelta(minutes=minutes))
