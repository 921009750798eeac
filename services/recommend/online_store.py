"""The online state the serving path reads and writes: features, popularity, the item/user catalog.

User behaviour (the DIN sequence `user.recent_items`, merged batch + live) and `global.trending`
come from the feature store (`feature_store.online_store`); the API writes posted events to it
through the feature store's `LiveWriter`, the same idempotent writes the Flink job makes. What the
serving side keeps itself, under `<prefix>:srv:`:

    evt:<event_id>      string, TTL    dedup marker: an event is accepted once (SET NX)
    pop                 sorted set     item → weighted positive-event count (all time)
    item:<item_id>      string         the `Item` as JSON
    user:<user_id>      string         the `User` as JSON
    cat:<category>      sorted set     item ids in the category, scored by created_at (newest first)
    unavailable         set            items that must never be recommended

Every Redis failure (connection refused, timeout) surfaces as `DegradedError`, which the pipeline
turns into a degraded answer instead of a 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TypeVar

import redis

from feature_store.definitions import GLOBAL_ID, POSITIVE, Entity
from feature_store.errors import FeatureStoreUnavailableError
from feature_store.live_writes import LiveWriter
from feature_store.online_store import RedisOnlineStore
from feature_store.schemas import Event, EventType, Item, User
from services.recommend.item_cache import ItemCache, TtlMemo
from services.recommend.types import DegradedError

T = TypeVar("T")

# Weight of a positive event (feature_store.definitions.POSITIVE decides which are) in popularity.
POSITIVE_WEIGHTS: dict[EventType, float] = {
    EventType.LIKE: 2.0,
    EventType.SHARE: 2.0,
    EventType.ADD_TO_CART: 2.0,
    EventType.PURCHASE: 3.0,
}

# KEYS: marker, pop. ARGV: marker ttl, item, weight.
_APPLY_EVENT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
local weight = tonumber(ARGV[3])
if weight > 0 then redis.call('ZINCRBY', KEYS[2], weight, ARGV[2]) end
return 1
"""


def event_weight(event: Event) -> float:
    """How much an event says the user liked the item (0 for impressions, skips, low ratings)."""
    if not POSITIVE.matches(event.type, event.value):
        return 0.0
    return POSITIVE_WEIGHTS.get(event.type, 1.0)


@contextmanager
def _degrade_on_redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis.RedisError, FeatureStoreUnavailableError) as exc:
        raise DegradedError(f"redis unavailable: {type(exc).__name__}: {exc}") from exc


class ServingStore:
    """Feature reader and item catalog for the pipeline, and the API's live writes."""

    def __init__(
        self,
        client: redis.Redis,
        features: RedisOnlineStore,
        prefix: str = "recsys",
        dedup_ttl_s: int = 7 * 86400,
        item_cache: ItemCache | None = None,
        global_cache: TtlMemo | None = None,
    ) -> None:
        self.client = client
        self.item_cache = item_cache or ItemCache(ttl_s=0.0)
        self.global_cache = global_cache or TtlMemo(ttl_s=0.0)
        self.features = features
        self.prefix = f"{prefix}:srv:"
        self.dedup_ttl_s = dedup_ttl_s
        self._apply_event = client.register_script(_APPLY_EVENT)
        self._live_writer: LiveWriter | None = None

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _call(self, action: Callable[[], T]) -> T:
        with _degrade_on_redis_errors():
            return action()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # -- events ------------------------------------------------------------------------------

    def apply_events(self, events: Sequence[Event]) -> list[bool]:
        """Apply each event's live effects once (popularity here, live features through the feature
        store's writer); returns, per event, False if it had been applied before."""
        if not events:
            return []
        with _degrade_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for event in events:
                self._apply_event(
                    keys=[self._key("evt", event.event_id), self._key("pop")],
                    args=[self.dedup_ttl_s, event.item_id, event_weight(event)],
                    client=pipe,
                )
            applied = [bool(flag) for flag in pipe.execute()]
            self._write_live_features(events)
        return applied

    def _write_live_features(self, events: Sequence[Event]) -> None:
        item_ids = sorted({event.item_id for event in events})
        categories: dict[str, Sequence[str]] = dict(self.categories_of(item_ids))
        unknown = [item for item in item_ids if item not in categories]
        if unknown:  # not upserted through the API: ask the batch view
            from_batch = self.features.get_features(Entity.ITEM, unknown, ["categories"])["categories"]
            categories.update(zip(unknown, (list(c) for c in from_batch)))
        if self._live_writer is None:
            self._live_writer = self.features.live_writer()
        self._live_writer.write(events, item_categories=categories)

    def already_applied(self, event_ids: Sequence[str]) -> set[str]:
        """Event ids whose dedup marker exists (applied before, within the marker TTL)."""
        if not event_ids:
            return set()
        with _degrade_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for event_id in event_ids:
                pipe.exists(self._key("evt", event_id))
            return {event_id for event_id, found in zip(event_ids, pipe.execute()) if found}

    # -- FeatureReader -----------------------------------------------------------------------

    def user_behaviour(self, user_id: str, limit: int) -> tuple[list[str], frozenset[str]]:
        """The DIN behaviour sequence (newest first, batch history merged with live events) and
        every item the feature store knows the user interacted with (for the seen filter)."""
        columns = self._call(lambda: self.features.get_features(Entity.USER, [user_id], ["recent_items", "history"]))
        recent = list(columns["recent_items"][0])
        return recent[:limit], frozenset(recent) | frozenset(columns["history"][0])

    def read_features(self, entity: Entity, ids: Sequence[str], names: Sequence[str]) -> dict:
        """Typed feature columns from the feature store (for the ranker's dense inputs)."""
        return self._call(lambda: self.features.get_features(entity, ids, names))

    def trending(self, k: int) -> list[tuple[str, float]]:
        """Items with the most positive events in the recent window, strongest first, with their
        all-time counts (memoised like `popular`)."""
        def read() -> list[tuple[str, float]]:
            column = self._call(lambda: self.features.get_features(Entity.GLOBAL, [GLOBAL_ID], ["trending"]))
            items = list(column["trending"][0])[:k]
            return list(zip(items, self.popularity_of(items)))

        return self.global_cache.get(("trending", k), read)

    def popular(self, k: int) -> list[tuple[str, float]]:
        """The all-time most popular items with their weighted counts (the same for every user,
        so memoised for `global_cache`'s TTL)."""
        def read() -> list[tuple[str, float]]:
            raw = self._call(lambda: self.client.zrevrange(self._key("pop"), 0, k - 1, withscores=True))
            return [(item.decode(), float(score)) for item, score in raw]

        return self.global_cache.get(("popular", k), read)

    def popularity_of(self, item_ids: Sequence[str]) -> list[float]:
        if not item_ids:
            return []
        raw = self._call(lambda: self.client.zmscore(self._key("pop"), list(item_ids)))
        return [float(score or 0.0) for score in raw]

    # -- catalog -----------------------------------------------------------------------------

    def upsert_item(self, item: Item) -> bool:
        """Store an item and re-index its categories; returns True if it was new."""
        key = self._key("item", item.item_id)
        with _degrade_on_redis_errors():
            previous = self.client.get(key)
            old_categories = set(json.loads(previous)["categories"]) if previous else set()
            created = (item.created_at or datetime.now(timezone.utc)).timestamp()
            pipe = self.client.pipeline(transaction=True)
            pipe.set(key, item.model_dump_json())
            for category in old_categories - set(item.categories):
                pipe.zrem(self._key("cat", category), item.item_id)
            for category in item.categories:
                pipe.zadd(self._key("cat", category), {item.item_id: created})
            if item.available:
                pipe.srem(self._key("unavailable"), item.item_id)
            else:
                pipe.sadd(self._key("unavailable"), item.item_id)
            pipe.execute()
        self.item_cache.invalidate(item.item_id)
        return previous is None

    def get_item(self, item_id: str) -> Item | None:
        raw = self._call(lambda: self.client.get(self._key("item", item_id)))
        return Item.model_validate_json(raw) if raw else None

    def upsert_user(self, user: User) -> bool:
        key = self._key("user", user.user_id)
        with _degrade_on_redis_errors():
            return self.client.set(key, user.model_dump_json(), get=True) is None

    def get_user(self, user_id: str) -> User | None:
        raw = self._call(lambda: self.client.get(self._key("user", user_id)))
        return User.model_validate_json(raw) if raw else None

    def _items(self, item_ids: Sequence[str]) -> dict[str, dict]:
        if not item_ids:
            return {}
        found, missing = self.item_cache.get_many(item_ids)
        if missing:
            raw = self._call(lambda: self.client.mget([self._key("item", i) for i in missing]))
            fetched = {i: json.loads(value) for i, value in zip(missing, raw) if value}
            self.item_cache.put_many(fetched)
            found.update(fetched)
        return found

    def categories_of(self, item_ids: Sequence[str]) -> dict[str, list[str]]:
        return {i: data["categories"] for i, data in self._items(item_ids).items()}

    def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        return {i: data["title"] for i, data in self._items(item_ids).items() if data.get("title")}

    def unavailable(self, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        flags = self._call(lambda: self.client.smismember(self._key("unavailable"), list(item_ids)))
        return {i for i, flag in zip(item_ids, flags) if flag}

    def items_in_category(self, category: str, limit: int) -> list[str]:
        """The category's newest items (memoised like `popular`)."""
        def read() -> list[str]:
            raw = self._call(lambda: self.client.zrevrange(self._key("cat", category), 0, limit - 1))
            return [value.decode() for value in raw]

        return self.global_cache.get(("category", category, limit), read)


def log_popularity(count: float) -> float:
    return math.log1p(max(count, 0.0))
