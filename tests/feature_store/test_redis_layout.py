"""The key layout: every id maps to its own keys, whatever characters it holds."""

from __future__ import annotations

from hypothesis import example, given, settings, strategies as st

from feature_store.definitions import Entity
from feature_store.redis_layout import KeyLayout

LAYOUT = KeyLayout("recsys")
#: Separators, hash-tag braces, the escape character, a backslash, and some unicode.
ADVERSARIAL = st.text(alphabet=st.sampled_from([":", "{", "}", "%", "\\", "*", "|", "3", "A", "a", "_", "é", "🙂", "\x00"]),
                      max_size=12)
IDS = ADVERSARIAL | st.text(max_size=12)
FEATURES = ADVERSARIAL | st.sampled_from(["recent_items", "trending", "popularity_all", "clicks_1h"])
ENTITIES = st.sampled_from(list(Entity))

# (kind, entity, id, feature or batch version): the keys the layout builds for entity ids.
Triple = tuple[str, Entity, str, str]


def key_of(triple: Triple) -> str:
    kind, entity, entity_id, feature = triple
    if kind == "hash":
        return LAYOUT.live_hash(entity, entity_id)
    if kind == "zset":
        return LAYOUT.live_zset(entity, entity_id, feature)
    if kind == "row":
        return LAYOUT.batch_row(entity, feature, entity_id)
    return LAYOUT.seen_marker(entity_id)


TRIPLES = st.one_of(
    st.tuples(st.just("hash"), ENTITIES, IDS, st.just("")),
    st.tuples(st.just("zset"), ENTITIES, IDS, FEATURES),
    st.tuples(st.just("row"), ENTITIES, IDS, st.integers(min_value=1, max_value=99).map(str)),
    st.tuples(st.just("seen"), st.just(Entity.USER), IDS, st.just("")),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(TRIPLES, min_size=2, max_size=8, unique=True))
@example([("hash", Entity.USER, "victimX:recent_items", ""), ("zset", Entity.USER, "victimX", "recent_items")])
@example([("zset", Entity.USER, "a:b", "c"), ("zset", Entity.USER, "a", "b:c")])
@example([("row", Entity.ITEM, "1:x", "7"), ("row", Entity.ITEM, "x", "7:1")])
@example([("hash", Entity.USER, "seen:e1", ""), ("seen", Entity.USER, "e1", "")])
@example([("hash", Entity.USER, "a%3Ab", ""), ("hash", Entity.USER, "a:b", "")])
def test_distinct_entity_id_feature_triples_never_share_a_key(triples: list[Triple]) -> None:
    keys = [key_of(t) for t in triples]
    assert len(set(keys)) == len(triples), dict(zip(keys, triples))


@given(ENTITIES, IDS, FEATURES, st.integers(min_value=0, max_value=10**7))
def test_windowed_buckets_are_distinct_keys_of_their_feature(entity: Entity, entity_id: str, feature: str,
                                                             bucket: int) -> None:
    bucketed = LAYOUT.live_zset(entity, entity_id, feature, bucket)
    assert bucketed != LAYOUT.live_zset(entity, entity_id, f"{feature}:{bucket}")
    assert bucketed != LAYOUT.live_zset(entity, entity_id, feature, bucket + 1)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes: the text between the first '{' and the next '}'."""
    start = key.index("{")
    return key[start + 1:key.index("}", start + 1)]


@given(ENTITIES, IDS, IDS, FEATURES)
def test_an_entitys_live_keys_share_one_hash_tag_of_their_own(entity: Entity, entity_id: str, other: str,
                                                               feature: str) -> None:
    tag = hash_tag(LAYOUT.live_hash(entity, entity_id))
    assert hash_tag(LAYOUT.live_zset(entity, entity_id, feature)) == tag
    assert hash_tag(LAYOUT.live_zset(entity, entity_id, feature, 7)) == tag
    assert (hash_tag(LAYOUT.live_hash(entity, other)) == tag) == (other == entity_id)
