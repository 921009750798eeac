"""Features at serving equal features at training (issue #7 item 4).

One event log; the last event (u1 clicks i5) is the sample under test. The Spark ranking-samples
job builds its training row (point-in-time join: everything strictly before its ts). For the
online side, the world a request at that moment sees is the lambda architecture's: the batch layer
run on the log without that event publishes views up to its watermark (the last whole hour), and
the speed layer's writer applies the same events live (as the Flink job does; only those after the
watermark count at read time). The online ranker adapter (`RankerInputs.request`) assembles the
model input from the merged read. Both must hold the same history, categories and dense values.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import pytest
import redis
from fastapi.testclient import TestClient

from feature_store.catalog import Catalog
from feature_store.definitions import UNKNOWN_CATEGORY
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_server import EmbeddedRedis
from feature_store.schemas import Event, EventType, Item
from feature_store.settings import Settings
from models.ranking.features import FeatureSpec
from pipelines.spark.jobs.ranking_samples import DENSE_FEATURES
from pipelines.spark.runner import run_jobs
from services.api.app import create_app
from services.recommend.model_adapters import RankerInputs
from services.recommend.online_store import ServingStore
from services.recommend.types import UserContext
from tests.pipelines.spark.conftest import write_events

ITEMS = {"i1": ["Action"], "i2": ["Comedy"], "i3": ["Action", "Comedy"], "i4": ["Comedy"], "i5": ["Action"]}
# Recent event times: the live writer drops events older than its replay window. The events span
# two hours, so the batch watermark splits them between the batch and the speed layer.
# Known skew (docs/feature_store.md, "Ranker inputs at serving"): the user×category affinity is
# served as of the batch watermark, computed as of the row's time in training.
AS_OF_WATERMARK = {"user_category_affinity"}
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


def _events() -> list[Event]:
    return _log([  # (user, item, type, value, minutes after T0)
        ("u1", "i1", EventType.RATING, 5.0, 0), ("u2", "i5", EventType.IMPRESSION, None, 1),
        ("u1", "i2", EventType.CLICK, None, 2), ("u2", "i5", EventType.CLICK, None, 3),
        ("u1", "i3", EventType.IMPRESSION, None, 4), ("u1", "i4", EventType.RATING, 2.0, 65),
        ("u2", "i1", EventType.RATING, 4.0, 66), ("u1", "i3", EventType.CLICK, None, 67),
        ("u1", "i5", EventType.IMPRESSION, None, 68), ("u3", "i5", EventType.RATING, 5.0, 69),
        ("u1", "i1", EventType.CLICK, None, 70),  # i1 again: a history holds it once, at its newest
        # The sample under test, the log's last event: 32 minutes after u1's impression of i5, so
        # attributed to no impression, and its row keeps the click's own time.
        ("u1", "i5", EventType.CLICK, None, 100),
    ])  # fmt: skip


def _log(rows: Sequence[tuple[str, str, EventType, float | None, float]]) -> list[Event]:
    """Events e0, e1, .. from (user, item, type, value, minutes after T0) rows."""
    return [
        Event(event_id=f"e{n}", user_id=u, item_id=i, type=t, value=v, ts=T0 + timedelta(minutes=m))
        for n, (u, i, t, v, m) in enumerate(rows)
    ]


def _settings(state_dir: Path, url: str, items: Mapping[str, list[str]] = ITEMS, **batch: object) -> Settings:
    settings = Settings(state_dir=state_dir, spark={"master": "local[2]", "shuffle_partitions": 4}, redis={"url": url},
                        batch=batch)
    Catalog(settings.catalog_dir).upsert_items(Item(item_id=i, title=i, categories=c) for i, c in items.items())
    return settings


def _training_rows(spark: object, settings: Settings, events: list[Event]) -> list[dict[str, Any]]:
    """The rows the Spark ranking-samples job writes for `events`."""
    write_events(settings, events)
    list(run_jobs(spark, settings, ["compact", "ranking_samples"]))  # type: ignore[arg-type]
    return ds.dataset(str(settings.state_dir / "batch" / "samples"), format="parquet").to_table().to_pylist()


def _sample(rows: list[dict[str, Any]], user: str, item: str) -> dict[str, Any]:
    return next(r for r in rows if (r["user_id"], r["item_id"], r["label"]) == (user, item, 1))


@contextmanager
def _serving_store(spark: object, settings: Settings, client: redis.Redis, events: list[Event],
                   items: Mapping[str, list[str]]) -> Iterator[ServingStore]:
    """The lambda world a request after `events` sees: the batch layer run on them publishes its
    views, the speed layer's writer applies them live, the catalog is in the serving store."""
    write_events(settings, events)
    list(run_jobs(spark, settings, ["compact", "sequences", "item_graph", "batch_features"]))  # type: ignore[arg-type]
    features = RedisOnlineStore.from_settings(settings, settings.redis.url)
    live = features.live_writer()
    assert live.write(events, item_categories=items).applied == len(events)
    live.close()
    store = ServingStore(client, features, settings.redis.key_prefix)
    for item_id, categories in items.items():
        store.upsert_item(Item(item_id=item_id, title=item_id, categories=categories))
    try:
        yield store
    finally:
        features.close()


def _request(store: ServingStore, user: str, items: list[str], history_length: int = 50,
             max_seq_len: int = 50) -> dict[str, Any]:
    history, seen = store.user_behaviour(user, history_length)
    spec = FeatureSpec(dense_features=tuple(DENSE_FEATURES), max_seq_len=max_seq_len)
    return RankerInputs(spec, store).request(UserContext(user, history, seen), items)


def _assert_same_input(request: dict[str, Any], sample: dict[str, Any]) -> None:
    """The request (one candidate: the sample's item) holds what the training row holds."""
    assert request["hist_item_ids"] == sample["hist_item_ids"]
    assert request["hist_categories"] == sample["hist_categories"]
    assert request["item_category"] == [sample["item_category"]]
    for name in sorted(set(DENSE_FEATURES) - AS_OF_WATERMARK):
        np.testing.assert_allclose(
            np.asarray(request[name], np.float64), [sample[name]], rtol=1e-6, err_msg=f"dense feature {name}"
        )


@pytest.mark.timeout(300)
def test_serving_features_equal_training_features(
    spark: object, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = _events()
    sample = _sample(_training_rows(spark, _settings(tmp_path / "training", redis_server.url), events), "u1", "i5")

    serving = _settings(tmp_path / "serving", redis_server.url)
    # The world as a request at the sample's ts sees it.
    with _serving_store(spark, serving, redis_client, events[:-1], ITEMS) as store:
        request = _request(store, "u1", ["i5"])

    assert sample["hist_item_ids"] == ["i2", "i3", "i1"]  # positives before ts, oldest first, each item once
    _assert_same_input(request, sample)


@pytest.mark.timeout(300)
def test_an_item_without_a_category_is_unknown_at_serving_as_in_training(
    spark: object, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """Not the lookups' padding token "", which would drop the learned "unknown" embedding."""
    items = {"i1": ["Action"], "i0": []}  # i0: no categories; x8, x9: not in the catalog
    events = _log([
        ("u1", "i1", EventType.RATING, 5.0, 0), ("u1", "x9", EventType.CLICK, None, 2),
        ("u2", "i0", EventType.CLICK, None, 3),
        ("u1", "x8", EventType.CLICK, None, 66),  # after the watermark: a live history item
        ("u1", "i0", EventType.CLICK, None, 70),  # the sample under test
    ])  # fmt: skip
    training = _settings(tmp_path / "training", redis_server.url, items)
    sample = _sample(_training_rows(spark, training, events), "u1", "i0")

    serving = _settings(tmp_path / "serving", redis_server.url, items)
    with _serving_store(spark, serving, redis_client, [e for e in events if e.ts < sample["ts"]], items) as store:
        request = _request(store, "u1", ["i0"])

    assert (sample["hist_item_ids"], sample["hist_categories"]) == (
        ["i1", "x9", "x8"], ["Action", UNKNOWN_CATEGORY, UNKNOWN_CATEGORY])
    assert sample["item_category"] == UNKNOWN_CATEGORY
    _assert_same_input(request, sample)


@pytest.mark.timeout(300)
def test_a_request_reads_as_long_a_history_as_a_training_row_holds(
    spark: object, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """batch.max_seq_len above the live sequence's cap (50): the API read 50 history items."""
    events = _log([("u1", f"j{k:02d}", EventType.CLICK, None, k) for k in range(80)]
                  + [("u1", "q", EventType.CLICK, None, 100)])
    items = {e.item_id: ["C"] for e in events}
    training = _settings(tmp_path / "training", redis_server.url, items, max_seq_len=100, negative_sampling_ratio=0)
    sample = _sample(_training_rows(spark, training, events), "u1", "q")

    serving = _settings(tmp_path / "serving", redis_server.url, items, max_seq_len=100)
    with _serving_store(spark, serving, redis_client, events[:-1], items), TestClient(create_app(serving)) as api:
        service = api.app.state.service  # type: ignore[attr-defined]
        request = _request(service.store, "u1", ["q"], service.pipeline.history_length, max_seq_len=100)

    assert len(sample["hist_item_ids"]) == 80
    _assert_same_input(request, sample)


LIST_ITEMS = {"i1": ["Action"], "i2": ["Comedy"], "i3": ["Action", "Comedy"], "i5": ["Action"]}  # x9: not in the catalog
LIST = ["i2", "i3", "i5", "x9"]
USER_FEATURES = ("ts", "hist_item_ids", "hist_categories", "user_event_count", "user_positive_count")


def _candidate(request: dict[str, Any], k: int) -> dict[str, Any]:
    """A request's input for its `k`th candidate alone."""
    per_candidate = ["item_id", "item_category", *DENSE_FEATURES]
    return {**request, **{name: request[name][k : k + 1] for name in per_candidate}}


@pytest.mark.timeout(300)
def test_a_clicked_row_has_the_features_its_list_was_ranked_with(
    spark: object, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """The click's row is timed at its impression, as the list's unclicked rows are: timed at the
    click, it counted its own list's impressions (user_event_count + 4, a lower item_ctr), which
    the ranker did not have when it scored the list. u1 has no positive between the watermark and
    the list, so the affinity as of the watermark is the list's too."""
    events = _log([
        ("u1", "i1", EventType.RATING, 5.0, 0), ("u1", "x9", EventType.CLICK, None, 2),
        ("u2", "i1", EventType.IMPRESSION, None, 61),  # the serving watermark: T0 + 1 h
        *(("u1", item, EventType.IMPRESSION, None, 65) for item in LIST),  # one list: one ts
        ("u3", "i2", EventType.IMPRESSION, None, 65), ("u1", "i5", EventType.CLICK, None, 66),
    ])  # fmt: skip
    shown = T0 + timedelta(minutes=65)
    rows = _training_rows(spark, _settings(tmp_path / "training", redis_server.url, LIST_ITEMS), events)
    listed = {r["item_id"]: r for r in rows if r["user_id"] == "u1" and r["ts"].replace(tzinfo=timezone.utc) == shown}
    assert {item: r["label"] for item, r in listed.items()} == {"i2": 0, "i3": 0, "i5": 1, "x9": 0}

    serving = _settings(tmp_path / "serving", redis_server.url, LIST_ITEMS)
    # The world as the request that ranked the list sees it.
    with _serving_store(spark, serving, redis_client, [e for e in events if e.ts < shown], LIST_ITEMS) as store:
        request = _request(store, "u1", LIST)

    for k, item in enumerate(LIST):
        _assert_same_input(_candidate(request, k), listed[item])
    affinity = [listed[item]["user_category_affinity"] for item in LIST]
    np.testing.assert_allclose(np.asarray(request["user_category_affinity"], np.float64), affinity, rtol=1e-6)
    clicked = listed["i5"]
    assert (clicked["hist_item_ids"], clicked["user_event_count"]) == (["i1", "x9"], 2.0)
    for item in ("i2", "i3", "x9"):
        assert {n: listed[item][n] for n in USER_FEATURES} == {n: clicked[n] for n in USER_FEATURES}, item
    assert affinity == [0.0, 0.5, 0.5, 0.5]  # Action: i1 of u1's positives i1, x9 (unknown: x9)
