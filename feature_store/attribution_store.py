"""Attributed counts in Redis: the speed layer's writes and the online reads.

The Flink job (`pipelines.flink.join`, run by `operators.Attribute`) decides *what* to count by the rule of
`feature_store.attribution`; this store keeps the counts, idempotently and bounded in memory:

- one Lua script per record (`record_many` sends a batch of them in one pipelined round trip): it
  first sets the record's replay marker (`SET NX PX`), and applies nothing if the marker exists,
  so a replay after a restart adds nothing. Markers: per impression event id (`record_impression`,
  and `LateImpressionRecord`, which counts nothing: an impression is counted or dropped once), per
  (impression event id, outcome type) (`record_credit`: an impression counts at most one outcome of
  each type), per outcome event id (`record_miss`: unattributed and late outcomes). Each event is
  decided once: an outcome's marker holds its decision (credited to an impression, unattributed or
  late), set by whichever record of it comes first, and a record of another decision is not
  applied (a restart that decides it otherwise, a client's late resend of an outcome already
  credited). A marker lives `dedup_ttl + max_future_skew` (the API's own impressions and their
  credits: `server_impression_ttl`, `attribution.replay_window_ms`); records older (or than the
  retention) are not applied (`TOO_OLD`), records dated more than `max_future_skew` ahead of the
  clock neither (`IN_FUTURE`);
- counts of the dimensions of `attribution.Dimension`, in hourly buckets of the *impression's*
  event time, as hash fields `<measure>:<bucket ms>` (measure: `impression` or an outcome type)
  of one key per (dimension, key) (`KeyLayout.attribution_counts`, with its own hash tag), except
  (item, position): those live in the item's own hash as fields `<measure>@<position>:<bucket ms>`,
  so that the bandits' read of 200 candidates' examined counts touches 200 keys, not 200 × the
  positions (`scan_counts` and `counts` give them as the `item_position` dimension);
- every key expires `RETENTION` (7 d + 1 h: the longest read window plus a bucket) after
  min(its newest bucket, now), never later, since an event time is untrusted; buckets older than
  the retention are trimmed when a new bucket starts.

Keys travel in ARGV (like `live_writes`). On a Redis Cluster a record's updates are split by hash
slot, each part under its own marker in that slot (`cluster_scripts`): the outcome's decision is
therefore set first, in its own slot, and a record's parts are sent (a second round trip) only where
the decision is this record's. A crash between the two leaves the decision without its counts: a
replay of the same decision applies them, another decision does not (that outcome is then not
counted; on one server the decision and the counts are one script). `examined_counts` sums the
buckets client-side from one pipeline instead of one script.

Upgrade from the layout with one key per (item, position): `feature_store.attribution_upgrade`
folds those keys into the item hashes (run once after the old stream job has stopped).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from datetime import timedelta
from enum import StrEnum
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from feature_store.attribution import BUCKET_MS, CountRow, Dimension, Impression, Outcome, replay_window_ms, split_item_position
from feature_store.attribution_scripts import DECIDE_SCRIPT, EXAMINED_SCRIPT, RECORD_SCRIPT
from feature_store.cluster_scripts import ClusterScript, split_by_slot
from feature_store.definitions import join_key
from feature_store.position_bias import CLICK, IMPRESSION, debiased_ctr, examination
from feature_store.redis_client import ConnectionSpec, translate_errors
from feature_store.redis_layout import KeyLayout, unescape_key_part

RETENTION_MS = 7 * 24 * BUCKET_MS + BUCKET_MS
#: Separates the measure from the position in the item hash's (item, position) fields (measures
#: are event types and positions digits or `-`, neither holds it).
POSITION_MARK = "@"
#: The windows the online reads serve: the current hour bucket and the buckets before it.
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


def max_record_age_ms(dedup_ttl_s: float) -> int:
    """How old a record may be when the store sees it and still be applied: no older than its
    replay marker lives (a replay must find it) nor than the buckets it is counted in."""
    return min(int(dedup_ttl_s * 1000), RETENTION_MS)


_OLDEST = object()  # placeholder in an op for the oldest bucket kept (now - RETENTION_MS)
MARK_ONLY = "M"  # an op that changes nothing: its key only places the record's marker (RECORD_SCRIPT)
#: Values per op (kind, key, member, score or bucket, bound, expire-at), as RECORD_SCRIPT reads them.
OP_WIDTH = 6


@dataclass(frozen=True)
class ExaminedCounts:
    """Per item, aligned with the ids asked for: examined impressions E_i = Σ_k θ_k · impressions_{i,k}
    (θ_k of `position_bias.examination`) and attributed clicks c_i, the two terms of the debiased
    CTR (Joachims et al., WSDM 2017, for examination weighting), kept apart so a bandit can put
    its own prior on them."""

    examined: np.ndarray
    clicks: np.ndarray


class RecordResult(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # its replay marker exists: applied before
    TOO_OLD = "too_old"  # older than the replay markers live: the batch layer counts it
    IN_FUTURE = "in_future"  # dated past the allowed clock skew: not trusted


class Miss(StrEnum):
    UNATTRIBUTED = "unattributed"
    LATE = "late"  # too late for the speed layer; the batch layer attributes it


@dataclass(frozen=True)
class ImpressionRecord:
    """Count an impression in every dimension (once per impression event id)."""

    impression: Impression


@dataclass(frozen=True)
class CreditRecord:
    """Credit `outcome` to `impression` (at most one outcome of each type per impression)."""

    impression: Impression
    outcome: Outcome


@dataclass(frozen=True)
class MissRecord:
    """Count an outcome that was not attributed, or came too late (once per outcome event id)."""

    outcome: Outcome
    miss: Miss


@dataclass(frozen=True)
class LateImpressionRecord:
    """An impression too late for the speed layer: counts nothing, but takes its replay marker, so
    that a replay after a restart (which may find it in time) does not count it either."""

    impression: Impression


Record = ImpressionRecord | CreditRecord | MissRecord | LateImpressionRecord


@dataclass(frozen=True)
class _Write:
    """A record to apply: its replay marker, the outcome's decision if it has one, its ops."""

    index: int  # in the batch
    marker: str
    marker_ttl_ms: int
    decision: tuple[str, str, int] | None  # (the outcome's marker, this record's decision, its ttl ms)
    ops: list[Any]


class AttributionStore(ABC):
    """Attributed counts: idempotent writes of the speed layer, reads for serving and checks."""

    @abstractmethod
    def record_many(self, records: Sequence[Record], now_ms: int | None = None) -> list[RecordResult]:
        """Apply `records` (each idempotent, as its class says); one result per record, in order."""

    def record_impression(self, impression: Impression, now_ms: int | None = None) -> RecordResult:
        return self.record_many([ImpressionRecord(impression)], now_ms)[0]

    def record_credit(self, impression: Impression, outcome: Outcome, now_ms: int | None = None) -> RecordResult:
        return self.record_many([CreditRecord(impression, outcome)], now_ms)[0]

    def record_miss(self, outcome: Outcome, miss: Miss, now_ms: int | None = None) -> RecordResult:
        return self.record_many([MissRecord(outcome, miss)], now_ms)[0]

    @abstractmethod
    def counts(self, dimension: str, key: str, since_ms: int, until_ms: int) -> dict[str, int]:
        """{measure: count} over the hour buckets starting in [since_ms, until_ms)."""

    @abstractmethod
    def scan_counts(self, dimension: str) -> Iterator[CountRow]:
        """Every stored bucket of `dimension`, in no particular order."""

    @abstractmethod
    def misses(self, since_ms: int, until_ms: int) -> dict[str, int]:
        """{"<unattributed|late>:<outcome type>": count} over the buckets in [since_ms, until_ms)."""

    @abstractmethod
    def recent_outcomes(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest credited outcomes, newest first, each with its impression's context."""

    @abstractmethod
    def position_bias(self, since_ms: int, until_ms: int) -> dict[str, float]:
        """θ per position (`feature_store.position_bias.examination`)."""

    @abstractmethod
    def examined_counts(self, item_ids: Sequence[str], since_ms: int, until_ms: int) -> ExaminedCounts:
        """(E_i, c_i) per item over the buckets in [since_ms, until_ms), in one read."""

    def debiased_ctr(self, item_ids: Sequence[str], since_ms: int, until_ms: int) -> list[float]:
        """dCTR per item (`feature_store.position_bias.debiased_ctr`), aligned with `item_ids`."""
        counts = self.examined_counts(item_ids, since_ms, until_ms)
        return [float(ctr) for ctr in debiased_ctr(counts.clicks, counts.examined)]

    def window_counts(self, dimension: str, key: str, window: str, now_ms: int | None = None) -> dict[str, int]:
        """`counts` over a window of `WINDOWS` ending with the current hour bucket."""
        since_ms, until_ms = window_bounds(window, now_ms)
        return self.counts(dimension, key, since_ms, until_ms)


def window_bounds(window: str, now_ms: int | None = None) -> tuple[int, int]:
    """[since, until) of the hour buckets a window covers: the current one and those before it."""
    if window not in WINDOWS:
        raise ValueError(f"unknown window {window!r}; known: {', '.join(WINDOWS)}")
    now_ms = _now_ms() if now_ms is None else now_ms
    until_ms = now_ms - now_ms % BUCKET_MS + BUCKET_MS
    return until_ms - int(WINDOWS[window].total_seconds() * 1000), until_ms


class RedisAttributionStore(AttributionStore):
    """`AttributionStore` on one Redis server; open one per worker (the client is made on first use)."""

    def __init__(self, spec: ConnectionSpec, dedup_ttl_s: float, max_future_skew_s: float,
                 recent_outcomes: int = 1000, server_impression_ttl_s: float | None = None) -> None:
        self._spec = spec
        self._layout = KeyLayout(spec.key_prefix)
        self._skew_ms = int(max_future_skew_s * 1000)
        self._dedup_ttl_s = dedup_ttl_s
        self._server_ttl_s = dedup_ttl_s if server_impression_ttl_s is None else server_impression_ttl_s
        self._recent_cap = recent_outcomes
        self._client: redis.Redis | None = None

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self._spec.client()
            self._script = self._client.register_script(RECORD_SCRIPT)
            self._examined = self._client.register_script(EXAMINED_SCRIPT)
            on_cluster = isinstance(self._client, RedisCluster)
            self._cluster = ClusterScript(self._client, RECORD_SCRIPT) if on_cluster else None
            self._decide = ClusterScript(self._client, DECIDE_SCRIPT) if on_cluster else None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def record_many(self, records: Sequence[Record], now_ms: int | None = None) -> list[RecordResult]:
        now_ms = _now_ms() if now_ms is None else now_ms
        results: list[RecordResult | None] = []
        writes: list[_Write] = []
        for n, record in enumerate(records):
            marker, ts_ms, ops = self._prepare(record)
            window_ms = self._replay_window_ms(record)
            queued = self._queue(ts_ms, ops, now_ms, max_record_age_ms(window_ms / 1000))
            results.append(queued if isinstance(queued, RecordResult) else None)
            if not isinstance(queued, RecordResult):
                writes.append(_Write(n, marker, window_ms + self._skew_ms, self._decision(record), queued))
        on_cluster = self.client is not None and self._cluster is not None  # the client is made first
        with translate_errors(self._spec, f"recording {len(records)} attributions"):
            fresh = (self._apply_on_cluster if on_cluster else self._apply)(writes, now_ms)
        return [result or (RecordResult.APPLIED if n in fresh else RecordResult.DUPLICATE) for n, result in enumerate(results)]

    def _apply(self, writes: list[_Write], now_ms: int) -> set[int]:
        """The batch positions of the writes applied, each write one script call (one server)."""
        pipe = self.client.pipeline(transaction=False)
        for write in writes:
            decision = write.decision or ("", "", 0)
            self._script(args=[write.marker, write.marker_ttl_ms, now_ms, *decision, *write.ops], client=pipe)
        flags = pipe.execute() if writes else []
        return {write.index for write, flag in zip(writes, flags) if int(flag)}

    def _apply_on_cluster(self, writes: list[_Write], now_ms: int) -> set[int]:
        """`_apply` on a Redis Cluster: the outcomes' decisions first (each in its marker's slot),
        then the parts of every write whose decision holds, each under its marker in its slot."""
        assert self._cluster is not None and self._decide is not None
        decisions = [(write.index, write.decision) for write in writes if write.decision is not None]
        holds = self._decide.run_all([([key], [value, ttl]) for _, (key, value, ttl) in decisions])
        refused = {index for (index, _), flag in zip(decisions, holds) if not int(flag)}
        calls = [(write.index, [marker, write.marker_ttl_ms, now_ms, "", "", 0, *ops])
                 for write in writes if write.index not in refused
                 for marker, ops in split_by_slot(write.marker, write.ops, OP_WIDTH)]
        flags = self._cluster.run_all([([args[0]], args) for _, args in calls])
        return {n for (n, _), flag in zip(calls, flags) if int(flag)}

    def _replay_window_ms(self, record: Record) -> int:  # an impression's count and credits: its window
        if isinstance(record, MissRecord):
            return self._outcome_window_ms(record.outcome)
        return replay_window_ms(IMPRESSION, record.impression.event_id, self._dedup_ttl_s, self._server_ttl_s)

    def _outcome_window_ms(self, outcome: Outcome) -> int:
        return replay_window_ms(outcome.type, outcome.event_id, self._dedup_ttl_s, self._server_ttl_s)

    def _decision(self, record: Record) -> tuple[str, str, int] | None:
        """(the outcome's marker, what this record decides, the marker's ttl ms) of an outcome's record.

        It lives the outcome's own replay window (not its impression's, which may be shorter), so it
        outlives every record of the outcome that may still be applied. A miss's marker is this one."""
        if isinstance(record, CreditRecord):
            outcome, decided = record.outcome, f"credit:{record.impression.event_id}"
        elif isinstance(record, MissRecord):
            outcome, decided = record.outcome, str(record.miss)
        else:
            return None
        ttl_ms = self._outcome_window_ms(outcome) + self._skew_ms
        return self._layout.attribution_marker(outcome.event_id), decided, ttl_ms

    def _prepare(self, record: Record) -> tuple[str, int, list[Any]]:
        """(replay marker, event time, ops) of a record."""
        if isinstance(record, ImpressionRecord):
            return self._impression_ops(record.impression)
        if isinstance(record, LateImpressionRecord):
            marker, ts_ms, ops = self._impression_ops(record.impression)
            # Marks only; on a cluster the keys still place its markers where the count's would be.
            return marker, ts_ms, [MARK_ONLY if n % OP_WIDTH == 0 else slot for n, slot in enumerate(ops)]
        if isinstance(record, CreditRecord):
            return self._credit_ops(record.impression, record.outcome)
        return self._miss_ops(record.outcome, record.miss)

    def _impression_ops(self, impression: Impression) -> tuple[str, int, list[Any]]:
        layout = self._layout
        ops = self._count_ops(impression, IMPRESSION)
        ops += ["Z", layout.attribution_positions(), impression.counted_position, impression.bucket_ms, _OLDEST, None]
        ops += ["Z", layout.attribution_policy_arms(), impression.counted_policy_arm, impression.bucket_ms, _OLDEST, None]
        return layout.attribution_marker(impression.event_id), impression.ts_ms, ops

    def _credit_ops(self, impression: Impression, outcome: Outcome) -> tuple[str, int, list[Any]]:
        record = json.dumps({
            "outcome_id": outcome.event_id, "type": outcome.type, "ts_ms": outcome.ts_ms,
            "impression_id": impression.event_id, "impression_ts_ms": impression.ts_ms,
            "user_id": impression.user_id, "item_id": impression.item_id, "request_id": impression.request_id,
            "position": impression.position, "policy": impression.policy, "experiment": impression.experiment,
            "arm": impression.arm,
        })
        ops = self._count_ops(impression, outcome.type)
        ops += ["L", self._layout.attribution_recent(), record, self._recent_cap, "", None]
        return self._layout.attribution_credit(impression.event_id, outcome.type), impression.ts_ms, ops

    def _miss_ops(self, outcome: Outcome, miss: Miss) -> tuple[str, int, list[Any]]:
        field = f"{miss}:{outcome.type}:{outcome.ts_ms - outcome.ts_ms % BUCKET_MS}"
        ops = ["H", self._layout.attribution_stats(), field, _OLDEST, "", None]
        return self._layout.attribution_marker(outcome.event_id), outcome.ts_ms, ops

    def _count_ops(self, impression: Impression, measure: str) -> list[Any]:
        ops: list[Any] = []
        for dimension, key in impression.count_keys():
            redis_key, prefix = self._home(dimension, key)
            ops += ["H", redis_key, f"{measure}{prefix}:{impression.bucket_ms}", _OLDEST, "", None]
        return ops

    def _home(self, dimension: str, key: str) -> tuple[str, str]:
        """The hash holding a count key's fields, and what its measure names carry after the measure."""
        if dimension == Dimension.ITEM_POSITION:
            item, position = split_item_position(key)
            return self._layout.attribution_counts(Dimension.ITEM, item), f"{POSITION_MARK}{position}"
        return self._layout.attribution_counts(dimension, key), ""

    def _queue(self, ts_ms: int, ops: list[Any], now_ms: int, max_age_ms: int) -> RecordResult | list[Any]:
        """One record's ops ready for the script; or the result, when it is not to be applied."""
        if ts_ms > now_ms + self._skew_ms:
            return RecordResult.IN_FUTURE
        if ts_ms < now_ms - max_age_ms:
            return RecordResult.TOO_OLD
        # Every key of a record lives RETENTION from its bucket, and never from a time ahead of now.
        expire_at = min(ts_ms - ts_ms % BUCKET_MS, now_ms) + RETENTION_MS
        oldest = now_ms - RETENTION_MS
        ops = [oldest if slot is _OLDEST else slot for slot in ops]
        for i in range(OP_WIDTH - 1, len(ops), OP_WIDTH):
            ops[i] = expire_at
        return ops

    def counts(self, dimension: str, key: str, since_ms: int, until_ms: int) -> dict[str, int]:
        redis_key, prefix = self._home(dimension, key)
        with translate_errors(self._spec, f"reading {dimension} counts"):
            fields = self.client.hgetall(redis_key)
        return _sum_buckets(fields, since_ms, until_ms, prefix)

    def scan_counts(self, dimension: str) -> Iterator[CountRow]:
        stored = Dimension.ITEM if dimension == Dimension.ITEM_POSITION else dimension
        head = len(self._layout.attribution_counts(stored, ""))
        with translate_errors(self._spec, f"scanning {dimension} counts"):
            for chunk in _chunks(self._count_keys(stored), 500):
                pipe = self.client.pipeline(transaction=False)
                for redis_key in chunk:
                    pipe.hgetall(redis_key)
                for redis_key, fields in zip(chunk, pipe.execute()):
                    key = unescape_key_part(redis_key[head - 1:-1])
                    for field, value in fields.items():
                        name, _, bucket = field.decode().rpartition(":")
                        measure, mark, position = name.partition(POSITION_MARK)
                        if bool(mark) == (dimension == Dimension.ITEM_POSITION):
                            row_key = join_key(key, position) if mark else key
                            yield CountRow(dimension, row_key, int(bucket), measure, int(value))

    def _count_keys(self, dimension: str) -> Iterator[str]:
        """The count keys of `dimension`: (policy, arm) ones from their index (the experiment reports
        read them on every guardrail tick), the others by a SCAN of the keyspace."""
        index = self._layout.attribution_policy_arms()
        if dimension == Dimension.POLICY_ARM and self.client.exists(index):
            for key in self.client.zrange(index, 0, -1):
                yield self._layout.attribution_counts(dimension, key.decode())
        else:
            yield from (key.decode() for key in self.client.scan_iter(self._layout.attribution_counts_pattern(dimension), count=1000))

    def misses(self, since_ms: int, until_ms: int) -> dict[str, int]:
        with translate_errors(self._spec, "reading attribution misses"):
            fields = self.client.hgetall(self._layout.attribution_stats())
        return _sum_buckets(fields, since_ms, until_ms)

    def recent_outcomes(self, limit: int = 100) -> list[dict[str, Any]]:
        with translate_errors(self._spec, "reading attributed outcomes"):
            records = self.client.lrange(self._layout.attribution_recent(), 0, limit - 1)
        return [json.loads(record) for record in records]

    def position_bias(self, since_ms: int, until_ms: int) -> dict[str, float]:
        positions = self._positions()
        rows = self._many([(Dimension.POSITION, p) for p in positions], since_ms, until_ms)
        return examination(dict(zip(positions, rows)))

    def examined_counts(self, item_ids: Sequence[str], since_ms: int, until_ms: int) -> ExaminedCounts:
        if self.client is not None and self._cluster is not None:  # keys in many slots: no one script
            return self._examined_from_pipeline(item_ids, since_ms, until_ms)
        layout = self._layout
        args = [layout.attribution_positions(), since_ms, until_ms, IMPRESSION, CLICK,
                layout.attribution_counts(Dimension.POSITION, "")[:-1], POSITION_MARK, len(item_ids),
                *(layout.attribution_counts(Dimension.ITEM, item) for item in item_ids)]
        client = self.client
        with translate_errors(self._spec, f"reading the examined counts of {len(item_ids)} items"):
            raw_positions, by_position, clicks, shown = self._examined(args=args, client=client)
        positions = [p.decode() for p in raw_positions]
        theta = examination({p: {IMPRESSION: by_position[2 * n], CLICK: by_position[2 * n + 1]}
                             for n, p in enumerate(positions)})
        weights = np.array([theta[p] for p in positions])
        shown_matrix = np.array(shown, dtype=float).reshape(len(item_ids), len(positions))
        return ExaminedCounts(shown_matrix @ weights, np.array(clicks, dtype=float))

    def _examined_from_pipeline(self, item_ids: Sequence[str], since_ms: int, until_ms: int) -> ExaminedCounts:
        """`examined_counts` from one pipeline of the same count keys, summed here instead of in Lua."""
        positions = self._positions()
        m = len(positions)
        sums = self._many([(Dimension.POSITION, p) for p in positions] + [(Dimension.ITEM, i) for i in item_ids],
                          since_ms, until_ms)
        theta = examination(dict(zip(positions, sums[:m])))
        shown = np.array([[s.get(f"{IMPRESSION}{POSITION_MARK}{p}", 0) for p in positions] for s in sums[m:]], dtype=float)
        clicks = np.array([s.get(CLICK, 0) for s in sums[m:]], dtype=float)
        return ExaminedCounts(shown.reshape(len(item_ids), m) @ np.array([theta[p] for p in positions]), clicks)

    def _positions(self) -> list[str]:
        with translate_errors(self._spec, "reading attribution positions"):
            return sorted(p.decode() for p in self.client.zrange(self._layout.attribution_positions(), 0, -1))

    def _many(self, keys: list[tuple[str, str]], since_ms: int, until_ms: int) -> list[dict[str, int]]:
        with translate_errors(self._spec, f"reading {len(keys)} attribution counts"):
            pipe = self.client.pipeline(transaction=False)
            for dimension, key in keys:
                pipe.hgetall(self._layout.attribution_counts(dimension, key))
            return [_sum_buckets(fields, since_ms, until_ms) for fields in pipe.execute()]


def _sum_buckets(fields: dict[bytes, bytes], since_ms: int, until_ms: int, suffix: str | None = None) -> dict[str, int]:
    """{name: count} of the fields `<name>:<bucket>` in [since_ms, until_ms); with a suffix, of the
    fields `<measure><suffix>:<bucket>` by measure ("": the fields without a position mark)."""
    totals: dict[str, int] = {}
    for field, value in fields.items():
        name, _, bucket = field.decode().rpartition(":")
        measure, mark, rest = name.partition(POSITION_MARK)
        if (suffix is None or f"{mark}{rest}" == suffix) and since_ms <= int(bucket) < until_ms:
            key = name if suffix is None else measure
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def _chunks(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _now_ms() -> int:
    return int(time.time() * 1000)
