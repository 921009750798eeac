"""Each request's random generator: explored slates, interleavings and the learner's lists.

In production a request's draws come from its user, its request id and a salt every worker shares
(kept in Redis), so a retried request (the same user and `X-Request-ID`, on any worker) draws the
same slate: its impressions, whose ids are the request id, the user's digest and the position,
then describe the list the client shows, and its clicks credit the items the user saw. Another
request id, or another user sharing one, draws independently, and without the salt the draws
cannot be predicted from the ids. Tests and simulations set
`explore.seed` instead: request k of a worker draws from `[seed, k]`, reproducibly.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import secrets
from collections.abc import Callable

import numpy as np
import redis

from feature_store.redis_client import RedisClient

log = logging.getLogger(__name__)

#: (user id, request id) -> that request's generator.
RequestGenerators = Callable[[str, str], np.random.Generator]


def fresh_generator(user_id: str = "", request_id: str = "") -> np.random.Generator:
    """Fresh entropy, whatever the request (the default of the stages that take generators)."""
    return np.random.default_rng()


def request_generators(seed: int | None, salt: int | None = None) -> RequestGenerators:
    """`[seed, request number]` with a seed; else `[salt, the digest of user and request id]`; else
    fresh entropy."""
    if seed is not None:
        numbers = itertools.count()
        return lambda user_id, request_id: np.random.default_rng([seed, next(numbers)])
    if salt is None:
        return fresh_generator
    return lambda user_id, request_id: np.random.default_rng([salt, *_digest_words(f"{user_id}\x1f{request_id}")])


def shared_salt(client: RedisClient, key_prefix: str) -> int | None:
    """The salt every worker of the service draws with: set once in Redis (`<prefix>:x:request_salt`,
    no TTL), else read. None when Redis does not answer: that worker draws fresh entropy, so only
    a retry it answers may differ."""
    key = f"{key_prefix}:x:request_salt"
    try:
        client.set(key, str(secrets.randbits(63)), nx=True)
        value = client.get(key)
        return int(value) if value is not None else None
    except (redis.RedisError, ValueError) as exc:
        log.warning("request salt unreadable (%s): explore draws use fresh entropy, a retried request may differ", exc)
        return None


def _digest_words(text: str) -> list[int]:
    digest = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(digest[i:i + 8], "little") for i in range(0, len(digest), 8)]
