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

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import redis

from feature_store.catalog import Catalog
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_server import EmbeddedRedis
from feature_store.schemas import Event, EventType, Item
from feature_store.settings import Settings
from models.ranking.features import FeatureSpec
from pipelines.spark.jobs.ranking_samples import DENSE_FEATURES
from pipelines.spark.runner import run_jobs
from services.recommend.model_adapters import RankerInputs
from services.recommend.online_store import ServingStore
from services.recommend.types import UserContext
from tests.pipelines.spark.conftest import write_events

ITEMS = {"i1": ["Action"], "i2": ["Comedy"], "i3": ["Action", "Comedy"], "i4": ["Comedy"], "i5": ["Action"]}
# Recent event times: the live writer drops events older than its replay window. The events span
# two hours, so the batch watermark splits them between the batch and the speed layer.
# Known skew, not hidden: the user×category affinity is a batch-only share, served as of the last
# batch watermark while training rows compute it as of their event time. Making it lambda-merged
# (live per-category positive counts over live positive counts) is open work.
AS_OF_WATERMARK = {"user_category_affinity"}
T0 = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)


def _events() -> list[Event]:
    rows = [  # (user, item, type, value, minutes after T0)
        ("u1", "i1", EventType.RATING, 5.0, 0), ("u2", "i5", EventType.IMPRESSION, None, 1),
        ("u1", "i2", EventType.CLICK, None, 2), ("u2", "i5", EventType.CLICK, None, 3),
        ("u1", "i3", EventType.IMPRESSION, None, 4), ("u1", "i4", EventType.RATING, 2.0, 65),
        ("u2", "i1", EventType.RATING, 4.0, 66), ("u1", "i3", EventType.CLICK, None, 67),
        ("u1", "i5", EventType.IMPRESSION, None, 68), ("u3", "i5", EventType.RATING, 5.0, 69),
        ("u1", "i1", EventType.CLICK, None, 70),  # i1 again: a history holds it once, at its newest
        ("u1", "i5", EventType.CLICK, None, 90),  # the sample under test: the log's last event
    ]  # fmt: skip
    return [
        Event(event_id=f"e{n}", user_id=u, item_id=i, type=t, value=v, ts=T0 + timedelta(minutes=m))
        for n, (u, i, t, v, m) in enumerate(rows)
    ]


def _settings(state_dir: Path, url: str) -> Settings:
    settings = Settings(state_dir=state_dir, spark={"master": "local[2]", "shuffle_partitions": 4}, redis={"url": url})
    Catalog(settings.catalog_dir).upsert_items(Item(item_id=i, title=i, categories=c) for i, c in ITEMS.items())
    return settings


@pytest.mark.timeout(300)
def test_serving_features_equal_training_features(
    spark: object, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path
) -> None:
    events = _events()
    training = _settings(tmp_path / "training", redis_server.url)
    write_events(training, events)
    list(run_jobs(spark, training, ["compact", "ranking_samples"]))  # type: ignore[arg-type]
    rows = ds.dataset(str(training.state_dir / "batch" / "samples"), format="parquet").to_table().to_pylist()
    sample = next(r for r in rows if (r["user_id"], r["item_id"], r["label"]) == ("u1", "i5", 1))

    serving = _settings(tmp_path / "serving", redis_server.url)
    write_events(serving, events[:-1])  # the world as a request at the sample's ts sees it
    list(run_jobs(spark, serving, ["compact", "sequences", "item_graph", "batch_features"]))  # type: ignore[arg-type]
    features = RedisOnlineStore.from_settings(serving, redis_server.url)
    live = features.live_writer()
    assert live.write(events[:-1], item_categories=ITEMS).applied == len(events) - 1
    live.close()
    store = ServingStore(redis_client, features, serving.redis.key_prefix)
    for item_id, categories in ITEMS.items():
        store.upsert_item(Item(item_id=item_id, title=item_id, categories=categories))
    history, seen = store.user_behaviour("u1", 50)
    spec = FeatureSpec(dense_features=tuple(DENSE_FEATURES), max_seq_len=50)
    request = RankerInputs(spec, store).request(UserContext("u1", history, seen), ["i5"])
    features.close()

    assert sample["hist_item_ids"] == ["i2", "i3", "i1"]  # positives before ts, oldest first, each item once
    assert request["hist_item_ids"] == sample["hist_item_ids"]
    assert request["hist_categories"] == sample["hist_categories"]
    assert request["item_category"] == [sample["item_category"]]
    for name in sorted(set(DENSE_FEATURES) - AS_OF_WATERMARK):
        np.testing.assert_allclose(
            np.asarray(request[name], np.float64), [sample[name]], rtol=1e-6, err_msg=f"dense feature {name}"
        )
