"""Live (speed-layer) writes: events in, idempotent Redis updates out.

`LiveWriter.write(events)` turns each event into updates of every feature the definitions mark as
`updated_by_stream()`, and applies a batch of events in one Lua script call (one round trip):

- each event first sets its replay marker (`KeyLayout.seen_marker`) with `SET NX PX`; if the
  marker already exists the event was applied before and all its updates are skipped, in the
  same atomic script, so replaying a stream never double-counts. On a Redis Cluster a script may
  only touch keys of one hash slot, so there an event's updates are split by slot (an entity's
  keys share the hash tag `{E:ID}`), each part guarded by its own marker in that slot, one
  pipelined call per slot (`cluster_scripts`): each part is applied exactly once;
- events older than `dedup_ttl` (whose marker may have expired) are dropped as too late: the next
  batch run accounts for them. Impressions the API logs itself use `server_impression_ttl`
  instead, when shorter (`attribution.replay_window_ms`): only a retried request repeats them, so
  their markers, one per served slot and most of the markers kept, need not live two days; events more than `max_future_skew` ahead of the clock are not
  applied at all (`in_future`): an event time is untrusted, and a far-future one would top every
  sequence and latest value for ever. So no TTL derives from an event time: a marker lives
  `dedup_ttl (or server_impression_ttl) + max_future_skew`, every other key its feature's TTL;
- counts go into per-bucket hash fields (`<feature>:<bucket>`), sequences into capped sorted sets,
  top-k into capped sorted sets (per time bucket when windowed), latest values into hash fields
  guarded by their event time; every key carries a TTL that only ever grows, and count buckets
  older than the feature's TTL are trimmed, so memory stays bounded however long it runs.

Use one writer per worker process. The API is the one writer of these features: it applies each
posted batch in one call (the Flink job computes only the attributed counts, `attribution_store`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from feature_store.attribution import event_ms, replay_window_ms
from feature_store.cluster_scripts import ClusterScript, hash_tag, split_by_slot
from feature_store.definitions import FEATURES, GLOBAL_ID, Entity, FeatureDef, FeatureRegistry, Kind, Member
from feature_store.redis_client import ConnectionSpec, translate_errors
from feature_store.redis_layout import KeyLayout
from feature_store.schemas import Event

CategoryLookup = Callable[[Sequence[str]], Sequence[Sequence[str]]]

# KEYS[1]: a marker (routes the call to its slot's master; unused otherwise).
# ARGV: per group: marker, marker ttl ms, n ops, and n ops of 7 slots: op, key, a, b, c, d, e.
# Returns each group's freshness (1 applied, 0 a replay).
_APPLY = """
local function extend_ttl(key, ttl)
  if redis.call('PTTL', key) < tonumber(ttl) then redis.call('PEXPIRE', key, ttl) end
end
local function trim_buckets(key, prefix, min_bucket)
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, #prefix) == prefix then
      local bucket = tonumber(string.sub(field, #prefix + 1))
      if bucket and bucket < min_bucket then redis.call('HDEL', key, field) end
    end
  end
end
local function cap_zset(key, cap) redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(cap) + 1)) end
local applied, i = {}, 1
while i <= #ARGV do
  local fresh = redis.call('SET', ARGV[i], '1', 'NX', 'PX', ARGV[i + 1])
  local nops = tonumber(ARGV[i + 2])
  i = i + 3
  applied[#applied + 1] = fresh and 1 or 0
  for _ = 1, nops do
    if fresh then
      local op, key, a, b, c, d, e = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6]
      if op == 'H' then      -- bucketed count: field a += b; ttl c; trim fields d<bucket> older than e
        if redis.call('HINCRBY', key, a, b) == tonumber(b) then trim_buckets(key, d, tonumber(e)) end
        extend_ttl(key, c)
      elseif op == 'Z' then  -- sequence: member b at score a (never moved back in time); cap c; ttl d
        redis.call('ZADD', key, 'GT', a, b)
        cap_zset(key, c)
        extend_ttl(key, d)
      elseif op == 'I' then  -- top-k: member a += b; cap c; ttl d
        redis.call('ZINCRBY', key, b, a)
        cap_zset(key, c)
        extend_ttl(key, d)
      elseif op == 'L' then  -- latest value: field a = b if event time c is newer; ttl d
        local seen = tonumber(redis.call('HGET', key, a .. ':ts') or '-1')
        if tonumber(c) >= seen then redis.call('HSET', key, a, b, a .. ':ts', c) end
        extend_ttl(key, d)
      end
    end
    i = i + 7
  end
end
return applied
"""

#: A windowed top-k keeps this many times `cap` members per bucket, so the union stays accurate.
TOP_K_BUCKET_HEADROOM = 10


@dataclass(frozen=True)
class LiveWriteResult:
    """What one `write` did: events applied, replays skipped, events too old or too far ahead."""

    applied: int = 0
    duplicates: int = 0
    too_late: int = 0
    in_future: int = 0

    def __add__(self, other: "LiveWriteResult") -> "LiveWriteResult":
        return LiveWriteResult(self.applied + other.applied, self.duplicates + other.duplicates,
                               self.too_late + other.too_late, self.in_future + other.in_future)


class LiveWriter:
    """Applies events to the live views, idempotently, in pipelined batches.

    `categories_of(item_ids)` returns each item's categories (needed by category features); the
    online store wires it to the item batch view. `write` also accepts them explicitly.
    `server_impression_ttl_s` (default: `dedup_ttl_s`) is the replay window of the impressions the
    API logs itself.
    """

    def __init__(self, spec: ConnectionSpec, dedup_ttl_s: float, max_future_skew_s: float,
                 batch_size: int = 500, registry: FeatureRegistry = FEATURES,
                 categories_of: CategoryLookup | None = None, client: redis.Redis | None = None,
                 server_impression_ttl_s: float | None = None) -> None:
        self._spec = spec
        self._layout = KeyLayout(spec.key_prefix)
        self._dedup_ttl_s = dedup_ttl_s
        self._server_ttl_s = dedup_ttl_s if server_impression_ttl_s is None else server_impression_ttl_s
        self._max_future_skew_ms = int(max_future_skew_s * 1000)
        self._batch_size = batch_size
        self._categories_of = categories_of
        self._client = client or spec.client()
        self._cluster = ClusterScript(self._client, _APPLY) if isinstance(self._client, RedisCluster) else None
        self._script = self._client.register_script(_APPLY)
        self._features = {e: registry.stream_features(e) for e in (Entity.USER, Entity.ITEM, Entity.GLOBAL)}
        self._needs_categories = any(f.member is Member.CATEGORY for fs in self._features.values() for f in fs)

    def write(self, events: Iterable[Event | Mapping[str, Any]],
              item_categories: Mapping[str, Sequence[str]] | None = None, now: float | None = None) -> LiveWriteResult:
        """Apply `events` (Event objects or their JSON dicts); `now` (epoch s) defaults to the clock."""
        result = LiveWriteResult()
        batch: list[Event] = []
        for event in events:
            batch.append(event if isinstance(event, Event) else Event.model_validate(event))
            if len(batch) >= self._batch_size:
                result += self._write_batch(batch, item_categories, now)
                batch = []
        if batch:
            result += self._write_batch(batch, item_categories, now)
        return result

    def close(self) -> None:
        self._client.close()

    def _write_batch(self, events: list[Event], item_categories: Mapping[str, Sequence[str]] | None,
                     now: float | None) -> LiveWriteResult:
        now_ms = int((time.time() if now is None else now) * 1000)
        newest = now_ms + self._max_future_skew_ms
        windows = [self._replay_window_ms(e) for e in events]
        kept = [(e, w) for e, w in zip(events, windows) if now_ms - w <= event_ms(e) <= newest]
        fresh = [e for e, _ in kept]
        in_future = sum(1 for e in events if event_ms(e) > newest)
        categories = self._categories(fresh, item_categories)
        # A replay counts as fresh until ts + its window, and ts is at most the skew ahead of now.
        marker_ttls = [w + self._max_future_skew_ms for _, w in kept]
        groups = self._groups(fresh, categories, now_ms)
        applied_events: set[int] = set()
        calls = self._calls(groups)
        requests: list[tuple[list[str], list[Any]]] = []
        for call in calls:
            args: list[Any] = []
            for index, marker, ops in call:
                args += [marker, marker_ttls[index], len(ops) // 7, *ops]
            requests.append(([call[0][1]], args))
        with translate_errors(self._spec, f"writing {len(fresh)} live events"):
            if self._cluster is not None:
                replies = self._cluster.run_all(requests)
            else:
                replies = [self._script(keys=keys, args=args) for keys, args in requests]
        for call, flags in zip(calls, replies):
            applied_events.update(index for (index, _, _), flag in zip(call, flags) if int(flag))
        applied = len(applied_events)
        return LiveWriteResult(applied, len(fresh) - applied, len(events) - len(fresh) - in_future, in_future)

    def _replay_window_ms(self, event: Event) -> int:
        return replay_window_ms(event.type, event.event_id, self._dedup_ttl_s, self._server_ttl_s)

    def _groups(self, events: list[Event], categories: Mapping[str, Sequence[str]],
                now_ms: int) -> list[tuple[int, str, list[Any]]]:
        """(event index, marker, ops): one group per event, or on a cluster one per event and slot."""
        groups: list[tuple[int, str, list[Any]]] = []
        for index, event in enumerate(events):
            marker = self._layout.seen_marker(event.event_id)
            ops = self._ops(event, categories.get(event.item_id, ()), now_ms)
            parts = split_by_slot(marker, ops, 7) if self._cluster is not None and ops else [(marker, ops)]
            groups += [(index, part_marker, part_ops) for part_marker, part_ops in parts]
        return groups

    def _calls(self, groups: list[tuple[int, str, list[Any]]]) -> list[list[tuple[int, str, list[Any]]]]:
        """One script call for a single server; on a cluster, one per hash slot."""
        if not groups or not self._cluster:
            return [groups] if groups else []
        by_slot: dict[int, list[tuple[int, str, list[Any]]]] = {}
        for group in groups:
            by_slot.setdefault(key_slot(hash_tag(group[1]).encode()), []).append(group)
        return list(by_slot.values())

    def _categories(self, events: list[Event],
                    given: Mapping[str, Sequence[str]] | None) -> Mapping[str, Sequence[str]]:
        if given is not None or not self._needs_categories or not events:
            return given or {}
        if self._categories_of is None:
            return {}
        item_ids = sorted({e.item_id for e in events})
        return dict(zip(item_ids, self._categories_of(item_ids)))

    def _ops(self, event: Event, categories: Sequence[str], now_ms: int) -> list[Any]:
        ids = {Entity.USER: event.user_id, Entity.ITEM: event.item_id, Entity.GLOBAL: GLOBAL_ID}
        ops: list[Any] = []
        for entity, features in self._features.items():
            for feature in features:
                if feature.events is None or feature.events.matches(event.type, event.value):
                    ops += self._feature_ops(feature, ids[entity], event, categories, now_ms)
        return ops

    def _feature_ops(self, feature: FeatureDef, entity_id: str, event: Event, categories: Sequence[str],
                     now_ms: int) -> list[Any]:
        layout, ts, name = self._layout, event_ms(event), feature.name
        ttl_ms = int(feature.ttl.total_seconds() * 1000)  # type: ignore[union-attr]  # checked by FeatureDef
        members = list(categories) if feature.member is Member.CATEGORY else [event.item_id]
        if ts < now_ms - ttl_ms or not members:
            return []
        if feature.kind in (Kind.COUNT, Kind.WINDOW_COUNT):
            bucket_ms = int(feature.stream_bucket().total_seconds() * 1000)
            field, oldest = f"{name}:{ts // bucket_ms}", (now_ms - ttl_ms) // bucket_ms
            return ["H", layout.live_hash(feature.entity, entity_id), field, 1, ttl_ms, f"{name}:", oldest]
        if feature.kind is Kind.SEQUENCE:
            return ["Z", layout.live_zset(feature.entity, entity_id, name), ts, members[0], feature.cap, ttl_ms, ""]
        if feature.kind is Kind.LATEST:
            return ["L", layout.live_hash(feature.entity, entity_id), name, members[0], ts, ttl_ms, ""]
        return self._top_k_ops(feature, entity_id, members, ts, ttl_ms)

    def _top_k_ops(self, feature: FeatureDef, entity_id: str, members: list[str], ts: int, ttl_ms: int) -> list[Any]:
        bucket, cap = None, feature.cap or 0
        if feature.window is not None:
            bucket_ms = int(feature.stream_bucket().total_seconds() * 1000)
            bucket, cap = ts // bucket_ms, cap * TOP_K_BUCKET_HEADROOM
        key = self._layout.live_zset(feature.entity, entity_id, feature.name, bucket)
        ops: list[Any] = []
        for member in members:
            ops += ["I", key, member, 1, cap, ttl_ms, ""]
        return ops

