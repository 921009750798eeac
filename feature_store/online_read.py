"""The online read: many entities × many features in one server-side script (one round trip).

The script reads the batch pointer, the version's watermark and field codes, every entity's batch
row and its live keys, all atomically (a Lua script runs alone), so a read never mixes two batch
versions. Python then decodes into typed numpy columns and applies the lambda merge rules
(docs/feature_store.md):

- count:    batch count (up to the watermark) + sum of live hourly buckets from the watermark on;
- sequence: live items at or after the watermark (newest first), then the batch history,
            de-duplicated, capped;
- latest:   the live value if it was written at or after the watermark, else the batch value;
- window count / top-k / ratio: live only (ratio = smoothed_ctr of its two parts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from feature_store.definitions import DType, Entity, FeatureDef, FeatureRegistry, Kind, Source, smoothed_ctr
from feature_store.redis_layout import ROW_SEPARATOR, decode_sequence, decode_value, escape_key_part

# ARGV: prefix, entity, now ms, n ids, ids.., n batch names, names.., n ops, ops (5 slots: op, name, a, b, c).
# Ids arrive escaped; the key shapes are `redis_layout.KeyLayout`'s (feature names need no escaping).
_READ_ARGS = """
local prefix, entity, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local n_ids = tonumber(ARGV[4])
local p = 5 + n_ids
local n_names = tonumber(ARGV[p])
local n_ops, ops_at = tonumber(ARGV[p + n_names + 1]), p + n_names + 2
"""
# Resolves the batch pointer and reads the version's watermark, field codes and rows.
_READ_BATCH = """
local version = redis.call('GET', prefix .. ':batch:{' .. entity .. '}:current')
local wm, present, blobs = false, {}, {}
if version then
  local fields = {'wm'}
  for k = 1, n_names do fields[k + 1] = 'f:' .. ARGV[p + k] end
  local meta = redis.call('HMGET', prefix .. ':batch:{' .. entity .. '}:' .. version .. ':meta', unpack(fields))
  wm = tonumber(meta[1])
  for k = 1, n_names do
    if meta[k + 1] then present[#present + 1] = k; present[#present + 1] = tonumber(meta[k + 1]) end
  end
end
if #present > 0 then
  local row_prefix = prefix .. ':b:' .. entity .. ':' .. version .. ':'
  for first = 1, n_ids, 1000 do
    local keys = {}
    for k = first, math.min(n_ids, first + 999) do keys[#keys + 1] = row_prefix .. ARGV[4 + k] end
    for _, blob in ipairs(redis.call('MGET', unpack(keys))) do blobs[#blobs + 1] = blob end
  end
end
"""
# Reads every id's live keys (needs `wm`, false without a batch version).
_READ_LIVE = """
local function bucket_sum(key, name, first, last, row)
  if last < first then return 0 end
  if last - first >= 8 then
    -- A long range (a week of hourly buckets) over a sparse hash: scan the buckets that exist
    -- instead of asking for every one. Decided and read once per row, for all its counts.
    if row.all == nil then
      row.all = redis.call('HLEN', key) <= last - first and redis.call('HGETALL', key)
    end
    if row.all then
      local total, head = 0, name .. ':'
      for j = 1, #row.all, 2 do
        local field = row.all[j]
        if string.sub(field, 1, #head) == head then
          local bucket = tonumber(string.sub(field, #head + 1))
          if bucket and bucket >= first and bucket <= last then total = total + tonumber(row.all[j + 1]) end
        end
      end
      return total
    end
  end
  local fields = {}
  for b = first, last do fields[#fields + 1] = name .. ':' .. string.format('%d', b) end
  local total = 0
  for _, v in ipairs(redis.call('HMGET', key, unpack(fields))) do if v then total = total + tonumber(v) end end
  return total
end
local function top_members(pairs_, cap)
  local out = {}
  for j = #pairs_ - 1, 1, -2 do
    if #out >= cap then break end
    out[#out + 1] = pairs_[j]
  end
  return out
end
local rows = {}
for k = 1, n_ids do
  if n_ops == 0 then break end
  local id = ARGV[4 + k]
  local live, out, scan = prefix .. ':s:{' .. entity .. ':' .. id .. '}', {}, {}
  for o = 0, n_ops - 1 do
    local q = ops_at + o * 5
    local op, name, a, b, c = ARGV[q], ARGV[q + 1], tonumber(ARGV[q + 2]), tonumber(ARGV[q + 3]), tonumber(ARGV[q + 4])
    if op == 'c' or op == 'w' then      -- bucketed count: a = buckets kept, b = bucket ms; 'c' starts at wm
      local last = math.floor(now / b)
      local first = last - a + 1
      if op == 'c' and wm then first = math.max(first, math.floor(wm / b)) end
      out[#out + 1] = bucket_sum(live, name, first, last, scan)
    elseif op == 'z' then               -- sequence: a = cap, b = 1 to keep only items at or after wm
      local low = '-inf'
      if b == 1 and wm then low = string.format('%d', wm) end
      out[#out + 1] = redis.call('ZREVRANGEBYSCORE', live .. ':' .. name, '+inf', low, 'LIMIT', 0, a)
    elseif op == 't' then               -- top-k of one key: a = cap
      out[#out + 1] = redis.call('ZREVRANGE', live .. ':' .. name, 0, a - 1)
    elseif op == 'u' then               -- windowed top-k: a = buckets, b = bucket ms, c = cap
      local last, keys = math.floor(now / b), {}
      for bkt = last - a + 1, last do keys[#keys + 1] = live .. ':' .. name .. ':' .. string.format('%d', bkt) end
      local n_keys = #keys
      keys[n_keys + 1] = 'WITHSCORES'
      out[#out + 1] = top_members(redis.call('ZUNION', n_keys, unpack(keys)), c)
    elseif op == 'l' then               -- latest value and its event time
      out[#out + 1] = redis.call('HMGET', live, name, name .. ':ts')
    end
  end
  rows[k] = out
end
"""
READ_SCRIPT = _READ_ARGS + _READ_BATCH + _READ_LIVE + "return {version, wm, present, blobs, rows}\n"
# The live part alone, for a Redis Cluster (one slot per call): n batch names is 0 and the
# watermark (or "" for none) follows the ops.
LIVE_READ_SCRIPT = (_READ_ARGS + "local wm = tonumber(ARGV[ops_at + n_ops * 5]) or false\n"
                    + _READ_LIVE + "return rows\n")


@dataclass(frozen=True)
class ReadPlan:
    """What to fetch for a set of requested features: batch fields and live ops, in order."""

    entity: Entity
    requested: tuple[FeatureDef, ...]
    batch: tuple[FeatureDef, ...]
    live: tuple[FeatureDef, ...]
    live_args: tuple[Any, ...]

    @classmethod
    def build(cls, registry: FeatureRegistry, entity: Entity, names: Sequence[str]) -> "ReadPlan":
        requested = registry.resolve(entity, names)
        needed: dict[str, FeatureDef] = {}
        for feature in requested:
            if feature.source is Source.REQUEST:
                raise ValueError(f"{feature.qualified_name} is a request feature: the caller supplies it")
            for part in feature.ratio_of or ():
                needed.setdefault(part, registry.get(entity, part))
            needed.setdefault(feature.name, feature)
        batch = tuple(f for f in needed.values() if f.in_batch_view())
        live = tuple(f for f in needed.values() if f.updated_by_stream())
        args: list[Any] = []
        for feature in live:
            args += _live_op(feature)
        return cls(entity, tuple(requested), batch, live, tuple(args))

    def script_args(self, prefix: str, ids: Sequence[str], now_ms: int) -> list[Any]:
        return [prefix, self.entity.value, now_ms, len(ids), *map(escape_key_part, ids), len(self.batch),
                *(f.name for f in self.batch), len(self.live), *self.live_args]


def _live_op(feature: FeatureDef) -> list[Any]:
    ttl_ms = int(feature.ttl.total_seconds() * 1000) if feature.ttl else 0
    bucket_ms = int(feature.stream_bucket().total_seconds() * 1000)
    if feature.kind is Kind.COUNT:
        return ["c", feature.name, ttl_ms // bucket_ms + 1, bucket_ms, 0]
    if feature.kind is Kind.WINDOW_COUNT:
        return ["w", feature.name, int(feature.window.total_seconds() * 1000) // bucket_ms, bucket_ms, 0]  # type: ignore[union-attr]
    if feature.kind is Kind.SEQUENCE:
        return ["z", feature.name, feature.cap, 1 if feature.lambda_merge else 0, 0]
    if feature.kind is Kind.TOP_K and feature.window is not None:
        return ["u", feature.name, int(feature.window.total_seconds() * 1000) // bucket_ms, bucket_ms, feature.cap]
    if feature.kind is Kind.TOP_K:
        return ["t", feature.name, feature.cap, 0, 0]
    return ["l", feature.name, 0, 0, 0]


def assemble(plan: ReadPlan, reply: list[Any], n: int) -> dict[str, np.ndarray]:
    """Typed columns from the script's reply, merged by each feature's rule, defaults filled in."""
    _version, wm, present, blobs, live_rows = reply
    split = [blob.split(ROW_SEPARATOR) if blob else None for blob in blobs] if blobs else [None] * n
    batch_raw: dict[str, list[Any]] = {f.name: [None] * n for f in plan.batch}
    for slot in range(0, len(present), 2):
        column = present[slot + 1]
        batch_raw[plan.batch[present[slot] - 1].name] = [(parts[column] or None) if parts else None for parts in split]
    live_raw = {f.name: [row[j] for row in live_rows] for j, f in enumerate(plan.live)}
    parts: dict[str, np.ndarray] = {}
    for feature in {**{f.name: f for f in plan.batch}, **{f.name: f for f in plan.live}}.values():
        if feature.kind is not Kind.RATIO:
            parts[feature.name] = _column(feature, batch_raw.get(feature.name), live_raw.get(feature.name), wm, n)
    out = {}
    for feature in plan.requested:
        if feature.kind is Kind.RATIO:
            numerator, denominator = feature.ratio_of  # type: ignore[misc]
            out[feature.name] = smoothed_ctr(parts[numerator], parts[denominator]).astype(np.float32)
        else:
            out[feature.name] = parts[feature.name]
    return out


def _column(feature: FeatureDef, batch: list[Any] | None, live: list[Any] | None, wm: int | None,
            n: int) -> np.ndarray:
    if feature.kind is Kind.COUNT and live is not None:
        base = _scalar_column(feature, batch) if batch is not None else np.zeros(n, np.int64)
        return base + np.asarray(live, dtype=np.int64)
    if feature.kind is Kind.WINDOW_COUNT:
        return np.asarray(live, dtype=np.int64)
    if feature.dtype is DType.SEQUENCE:
        return _sequence_column(feature, batch, live, n)
    if feature.kind is Kind.LATEST and live is not None:
        return _latest_column(feature, batch, live, wm, n)
    if feature.dtype is DType.VECTOR:
        default = np.asarray(feature.default_value(), dtype=np.float32)
        vectors = [decode_value(feature, raw) if raw else default for raw in batch or [None] * n]
        return np.stack(vectors) if vectors else np.zeros((0, feature.dim or 0), np.float32)
    return _scalar_column(feature, batch or [None] * n)


def _scalar_column(feature: FeatureDef, raw: list[Any]) -> np.ndarray:
    default = feature.default_value()
    if feature.dtype is DType.STRING:
        return np.array([v.decode() if v is not None else default for v in raw] or [], dtype=object)
    dtype = np.float32 if feature.dtype is DType.FLOAT else np.int64
    fill = str(default).encode()
    return np.array([fill if v is None else v for v in raw], dtype=bytes).astype(dtype) if raw else np.zeros(0, dtype)


def _sequence_column(feature: FeatureDef, batch: list[Any] | None, live: list[Any] | None,
                     n: int) -> np.ndarray:
    column = np.empty(n, dtype=object)
    cap = feature.cap or 0
    for k in range(n):
        merged = [m.decode() for m in live[k]] if live is not None else []
        if batch is not None and batch[k]:
            merged += decode_sequence(batch[k])
        column[k] = list(dict.fromkeys(merged))[:cap] if merged else list(feature.default_value())
    return column


def _latest_column(feature: FeatureDef, batch: list[Any] | None, live: list[Any], wm: int | None,
                   n: int) -> np.ndarray:
    values: list[Any] = []
    for k in range(n):
        live_value, live_ts = live[k]
        batch_value = batch[k] if batch is not None else None
        fresher_live = live_value is not None and (batch_value is None or wm is None or int(live_ts) >= wm)
        chosen = live_value if fresher_live else batch_value
        values.append(chosen)
    if feature.dtype is DType.STRING:
        default = feature.default_value()
        return np.array([v.decode() if v is not None else default for v in values], dtype=object)
    return _scalar_column(feature, values)
