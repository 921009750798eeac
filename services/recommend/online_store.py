"""The online state the serving path reads and writes: features, popularity, the item/user catalog.

User behaviour (the DIN sequence `user.recent_items`, merged batch + live), popularity
(`global.popular` from the batch layer, `global.trending` from the speed layer, each item scored by
its lambda-merged `item.popularity_all`) come from the feature store (`feature_store.online_store`);
the API writes posted events to it through the feature store's `LiveWriter`, the same idempotent
writes the Flink job makes, so an event counts once whichever path brought it. What the serving
side keeps itself, under `<prefix>:srv:`:

    evt:<event_id>      string, TTL    dedup claim: an event is accepted once (SET NX after the log append,
                                       holding a token of the claiming call)
    item:<item_id>      string         the `Item` as JSON (PUT /v1/items, or the Parquet catalog sync)
    item_put            hash           item id → ms of its last PUT (the catalog sync's "newer wins" rule)
    user:<user_id>      string         the `User` as JSON
    user_put            hash           user id → ms of its last PUT (the same rule for users)
    cat:<category>      sorted set     item ids in the category, scored by created_at (newest first); an
                                       item without one by when it first entered the category
    unavailable         set            items that must never be recommended

On a Redis Cluster these keys spread over the masters by their own names. No write here needs a
transaction: an item's index entries (`cat:*`, `unavailable`) are written first and its record
last, in a second round trip, because the index update is computed from the stored record: after a
failure between the two, a retry of the PUT (or the next sync) reads the old record again and
redoes the whole update. Multi-key reads (`mget`) are split by slot on a cluster.

Every Redis failure (connection refused, timeout) surfaces as `DegradedError`, which the pipeline
turns into a degraded answer instead of a 500.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable, Collection, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import pydantic
import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from feature_store.definitions import GLOBAL_ID, Entity
from feature_store.errors import FeatureStoreUnavailableError
from feature_store.live_writes import LiveWriter, LiveWriteResult
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_client import RedisClient
from feature_store.schemas import Event, Item, User
from services.recommend.item_cache import ItemCache, TtlMemo
from services.recommend.types import DegradedError, UnreadableEntryError

T = TypeVar("T")
Ranked = list[tuple[str, float]]

#: A ranked list read past the items a request skips is read in pages of 1, 2, 4 and 8 times the
#: entries asked for, no more: a request's cost stays bounded however much of a list it skips.
MAX_WIDENING = 8

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
        client: RedisClient,
        features: RedisOnlineStore,
        prefix: str = "recsys",
        dedup_ttl_s: int = 7 * 86400,
        item_cache: ItemCache | None = None,
        global_cache: TtlMemo | None = None,
    ) -> None:
        self.client = client
        # `is None`, not `or`: an empty ItemCache is falsy (it has a length), and `or` silently
        # replaced the configured cache with an uncached one.
        self.item_cache = ItemCache(ttl_s=0.0) if item_cache is None else item_cache
        self.global_cache = TtlMemo(ttl_s=0.0) if global_cache is None else global_cache
        self.features = features
        self.prefix = f"{prefix}:srv:"
        self.dedup_ttl_s = dedup_ttl_s
        self._live_writer: LiveWriter | None = None

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _call(self, action: Callable[[], T]) -> T:
        with _degrade_on_redis_errors():
            return action()

    def ping(self) -> bool:
        """Whether Redis answers: on a cluster, every master (each holds a share of the keys)."""
        try:
            if isinstance(self.client, RedisCluster):
                return bool(self.client.ping(target_nodes=RedisCluster.PRIMARIES))
            return bool(self.client.ping())
        except (redis.RedisError, RedisClusterException):
            return False

    # -- events ------------------------------------------------------------------------------

    def apply_events(self, events: Sequence[Event]) -> LiveWriteResult:
        """Apply events' live effects (live features, popularity included, through the feature
        store's writer, whose replay markers make a repeat a no-op); what the writer did."""
        if not events:
            return LiveWriteResult()
        with _degrade_on_redis_errors():
            return self._write_live_features(events)

    def _write_live_features(self, events: Sequence[Event]) -> LiveWriteResult:
        item_ids = sorted({event.item_id for event in events})
        categories: dict[str, Sequence[str]] = dict(self.categories_of(item_ids))
        unknown = [item for item in item_ids if item not in categories]
        if unknown:  # not upserted through the API: ask the batch view
            from_batch = self.features.get_features(Entity.ITEM, unknown, ["categories"])["categories"]
            categories.update(zip(unknown, (list(c) for c in from_batch)))
        if self._live_writer is None:
            self._live_writer = self.features.live_writer()
        return self._live_writer.write(events, item_categories=categories)

    def already_applied(self, event_ids: Sequence[str]) -> set[str]:
        """Event ids claimed before (`claim_events`, within the marker TTL)."""
        if not event_ids:
            return set()
        with _degrade_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for event_id in event_ids:
                pipe.exists(self._key("evt", event_id))
            return {event_id for event_id, found in zip(event_ids, pipe.execute()) if found}

    def claim_events(self, event_ids: Sequence[str]) -> set[str]:
        """The ids this call is first to claim: one `SET NX` marker per id, holding a token of this
        call, so of concurrent claims of one id exactly one wins. The markers an id's `SET NX` did
        not set are read back, and those holding the token count as won: a cluster pipeline
        re-sends a command that timed out, and the re-sent `SET NX` finds this call's own marker."""
        if not event_ids:
            return set()
        token = uuid.uuid4().hex
        keys = [self._key("evt", event_id) for event_id in event_ids]
        with _degrade_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, token, nx=True, ex=self.dedup_ttl_s)
            set_now = pipe.execute()
            set_before = self._holding([key for key, done in zip(keys, set_now) if not done], token)
        return {event_id for event_id, key, done in zip(event_ids, keys, set_now) if done or key in set_before}

    def _holding(self, keys: list[str], token: str) -> set[str]:
        """The keys among `keys` whose value is `token` (no round trip for none)."""
        if not keys:
            return set()
        return {key for key, value in zip(keys, _get_many(self.client, keys)) if value == token.encode()}

    # -- FeatureReader -----------------------------------------------------------------------

    def user_behaviour(self, user_id: str, limit: int) -> tuple[list[str], frozenset[str]]:
        """The DIN behaviour sequence (newest first, batch history merged with live events) and
        every item the feature store knows the user interacted with (for the seen filter: the
        positives, and `seen`'s items acted on in any other way, such as a low rating or a skip)."""
        columns = self._call(lambda: self.features.get_features(Entity.USER, [user_id], ["recent_items", "history", "seen"]))
        history = list(columns["history"][0])
        # `recent_items` is a speed-layer feature: the batch layer publishes the same positives as
        # `history`, so the merged sequence is live items after the watermark, then the batch
        # history (what the ranking samples' hist_item_ids hold: every positive before the ts).
        recent = list(dict.fromkeys([*columns["recent_items"][0], *history]))
        return recent[:limit], frozenset(recent) | frozenset(history) | frozenset(columns["seen"][0])

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
        """The all-time most popular items with their positive-event counts, most first: the batch
        layer's `global.popular` (up to the watermark) ∪ the speed layer's `global.trending`, each
        scored by its merged `item.popularity_all` (batch count + live count after the watermark,
        so every event counts once). The same for every user, so memoised for `global_cache`'s TTL."""
        def read() -> list[tuple[str, float]]:
            lists = self._call(lambda: self.features.get_features(Entity.GLOBAL, [GLOBAL_ID], ["popular", "trending"]))
            items = list(dict.fromkeys([*lists["popular"][0], *lists["trending"][0]]))
            ranked = sorted(zip(items, self.popularity_of(items)), key=lambda pair: -pair[1])
            return [(item, count) for item, count in ranked if count > 0][:k]

        return self.global_cache.get(("popular", k), read)

    def popularity_of(self, item_ids: Sequence[str]) -> list[float]:
        """Each item's all-time positive-event count (`item.popularity_all`, batch + live merged)."""
        if not item_ids:
            return []
        column = self._call(lambda: self.features.get_features(Entity.ITEM, list(item_ids), ["popularity_all"]))
        return [float(count) for count in column["popularity_all"]]

    # -- catalog -----------------------------------------------------------------------------

    def upsert_item(self, item: Item) -> bool:
        """Store an item (PUT /v1/items) and re-index its categories; returns True if it was new.
        The PUT time is recorded so a catalog sync of an older Parquet file does not undo it."""
        with _degrade_on_redis_errors():
            previous = self.client.get(self._key("item", item.item_id))
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self._key("item_put"), item.item_id, int(time.time() * 1000))
            self._write_items(pipe, [(item, previous)])
        self.item_cache.invalidate(item.item_id)
        return previous is None

    def sync_items(self, items: Sequence[Item], written_at_ms: int) -> int:
        """Store catalog rows from a file written at `written_at_ms` in two pipelined round trips,
        except items PUT after that time (the newer write wins); returns the rows stored."""
        if not items:
            return 0
        ids = [item.item_id for item in items]
        with _degrade_on_redis_errors():
            previous = _get_many(self.client, [self._key("item", i) for i in ids])
            put_ms = self.client.hmget(self._key("item_put"), ids)
            stored = _not_put_since(ids, put_ms, written_at_ms)
            pipe = self.client.pipeline(transaction=False)
            self._forget_puts(pipe, "item_put", stored, put_ms, ids)
            self._write_items(pipe, [(item, old) for item, old in zip(items, previous) if item.item_id in stored])
        for item_id in stored:
            self.item_cache.invalidate(item_id)
        return len(stored)

    def sync_users(self, users: Sequence[User], written_at_ms: int) -> int:
        """`sync_items` for users: rows from a file written at `written_at_ms`, except users PUT
        after that time; returns the rows stored."""
        if not users:
            return 0
        ids = [user.user_id for user in users]
        with _degrade_on_redis_errors():
            put_ms = self.client.hmget(self._key("user_put"), ids)
            stored = _not_put_since(ids, put_ms, written_at_ms)
            pipe = self.client.pipeline(transaction=False)
            for user in users:
                if user.user_id in stored:
                    pipe.set(self._key("user", user.user_id), user.model_dump_json())
            self._forget_puts(pipe, "user_put", stored, put_ms, ids)
            pipe.execute()
        return len(stored)

    def _forget_puts(
        self, pipe: redis.client.Pipeline, name: str, stored: set[str], put_ms: list[bytes | None], ids: list[str]
    ) -> None:
        """Drop the PUT times a synced file row now carries (the file is newer than the PUT)."""
        overridden = [i for i, put in zip(ids, put_ms) if put is not None and i in stored]
        if overridden:
            pipe.hdel(self._key(name), *overridden)

    def _write_items(self, pipe: redis.client.Pipeline, pairs: Sequence[tuple[Item, bytes | None]]) -> None:
        """Send `pipe` (what the caller queued) with the items' index updates, then the items'
        records (each pair: the item and its stored record before this write)."""
        for item, previous in pairs:
            self._queue_index_writes(pipe, item, previous)
        pipe.execute()
        for item, _ in pairs:
            pipe.set(self._key("item", item.item_id), item.model_dump_json())
        pipe.execute()

    def _queue_index_writes(self, pipe: redis.client.Pipeline, item: Item, previous: bytes | None) -> None:
        old_categories = set(json.loads(previous)["categories"]) if previous else set()
        for category in old_categories - set(item.categories):
            pipe.zrem(self._key("cat", category), item.item_id)
        # Undated: the time it first entered the category, kept (NX) by every later write and sync,
        # so a restart's sync does not make the whole undated catalog newer than items PUT since.
        created = item.created_at.timestamp() if item.created_at else time.time()
        for category in item.categories:
            pipe.zadd(self._key("cat", category), {item.item_id: created}, nx=item.created_at is None)
        if item.available:
            pipe.srem(self._key("unavailable"), item.item_id)
        else:
            pipe.sadd(self._key("unavailable"), item.item_id)

    def get_item(self, item_id: str) -> Item | None:
        raw = self._call(lambda: self.client.get(self._key("item", item_id)))
        return _entry(Item, "item", item_id, raw)

    def upsert_user(self, user: User) -> bool:
        """Store a user (PUT /v1/users); returns True if it was new. The PUT time is recorded, as for items."""
        with _degrade_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self._key("user_put"), user.user_id, int(time.time() * 1000))
            pipe.set(self._key("user", user.user_id), user.model_dump_json(), get=True)
            _, previous = pipe.execute()
        return previous is None

    def get_user(self, user_id: str) -> User | None:
        raw = self._call(lambda: self.client.get(self._key("user", user_id)))
        return _entry(User, "user", user_id, raw)

    def _items(self, item_ids: Sequence[str]) -> dict[str, dict]:
        if not item_ids:
            return {}
        return self.item_cache.get_many(item_ids, self._read_items)

    def _read_items(self, item_ids: list[str]) -> dict[str, dict]:
        raw = self._call(lambda: _get_many(self.client, [self._key("item", i) for i in item_ids]))
        return {i: json.loads(value) for i, value in zip(item_ids, raw) if value}

    def categories_of(self, item_ids: Sequence[str]) -> dict[str, list[str]]:
        return {i: data["categories"] for i, data in self._items(item_ids).items()}

    def titles(self, item_ids: Sequence[str]) -> dict[str, str]:
        return {i: data["title"] for i, data in self._items(item_ids).items() if data.get("title")}

    def unavailable(self, item_ids: Sequence[str]) -> set[str]:
        if not item_ids:
            return set()
        flags = self._call(lambda: self.client.smismember(self._key("unavailable"), list(item_ids)))
        return {i for i, flag in zip(item_ids, flags) if flag}

    def read_usable(
        self, read: Callable[[int], Ranked], limit: int, skip: Collection[str] = frozenset(),
        memo: Hashable | None = None,
    ) -> Ranked:
        """The first `limit` entries of a ranked list that are available and not in `skip`, where
        `read(n)` gives the list's first n: read `limit`, then twice as many, and so on up to
        `MAX_WIDENING` times `limit`, until `limit` are kept or the list has no more. A global list
        names itself by `memo`: its pages, availability applied, are memoised with the other global
        reads, so a request skipping nothing costs no round trip (the pipeline's own availability
        check stays exact)."""
        if limit <= 0:
            return []
        size = limit
        while True:
            page, ended = self._usable_page(read, size, memo)
            kept = [(item, score) for item, score in page if item not in skip]
            if len(kept) >= limit or ended or size >= MAX_WIDENING * limit:
                return kept[:limit]
            size *= 2

    def _usable_page(self, read: Callable[[int], Ranked], size: int, memo: Hashable | None) -> tuple[Ranked, bool]:
        """The list's first `size` entries less the unavailable ones, and whether the list ended."""
        def load() -> tuple[Ranked, bool] | None:
            found = read(size)
            if not found:
                return None  # nothing yet: not memoised (the memo re-reads an empty value)
            gone = self.unavailable([item for item, _ in found])
            return [(item, score) for item, score in found if item not in gone], len(found) < size

        page = load() if memo is None else self.global_cache.get(("usable", memo, size), load)
        return page or ([], True)

    def usable_in_category(self, category: str, limit: int, skip: Collection[str] = frozenset()) -> Ranked:
        """The category's newest `limit` items that are available and not in `skip`, with their
        popularity (`read_usable` over `items_in_category`, memoised as a global list)."""
        def page(size: int) -> Ranked:
            items = self.items_in_category(category, size)
            return list(zip(items, self.popularity_of(items)))

        return self.read_usable(page, limit, skip, memo=("category", category))

    def items_in_category(self, category: str, limit: int) -> list[str]:
        """The category's newest items whose record still names the category (memoised like
        `popular`). The index is a hint, the record the truth: two PUTs of one item read the same
        previous record, so the loser's categories stay in the index (Redis Cluster puts the
        category sets in other slots than the record, so no transaction spans them). Twice `limit`
        are read so that such leftovers do not shorten the list; a record is read through the item
        cache, so an item moved into the category shows on other workers within its TTL."""
        def read() -> list[str]:
            raw = self._call(lambda: self.client.zrevrange(self._key("cat", category), 0, 2 * limit - 1))
            listed = [value.decode() for value in raw]
            records = self.categories_of(listed)
            return [item for item in listed if category in records.get(item, ())][:limit]

        return self.global_cache.get(("category", category, limit), read)


def _get_many(client: RedisClient, keys: list[str]) -> list[bytes | None]:
    """MGET, split by hash slot on a cluster (one MGET per slot, pipelined by the client)."""
    return client.mget_nonatomic(keys) if isinstance(client, RedisCluster) else client.mget(keys)


def _not_put_since(ids: Sequence[str], put_ms: Sequence[bytes | None], written_at_ms: int) -> set[str]:
    """The ids a file written at `written_at_ms` may store: those not PUT after it (newer wins)."""
    return {i for i, put in zip(ids, put_ms) if put is None or int(put) <= written_at_ms}


def log_popularity(count: float) -> float:
    return math.log1p(max(count, 0.0))


Entry = TypeVar("Entry", Item, User)


def _entry(model: type[Entry], kind: str, entry_id: str, raw: bytes | None) -> Entry | None:
    if not raw:
        return None
    try:
        return model.model_validate_json(raw)
    except (pydantic.ValidationError, ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UnreadableEntryError(
            f"{kind} {entry_id!r} is stored in a form this version cannot read back ({reason}); "
            f"PUT it again (with metadata within the catalog bounds) to mend it"
        ) from exc
