"""The online read on a Redis Cluster, where a script may only touch keys of one hash slot.

On one server `online_read.READ_SCRIPT` reads the batch pointer, the version's meta, the rows and
every id's live keys in one atomic script. On a cluster those keys live in many slots, so the same
reply is assembled in three pipelined steps:

1. the pointer, then the version's meta (watermark and field codes): a version's meta is written
   before the pointer names it and kept `batch_grace_s` after it is replaced, so a pointer read
   followed by its meta read is consistent;
2. the version's rows, one MGET per slot (`mget_nonatomic`): rows of a version never change;
3. the live keys, which share the hash tag `{E:ID}` per id: `LIVE_READ_SCRIPT` once per slot, all
   calls in one cluster pipeline (one round trip per master).

What is lost against one server: the rows and live keys of different ids are not read at one
instant (each id's own live keys still are).
"""

from __future__ import annotations

from typing import Any, Sequence

from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from feature_store.online_read import LIVE_READ_SCRIPT, ReadPlan
from feature_store.redis_layout import KeyLayout, escape_key_part


class ClusterRead:
    """Reads `ReadPlan`s from a Redis Cluster into the reply shape `online_read.assemble` takes."""

    def __init__(self, client: RedisCluster, layout: KeyLayout) -> None:
        self._client = client
        self._layout = layout
        self._sha = client.script_load(LIVE_READ_SCRIPT)

    def read(self, plan: ReadPlan, ids: Sequence[str], now_ms: int) -> list[Any]:
        """`[version, wm, present, blobs, rows]` as `READ_SCRIPT` returns it."""
        layout, entity = self._layout, plan.entity
        version, wm, present, blobs = None, None, [], []
        raw_version = self._client.get(layout.pointer(entity))
        if raw_version is not None:
            version = raw_version.decode()
            meta = self._client.hmget(layout.meta(entity, version), ["wm", *(f"f:{f.name}" for f in plan.batch)])
            wm = int(meta[0]) if meta[0] is not None else None
            for k, code in enumerate(meta[1:], start=1):
                if code is not None:
                    present += [k, int(code)]
        if present and ids:
            blobs = self._client.mget_nonatomic([layout.batch_row(entity, version, i) for i in ids])  # type: ignore[arg-type]
        rows = self._live_rows(plan, ids, now_ms, wm) if plan.live else []
        return [version, wm, present, blobs, rows]

    def _live_rows(self, plan: ReadPlan, ids: Sequence[str], now_ms: int, wm: int | None) -> list[Any]:
        by_slot: dict[int, list[int]] = {}
        for k, entity_id in enumerate(ids):
            by_slot.setdefault(key_slot(self._layout.live_hash(plan.entity, entity_id).encode()), []).append(k)
        try:
            replies = self._run(plan, ids, by_slot, now_ms, wm)
        except NoScriptError:  # a master restarted (or failed over) since the script was loaded
            self._sha = self._client.script_load(LIVE_READ_SCRIPT)
            replies = self._run(plan, ids, by_slot, now_ms, wm)
        rows: list[Any] = [None] * len(ids)
        for members, reply in zip(by_slot.values(), replies):
            for k, row in zip(members, reply):
                rows[k] = row
        return rows

    def _run(self, plan: ReadPlan, ids: Sequence[str], by_slot: dict[int, list[int]], now_ms: int,
             wm: int | None) -> list[Any]:
        pipe = self._client.pipeline()
        for members in by_slot.values():
            routing_key = self._layout.live_hash(plan.entity, ids[members[0]])
            # `pipe.evalsha` is refused in a cluster pipeline; the raw command is routed by its key.
            pipe.execute_command("EVALSHA", self._sha, 1, routing_key, self._layout.prefix, plan.entity.value,
                                 now_ms, len(members), *(escape_key_part(ids[k]) for k in members), 0,
                                 len(plan.live), *plan.live_args, "" if wm is None else wm)
        return pipe.execute()
