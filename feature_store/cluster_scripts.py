"""Running marker-guarded Lua scripts on a Redis Cluster, where one script may touch one hash slot.

The stores guard each record's updates with a replay marker set in the same script (`SET NX`), so
a replay changes nothing. A record's keys may lie in several slots (a user's and an item's counts);
on a cluster its updates are split by slot, each part guarded by its own marker in that slot
(`slot_marker`), and each part is applied exactly once: a replay after a crash between parts
applies just the parts that were missing. `ClusterScript` sends one such call per part, pipelined.
"""

from __future__ import annotations

from typing import Any, Sequence

from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of `key`: the first non-empty `{...}`, else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if start >= 0 and end > start + 1 else key


def slot_marker(marker: str, key: str) -> str:
    """`marker` moved into `key`'s hash slot (markers hold escaped ids, so no brace of their own)."""
    return f"{marker}:{{{hash_tag(key)}}}"


def split_by_slot(marker: str, ops: Sequence[Any], width: int, key_at: int = 1) -> list[tuple[str, list[Any]]]:
    """One record's ops (`width` values each, the key at `key_at`) as (marker in that slot, ops) per slot."""
    parts: dict[int, tuple[str, list[Any]]] = {}
    for start in range(0, len(ops), width):
        key = str(ops[start + key_at])
        slot = key_slot(hash_tag(key).encode())
        if slot not in parts:
            parts[slot] = (slot_marker(marker, key), [])
        parts[slot][1].extend(ops[start:start + width])
    return list(parts.values())


class ClusterScript:
    """A script run by EVALSHA in a cluster pipeline (redis-py refuses `Script` objects there), each
    call routed by its first key; loaded on every master, and again after a NOSCRIPT (a restarted
    or promoted master)."""

    def __init__(self, client: RedisCluster, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = client.script_load(source)

    def run_all(self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """The replies of `(keys, args)` calls, in order, in one pipeline; the first error raised.
        Only the calls a master answered NOSCRIPT run again, the script loaded: the others ran, and
        a second run would find their markers set and answer "replayed"."""
        replies = self._run(calls)
        missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            self._sha = self._client.script_load(self._source)
            for n, reply in zip(missing, self._run([calls[n] for n in missing])):
                replies[n] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _run(self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        """Each call's reply, or the error it met (raised by `run_all`)."""
        pipe = self._client.pipeline()
        for keys, args in calls:
            pipe.execute_command("EVALSHA", self._sha, len(keys), *keys, *args)
        return pipe.execute(raise_on_error=False) if calls else []
