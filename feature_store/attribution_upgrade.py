"""Upgrades of the attribution counts: (item, position) counts into the item hash, and the index of
the (policy, arm) count keys.

Before, each (item, position) had its own hash `P:a:{item_position:<item>|<position>}` with fields
`<measure>:<bucket>`; now they are fields `<measure>@<position>:<bucket>` of the item's hash
(`feature_store.attribution_store`), which the new stream job writes. `fold_item_positions` moves
every old key's fields into its item hash and deletes it. Run it once, after the old stream job has
stopped (a write of the old job after the fold would be lost); the new job may run meanwhile
(increments commute). Each key is folded by one script in the item's hash slot under a marker (a
rerun after a crash adds nothing twice), so it works on a Redis Cluster too. Not running it loses
nothing for long: the old keys expire within the retention (7 d + 1 h), and the bandits' examined
counts undercount the older impressions until then.

The index (`KeyLayout.attribution_policy_arms`, which the stream job adds each (policy, arm) to
with its newest bucket) is what the experiment reports list those keys from, once it exists:
`index_policy_arms` adds the keys written before it (idempotent; run it with the fold). Not running
it, a report misses those older counts until they expire.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from feature_store.attribution import Dimension, split_item_position
from feature_store.attribution_store import POSITION_MARK, RETENTION_MS
from feature_store.cluster_scripts import slot_marker
from feature_store.redis_client import ConnectionSpec, RedisClient, translate_errors
from feature_store.redis_layout import KeyLayout, unescape_key_part

# KEYS: item hash, marker (same slot). ARGV: marker ttl ms, the old key's ttl ms, then field, value pairs.
FOLD_SCRIPT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 0 end
for i = 3, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
local ttl = tonumber(ARGV[2])
if ttl > 0 and redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""


def fold_item_positions(spec: ConnectionSpec) -> int:
    """Move every old (item, position) count key into its item's hash; the number of keys folded."""
    layout, folded = KeyLayout(spec.key_prefix), 0
    with _count_keys(spec, Dimension.ITEM_POSITION, "folding (item, position) counts into the item hashes") as (client, keys):
        for old, escaped in keys:  # the count key, escaped: no braces, so the marker's slot is the item's
            item, position = split_item_position(unescape_key_part(escaped))
            target = layout.attribution_counts(Dimension.ITEM, item)
            fields, ttl = client.hgetall(old), client.pttl(old)
            args: list[str | int] = [RETENTION_MS, ttl]
            for field, value in fields.items():
                measure, _, bucket = field.decode().rpartition(":")
                args += [f"{measure}{POSITION_MARK}{position}:{bucket}", int(value)]
            marker = slot_marker(f"{spec.key_prefix}:a:upgrade:{escaped}", target)
            folded += int(client.eval(FOLD_SCRIPT, 2, target, marker, *args))
            client.delete(old)
    return folded


def index_policy_arms(spec: ConnectionSpec) -> int:
    """Add every (policy, arm) count key to the index, scored by its newest bucket; the number indexed."""
    index, indexed = KeyLayout(spec.key_prefix).attribution_policy_arms(), 0
    with _count_keys(spec, Dimension.POLICY_ARM, "indexing the (policy, arm) count keys") as (client, keys):
        for key, escaped in keys:
            buckets = [int(field.rpartition(b":")[2]) for field in client.hkeys(key)]
            if buckets:
                client.zadd(index, {unescape_key_part(escaped): max(buckets)}, gt=True)
                indexed += 1
    return indexed


@contextmanager
def _count_keys(spec: ConnectionSpec, dimension: str, what: str) -> Iterator[tuple[RedisClient, list[tuple[str, str]]]]:
    """A client and every count key of `dimension` with its escaped id (what the braces hold)."""
    layout = KeyLayout(spec.key_prefix)
    head = len(layout.attribution_counts(dimension, ""))
    client = spec.client()
    try:
        with translate_errors(spec, what):
            keys = [raw.decode() for raw in client.scan_iter(layout.attribution_counts_pattern(dimension), count=1000)]
            yield client, [(key, key[head - 1:-1]) for key in keys]
    finally:
        client.close()
