"""LinUCB's context from the real batch layer: the item view publishes each item's category
signature (an independent CRC-32 bucket count, scaled to unit length), so a user with history has a
non-zero context x_t, and LinUCB serves the candidate its planted statistics favour."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from feature_store.catalog import Catalog
from feature_store.definitions import UNKNOWN_CATEGORY
from feature_store.online_store import RedisOnlineStore
from feature_store.settings import Settings
from pipelines.datasets.synthetic import generate
from pipelines.spark.runner import run_jobs
from services.explore.factory import explore_stage_from_settings
from services.explore.policy import Ranked

D = 32


def signature(categories: list[str]) -> np.ndarray:
    vector = np.zeros(D)
    for category in categories or [UNKNOWN_CATEGORY]:
        vector[zlib.crc32(category.encode()) % D] += 1
    return vector / np.linalg.norm(vector)


def test_the_batch_layer_gives_linucb_a_context_of_category_signatures(
    spark: object, settings: Settings, redis_client: Any
) -> None:
    settings = settings.model_copy(update={
        "spark": settings.spark.model_copy(update={"shuffle_partitions": 4}),
        "explore": settings.explore.model_copy(update={"policy": "linucb", "stats_cache_s": 0.0})})
    generate(settings, users=40, items=60, events=1500, categories=6, seed=3)
    catalog = Catalog(settings.catalog_dir)
    items = {item.item_id: item for item in catalog.items()}
    retagged = [items["i0"].model_copy(update={"categories": ['Puzzles', 'Board "games"']}),
                items["i1"].model_copy(update={"categories": []})]
    catalog.upsert_items(retagged)
    items.update({item.item_id: item for item in retagged})
    list(run_jobs(spark, settings, ["compact", "batch_features"]))  # type: ignore[arg-type]  # a generator: run it
    features = RedisOnlineStore.from_settings(settings)
    ids = sorted(items)
    served = np.asarray(features.get_features("item", ids, ["embedding"])["embedding"], dtype=float)
    expected = np.stack([signature(items[i].categories) for i in ids])
    np.testing.assert_allclose(served, expected, atol=1e-6)

    stage = explore_stage_from_settings(settings, features)
    users = sorted(user.user_id for user in catalog.users())
    user, history = max(zip(users, features.get_features("user", users, ["history"])["history"]), key=lambda u: len(u[1]))
    history = list(history)
    assert len(history) >= 3
    x = stage.stats.user_vector(history)
    mean = np.mean([signature(items[i].categories) for i in history], axis=0)
    np.testing.assert_allclose(x, mean / np.linalg.norm(mean), atol=1e-6)
    candidates = [i for i in ids if i not in set(history)][:20]
    for n in range(5):  # the ranker's last candidate clicked in this very context
        stage.stats.linucb.update(f"planted{n}", candidates[-1], x, 1.0)
    explored = stage.run(Ranked(tuple(candidates), np.linspace(1, 0, len(candidates))), 5, history, user, "r1")
    assert explored.slate.item_ids[0] == candidates[-1]
    stage.close()
    features.close()
