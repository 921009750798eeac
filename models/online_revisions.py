"""Online revisions of a ranker's final linear layer, in Redis (DRN-style minor updates, issue 17).

A revision is `{id, role, parent, base, w, explore, served, created, reason}`: `w` is the current
weights of the ranker's output layer over its penultimate features, `explore` the explore weights `w̃`
DBGD is testing (None: no explore network), `served` whether `w` has beaten the base in the online
comparison and serves the traffic outside the learner's arms (the serving gate,
`services.learner.gate`; absent in revisions stored before it: false), `base` the registry version
(blessed, promoted) whose layer it updates, `parent` the revision it was derived from (None for the
first revision of a base). The registry (`models.registry`) keeps the artifacts; this store keeps
what changes between retrains.

Keys (prefix `P` = `settings.redis.key_prefix`; one hash tag per role, so a Redis Cluster keeps
them in one slot and the publish script may touch them all):

    P:learn:{R}:rev            hash    revision id -> JSON
    P:learn:{R}:history        list    revision ids, newest first, capped at `history` (older ones
                                       are deleted from the hash)
    P:learn:{R}:current:<base> string  the current revision id of base version <base> (the pointer
                                       every API worker polls)
    P:learn:{R}:seq            string  revision counter
    P:learn:{R}:control        hash    `enabled` (1/0), `reason`, `at`: the kill switch
    P:learn:{R}:handled        set     the guardrail stops the learner rolled back on (one entry per
                                       stop, never trimmed: the bounded history forgets, this must not)

A publish is one Lua script (revision, history, pointer and trim at once), so a reader never sees a
pointer to a revision that is not stored.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, NamedTuple

import numpy as np
import redis

_PUBLISH = """
local id = 'r' .. redis.call('INCR', KEYS[4]) .. '-' .. ARGV[3]
local revision = cjson.decode(ARGV[1])
revision['id'] = id
redis.call('HSET', KEYS[1], id, cjson.encode(revision))
redis.call('LPUSH', KEYS[2], id)
redis.call('SET', KEYS[3], id)
local keep = tonumber(ARGV[2])
local old = redis.call('LRANGE', KEYS[2], keep, -1)
for _, gone in ipairs(old) do redis.call('HDEL', KEYS[1], gone) end
redis.call('LTRIM', KEYS[2], 0, keep - 1)
return id
"""


@dataclass(frozen=True)
class Revision:
    """One online revision of `role`'s output layer over base version `base`."""

    id: str
    role: str
    base: str
    w: tuple[float, ...]
    explore: tuple[float, ...] | None
    parent: str | None
    created: str
    reason: str
    served: bool = False
    algorithm: str = "dbgd"  # the learner that published it (older revisions: DBGD's)

    @property
    def weights(self) -> np.ndarray:
        return np.asarray(self.w, dtype=np.float64)

    @property
    def sequence(self) -> int:
        """n of the id `r<n>-<random>`: the role's revisions are numbered in publish order."""
        return int(self.id[1:].split("-", 1)[0])

    @property
    def explore_weights(self) -> np.ndarray | None:
        return None if self.explore is None else np.asarray(self.explore, dtype=np.float64)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Revision":
        data: dict[str, Any] = json.loads(text)
        explore = data.get("explore")
        return cls(
            id=str(data["id"]), role=str(data["role"]), base=str(data["base"]), w=tuple(map(float, data["w"])),
            explore=None if not explore else tuple(map(float, explore)), parent=data.get("parent") or None,
            created=str(data["created"]), reason=str(data["reason"]), served=bool(data.get("served", False)),
            algorithm=str(data.get("algorithm") or "dbgd"),
        )


@dataclass(frozen=True)
class Control:
    """The kill switch as stored: updates and online serving on (`enabled`) or off, and why."""

    enabled: bool
    reason: str = ""
    at: str = ""


class RevisionStore:
    """Revisions, their history, the current pointer per base and the kill switch of one role."""

    def __init__(self, client: redis.Redis, key_prefix: str, role: str = "ranker", history: int = 1000) -> None:
        if history < 1:
            raise ValueError("history must be >= 1")
        self.client = client
        self.role = role
        self.history_size = history
        tag = f"{key_prefix}:learn:{{{role}}}"
        self._revisions, self._history, self._seq, self._control, self._handled = (
            f"{tag}:rev", f"{tag}:history", f"{tag}:seq", f"{tag}:control", f"{tag}:handled")
        self._pointer_prefix = f"{tag}:current:"
        self._publish = client.register_script(_PUBLISH)

    def publish(self, base: str, w: np.ndarray, explore: np.ndarray | None, parent: str | None, reason: str,
                served: bool = False, algorithm: str = "dbgd") -> Revision:
        """Store a new revision of `base` and make it the base's current one; returns it with its id,
        `r<counter>-<random>`: a Redis restored from an older snapshot counts again from where it
        was, and a repeated `r<counter>` would take the credit of the lists served under the lost one."""
        w = np.asarray(w, dtype=np.float64)
        if explore is not None and np.shape(explore) != w.shape:
            raise ValueError(f"explore weights have shape {np.shape(explore)}, w has {w.shape}")
        if not np.all(np.isfinite(w)) or (explore is not None and not np.all(np.isfinite(explore))):
            raise ValueError("revision weights must be finite")
        body = {"role": self.role, "base": base, "w": w.tolist(), "parent": parent or "",
                "explore": [] if explore is None else np.asarray(explore, dtype=np.float64).tolist(),
                "served": served, "created": datetime.now(timezone.utc).isoformat(), "reason": reason,
                "algorithm": algorithm}
        keys = [self._revisions, self._history, self._pointer_prefix + base, self._seq]
        revision_id = self._publish(keys=keys, args=[json.dumps(body), self.history_size, secrets.token_hex(3)]).decode()
        return Revision.from_json(json.dumps({**body, "id": revision_id}))

    def current_id(self, base: str) -> str | None:
        """The id of `base`'s current revision (None before the first publish)."""
        raw = self.client.get(self._pointer_prefix + base)
        return None if raw is None else raw.decode()

    def current(self, base: str) -> Revision | None:
        """`base`'s current revision, or None."""
        revision_id = self.current_id(base)
        return None if revision_id is None else self.get(revision_id)

    def get(self, revision_id: str) -> Revision | None:
        """A stored revision (None once it fell out of the bounded history)."""
        raw = self.client.hget(self._revisions, revision_id)
        return None if raw is None else Revision.from_json(raw)

    def history(self, limit: int | None = None) -> list[Revision]:
        """Stored revisions, newest first (every base's)."""
        ids = [i.decode() for i in self.client.lrange(self._history, 0, -1 if limit is None else limit - 1)]
        if not ids:
            return []
        return [Revision.from_json(raw) for raw in self.client.hmget(self._revisions, ids) if raw is not None]

    def handled(self, stop: str) -> bool:
        """Whether the guardrail stop `stop` (its rollback reason) was already rolled back on."""
        return bool(self.client.sismember(self._handled, stop))

    def mark_handled(self, stop: str) -> None:
        """Record that the learner rolled back on the guardrail stop `stop`."""
        self.client.sadd(self._handled, stop)

    def control(self) -> Control:
        """The kill switch: enabled unless it was turned off."""
        return _control(self.client.hgetall(self._control))

    def set_control(self, enabled: bool, reason: str) -> Control:
        """Turn online updates (and serving of revisions) on or off for every worker and learner."""
        control = Control(enabled, reason, datetime.now(timezone.utc).isoformat())
        self.client.hset(self._control, mapping={"enabled": "1" if enabled else "0", "reason": reason, "at": control.at})
        return control

    def poll(self, base: str) -> Poll:
        """The current revision id of `base`, the newest revision's id (any base's) and the kill
        switch, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._pointer_prefix + base)
        pipe.lindex(self._history, 0)
        pipe.hgetall(self._control)
        pointer, newest, control = pipe.execute()
        return Poll(_decoded(pointer), _decoded(newest), _control(control))


class Poll(NamedTuple):
    """What an API worker reads every poll: `current` the base's revision id, `newest` the newest
    revision id of the role (the publish script sets a base's pointer with the push, so the two are
    equal exactly when the newest revision belongs to the base), and the kill switch."""

    current: str | None
    newest: str | None
    control: Control


def _decoded(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _control(stored: dict[bytes, bytes]) -> Control:
    raw = {k.decode(): v.decode() for k, v in stored.items()}
    return Control(raw.get("enabled", "1") == "1", raw.get("reason", ""), raw.get("at", ""))


def revision_dict(revision: Revision) -> dict[str, Any]:
    """A revision as plain JSON-able data (API responses, logs)."""
    return asdict(revision)
