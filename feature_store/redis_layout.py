"""Where and how feature values live in Redis: the key layout and the value codec.

Keys (prefix `P` = `settings.redis.key_prefix`; `E` = entity; `V` = batch version; `ID` = entity id
and `F` = feature name, both escaped by `escape_key_part`):

    P:batch:{E}:current         string   the live batch version of entity E (the atomic pointer)
    P:batch:{E}:seq             string   version counter (INCR)
    P:batch:{E}:V:meta          hash     wm (watermark, epoch ms), n (rows written), f:<feature> -> field code
    P:batch:{E}:staging         zset     versions being written, scored by start time (ms)
    P:batch:{E}:retired         zset     replaced versions, scored by when they may be deleted (ms)
    P:b:E:V:ID                  string   one batch row: its encoded values in the version's column
                                         order (`f:<feature>` in meta), joined by U+001E
    P:s:{E:ID}                  hash     live counters `<feature>:<bucket>` and latest values `<feature>`,
                                         `<feature>:ts`; TTL refreshed on write
    P:s:{E:ID}:F                zset     live sequences (member item, score event ms) and per-entity
                                         top-k (member, count); capped; TTL
    P:s:{E:ID}:F:<bucket>       zset     windowed top-k bucket (member, count); capped; TTL
    P:s:seen:<event_id>         string   replay marker (SET NX PX dedup_ttl + max future skew)
    P:s:seen:<event_id>:{T}     string   on a Redis Cluster, the replay marker of an event's updates in
                                         the slot of hash tag T (`cluster_scripts.slot_marker`)
    P:a:{D:K}                   hash     attributed counts of dimension D, key K (`attribution.join_key`):
                                         `<measure>:<hour bucket ms>` -> count; expires 7 d + 1 h after
                                         its newest bucket (`feature_store.attribution_store`)
    P:a:seen:<event_id>         string   attribution replay marker of an impression, or an outcome's
                                         decision (`credit:<impression id>`, `late`, `unattributed`):
                                         the first one stored wins, so an outcome is counted once
    P:a:credit:<event_id>:<type> string  an impression already credited with one outcome of that type
    P:a:positions               zset     positions with impressions (member position, score newest bucket)
    P:a:stats                   hash     `<unattributed|late>:<type>:<bucket ms>` -> count
    P:a:recent                  list     the newest attributed outcomes (JSON), capped
    P:l:{linucb:ID}             hash     LinUCB statistics of item ID: `Ainv` (A⁻¹), `b` (float64 bytes, row-major)
                                         (`feature_store.linucb_store`)
    P:l:{linucb:ID}:seen:<update_id>  string  LinUCB replay marker of an update applied to item ID (in
                                         its slot, so one transaction watches both on a Redis Cluster)

Ids come from clients, so they are escaped: `%`, `:`, `{` and `}` become `%25`, `%3A`, `%7B`, `%7D`
(injective, and an escaped id holds no separator or brace), which makes every key name one
(entity, id, feature) triple; an id without those characters is spelled as is. An entity's live keys
share the hash tag `{E:ID}`, and an entity's batch control keys the tag `{E}`, so on a Redis Cluster
each of those groups sits in one slot (a script may only touch one slot). The read script in
`online_read` spells the same shapes in Lua from escaped ids.

Values: ints and floats as decimal strings (floats with float32 precision, `%.9g`); strings as
UTF-8; sequences joined by U+001F; vectors as base64 of little-endian float32 bytes; no value as
the empty string (the reader returns the default). One string per row is read with one MGET and
takes less memory than a hash per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import base64
import re

import numpy as np

from feature_store.definitions import SEQUENCE_SEPARATOR, DType, Entity, FeatureDef

ROW_SEPARATOR_TEXT = "\x1e"  # ASCII record separator, between a batch row's values
ROW_SEPARATOR = ROW_SEPARATOR_TEXT.encode()
_KEY_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "{": "%7B", "}": "%7D"})
_UNESCAPES = {"%25": "%", "%3A": ":", "%7B": "{", "%7D": "}"}
_ESCAPED = re.compile("|".join(_UNESCAPES))


def escape_key_part(text: str) -> str:
    """`text` as one key segment: `%`, `:`, `{`, `}` percent-encoded, everything else as is."""
    return text.translate(_KEY_ESCAPES)


def unescape_key_part(segment: str) -> str:
    """The inverse of `escape_key_part`."""
    return _ESCAPED.sub(lambda found: _UNESCAPES[found.group()], segment)


@dataclass(frozen=True)
class KeyLayout:
    """Builds every key the store uses; the only place key shapes are spelled."""

    prefix: str

    def pointer(self, entity: Entity) -> str:
        return f"{self.prefix}:batch:{{{entity}}}:current"

    def version_counter(self, entity: Entity) -> str:
        return f"{self.prefix}:batch:{{{entity}}}:seq"

    def meta(self, entity: Entity, version: str) -> str:
        return f"{self.prefix}:batch:{{{entity}}}:{version}:meta"

    def staging(self, entity: Entity) -> str:
        return f"{self.prefix}:batch:{{{entity}}}:staging"

    def retired(self, entity: Entity) -> str:
        return f"{self.prefix}:batch:{{{entity}}}:retired"

    def batch_row(self, entity: Entity, version: str, entity_id: str) -> str:
        return f"{self.prefix}:b:{entity}:{version}:{escape_key_part(entity_id)}"

    def batch_rows_pattern(self, entity: Entity, version: str) -> str:
        return f"{self.prefix}:b:{entity}:{version}:*"

    def live_hash(self, entity: Entity, entity_id: str) -> str:
        return f"{self.prefix}:s:{{{entity}:{escape_key_part(entity_id)}}}"

    def live_zset(self, entity: Entity, entity_id: str, feature: str, bucket: int | None = None) -> str:
        key = f"{self.live_hash(entity, entity_id)}:{escape_key_part(feature)}"
        return key if bucket is None else f"{key}:{bucket}"

    def seen_marker(self, event_id: str) -> str:
        return f"{self.prefix}:s:seen:{escape_key_part(event_id)}"

    def attribution_counts(self, dimension: str, key: str) -> str:
        return f"{self.prefix}:a:{{{dimension}:{escape_key_part(key)}}}"

    def attribution_counts_pattern(self, dimension: str) -> str:
        """SCAN pattern of every count key of `dimension` (dimension names hold no glob characters)."""
        return f"{self.prefix}:a:{{{dimension}:*}}"

    def attribution_marker(self, event_id: str) -> str:
        return f"{self.prefix}:a:seen:{escape_key_part(event_id)}"

    def attribution_credit(self, impression_id: str, outcome_type: str) -> str:
        return f"{self.prefix}:a:credit:{escape_key_part(impression_id)}:{escape_key_part(outcome_type)}"

    def attribution_positions(self) -> str:
        return f"{self.prefix}:a:positions"

    def attribution_policy_arms(self) -> str:
        """The index of the (policy, arm) count keys: a read of them lists it instead of scanning the keyspace."""
        return f"{self.prefix}:a:policy_arms"

    def attribution_stats(self) -> str:
        return f"{self.prefix}:a:stats"

    def attribution_recent(self) -> str:
        return f"{self.prefix}:a:recent"

    def linucb(self, item_id: str) -> str:
        return f"{self.prefix}:l:{{linucb:{escape_key_part(item_id)}}}"

    def linucb_marker(self, item_id: str, update_id: str) -> str:
        return f"{self.linucb(item_id)}:seen:{escape_key_part(update_id)}"

    def linucb_context(self, user_id: str) -> str:
        return f"{self.prefix}:l:ctx:{escape_key_part(user_id)}"


def encode_value(feature: FeatureDef, value: Any) -> str | None:
    """Encode one batch value for a Redis hash field; None means "no value" (the reader uses the default)."""
    if value is None:
        return None
    dtype = feature.dtype
    if dtype is DType.INT:
        return str(int(value))
    if dtype is DType.FLOAT:
        number = float(value)
        if not np.isfinite(number):
            raise ValueError(f"{feature.name}: {number} is not a finite float")
        return "%.9g" % number
    if dtype is DType.STRING:
        return _checked(feature, str(value))
    if dtype is DType.SEQUENCE:
        return encode_sequence(feature, value)
    vector = np.asarray(value, dtype="<f4")
    if vector.shape != (feature.dim,):
        raise ValueError(f"{feature.name}: expected a vector of {feature.dim} floats, got shape {vector.shape}")
    return base64.b64encode(vector.tobytes()).decode()


def encode_row(features: Sequence[FeatureDef], row: Any) -> str:
    """One batch row as a string: the features' encoded values in order, joined by U+001E."""
    return ROW_SEPARATOR_TEXT.join(encode_value(f, row[f.name]) or "" for f in features)


def _checked(feature: FeatureDef, text: str) -> str:
    if ROW_SEPARATOR_TEXT in text or SEQUENCE_SEPARATOR in text:
        raise ValueError(f"{feature.name}: values may not contain U+001E or U+001F")
    return text


def encode_sequence(feature: FeatureDef, values: Sequence[Any]) -> str:
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{feature.name}: expected a sequence of ids, got a single string {values!r:.60}")
    items = [str(v) for v in values][: feature.cap]
    return SEQUENCE_SEPARATOR.join(_checked(feature, item) for item in items)


def decode_value(feature: FeatureDef, raw: bytes) -> Any:
    """Decode what `encode_value` wrote."""
    dtype = feature.dtype
    if dtype is DType.INT:
        return int(raw)
    if dtype is DType.FLOAT:
        return float(raw)
    if dtype is DType.STRING:
        return raw.decode()
    if dtype is DType.SEQUENCE:
        return decode_sequence(raw)
    return np.frombuffer(base64.b64decode(raw), dtype="<f4")


def decode_sequence(raw: bytes) -> list[str]:
    return raw.decode().split(SEQUENCE_SEPARATOR) if raw else []
