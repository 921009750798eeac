"""Feature definitions: one declaration drives batch columns, live writes and reads."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from feature_store.definitions import (
    FEATURES, POSITIVE, DType, Entity, FeatureDef, FeatureRegistry, Kind, Source, UnknownFeatureError,
    entity_id, smoothed_ctr, user_category_id,
)


def test_batch_view_columns_start_with_keys_and_cover_every_batch_feature() -> None:
    columns = FEATURES.batch_view_columns(Entity.USER_CATEGORY)
    assert [(c.name, c.dtype) for c in columns] == [
        ("user_id", DType.STRING), ("category", DType.STRING), ("affinity", DType.FLOAT)]
    item = {c.name for c in FEATURES.batch_view_columns(Entity.ITEM)}
    assert {"popularity_all", "clicks_all", "impressions_all", "categories", "embedding"} <= item
    assert "clicks_1h" not in item  # stream-only
    assert "ctr" not in item  # a ratio of two lambda counts, computed at read time
    assert "recent_items" in {c.name for c in FEATURES.batch_view_columns(Entity.USER)}  # lambda-merged


def test_spark_ddl_matches_dtypes() -> None:
    ddl = FEATURES.batch_view_ddl(Entity.ITEM)
    assert ddl.startswith("item_id STRING, ")
    assert "embedding ARRAY<FLOAT>" in ddl and "categories ARRAY<STRING>" in ddl and "clicks_all BIGINT" in ddl


def test_unknown_feature_lists_the_known_ones() -> None:
    with pytest.raises(UnknownFeatureError) as error:
        FEATURES.get(Entity.ITEM, "popularity_2d")
    assert "popularity_2d" in str(error.value) and "popularity_7d" in str(error.value)


def test_stream_features_must_have_a_ttl() -> None:
    with pytest.raises(ValueError, match="ttl"):
        FeatureDef(Entity.USER, "clicks", DType.INT, Source.STREAM, Kind.WINDOW_COUNT, events=POSITIVE,
                   window=timedelta(hours=1), bucket=timedelta(minutes=5))


def test_duplicate_declarations_are_rejected() -> None:
    feature = FeatureDef(Entity.ITEM, "x", DType.INT, Source.BATCH)
    with pytest.raises(ValueError, match="twice"):
        FeatureRegistry((feature, feature))


def test_positive_rule_is_shared_by_python_and_spark_sql() -> None:
    assert POSITIVE.matches("rating", 3.5) and not POSITIVE.matches("rating", 3.0)
    assert POSITIVE.matches("click", None) and not POSITIVE.matches("impression", None)
    assert "value >= 3.5" in POSITIVE.sql_condition()


def test_entity_ids_and_smoothing() -> None:
    assert entity_id(Entity.USER_CATEGORY, {"user_id": "u1", "category": "Drama"}) == "u1|Drama"
    with pytest.raises(ValueError, match="category"):
        entity_id(Entity.USER_CATEGORY, {"user_id": "u1"})
    assert smoothed_ctr(0, 0) == pytest.approx(1 / 21)


PARTS = st.tuples(st.text(alphabet="a|%7C"), st.text(alphabet="a|%7C"))


@given(PARTS, PARTS)
def test_user_category_ids_are_distinct_for_distinct_pairs(a: tuple[str, str], b: tuple[str, str]) -> None:
    """("u|x", "c") and ("u", "x|c") once shared the id "u|x|c", and so one user×category row."""
    assert (user_category_id(*a) == user_category_id(*b)) == (a == b)
    assert user_category_id("u|x", "c") != user_category_id("u", "x|c")
