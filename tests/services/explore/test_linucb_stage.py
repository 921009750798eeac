"""LinUCB through the explore stage on a real Redis: the served slate and the scores are those of
an independent computation from the planted statistics (A_i = I + Σ x xᵀ, b_i = Σ r x, solved per
item), ties included, read cold, from the cache, and after a background refresh."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import redis

from feature_store.definitions import Entity
from feature_store.linucb_store import RedisLinUcbStore
from feature_store.online_store import RedisOnlineStore
from feature_store.settings import Settings
from services.explore.linucb import LinUcb
from services.explore.policy import Ranked
from services.explore.stage import ExploreStage
from services.explore.stats import BanditStats
from tests.feature_store.helpers import WM, item_row
from tests.services.explore.test_stats_cache import Clock, Deferred

D, ALPHA, TTL_S = 32, 1.0, 1.0
HISTORY = ["h0", "h1", "h2"]


class Planted:
    """Every candidate's updates (context, reward), as the stream job would have applied them."""

    def __init__(self, linucb: RedisLinUcbStore, items: list[str], rng: np.random.Generator) -> None:
        self.linucb = linucb
        self.updates: dict[str, list[tuple[np.ndarray, float]]] = {item: [] for item in items}
        shared = [(rng.normal(size=D) / np.sqrt(D), float(n % 2)) for n in range(4)]
        for n, item in enumerate(items):
            if n % 4 == 0:
                continue  # no statistics: (I, 0), a tie group
            for x, reward in shared if n % 5 == 1 else [(rng.normal(size=D) / np.sqrt(D), float(rng.random() < 0.4))
                                                          for _ in range(int(rng.integers(1, 6)))]:
                self.add(item, x, reward)  # n % 5 == 1: equal statistics, another tie group

    def add(self, item: str, x: np.ndarray, reward: float) -> None:
        self.updates[item].append((x, reward))
        assert self.linucb.update(f"{item}-{len(self.updates[item])}", item, x, reward)

    def scores(self, ranked: Ranked, x: np.ndarray) -> np.ndarray:
        """p_i = xᵀA_i⁻¹b_i + α·sqrt(xᵀA_i⁻¹x), one item at a time with solves."""
        out = []
        for item in ranked.item_ids:
            A, b = np.eye(D), np.zeros(D)
            for v, reward in self.updates[item]:
                A, b = A + np.outer(v, v), b + reward * v
            out.append(x @ np.linalg.solve(A, b) + ALPHA * np.sqrt(x @ np.linalg.solve(A, x)))
        return np.array(out)


def _expected_slate(ranked: Ranked, scores: np.ndarray, k: int) -> tuple[str, ...]:
    """The k best by score; equal scores keep the ranker's order."""
    return tuple(ranked.item_ids[i] for i in sorted(range(len(ranked)), key=lambda i: (-scores[i], i))[:k])


def _context(features: RedisOnlineStore) -> np.ndarray:
    vectors = features.get_features(Entity.ITEM, HISTORY, ["embedding"])["embedding"]
    mean = np.mean([np.asarray(v, dtype=float) for v in vectors], axis=0)
    return mean / np.linalg.norm(mean)  # type: ignore[no-any-return]


def test_linucb_slates_and_scores_match_an_independent_computation_cold_cached_and_refreshed(
    settings: Settings, redis_client: redis.Redis
) -> None:
    rng = np.random.default_rng(19)
    features = RedisOnlineStore.from_settings(settings)
    with features.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row(item, embedding=rng.normal(size=D)) for item in HISTORY])
    items = [f"c{n}" for n in range(83)]
    # The candidates with equal statistics (n % 5 == 1) ranked last: a BLAS matrix-vector product
    # rounds the rows past its last full block (83 is not a multiple of one) differently.
    order = sorted(rng.permutation(items).tolist(), key=lambda item: int(item[1:]) % 5 == 1)
    ranked = Ranked(tuple(order), np.linspace(1.0, 0.0, len(items)))
    linucb = RedisLinUcbStore(features.spec, D)
    planted = Planted(linucb, items, rng)
    clock, refresh = Clock(), Deferred()
    stats = BanditStats(features, features.attribution(), linucb, cache_s=TTL_S, clock=clock, submit=refresh)
    stage, policy = ExploreStage(LinUcb(ALPHA), stats), LinUcb(ALPHA)
    x = _context(features)

    def check(expected_scores: np.ndarray) -> None:
        scores = policy.indices(stats.linear(ranked.item_ids, HISTORY))
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-10, atol=1e-12)
        assert len(set(scores[tied].tolist())) == 1  # equal statistics, bit-equal scores
        served = stage.run(ranked, k, HISTORY)
        assert served.slate.item_ids == _expected_slate(ranked, expected_scores, k)
        assert served.slate.propensities == (1.0,) * k and served.policy == "linucb(alpha=1)"

    before = planted.scores(ranked, x)
    equal = [i for i, item in enumerate(items) if i % 5 == 1 and i % 4]
    tied = [ranked.item_ids.index(items[i]) for i in equal]
    assert len(set(before[tied])) == 1 and len(tied) >= 8
    k = int(np.sum(before > before[tied[0]])) + len(tied) // 2  # the cut falls inside the group of equal statistics
    check(before)  # read cold
    check(before)  # from the cache
    for item in ranked.item_ids[:10]:
        planted.add(item, x, 1.0)  # the best-ranked ten are clicked in this very context
    after = planted.scores(ranked, x)
    assert _expected_slate(ranked, after, k) != _expected_slate(ranked, before, k)
    clock.now += TTL_S
    check(before)  # expired: served as it was while the refresh is queued
    assert refresh.run() == 2  # the statistics, and the history's embeddings
    check(after)
    stats.close()
    features.close()


def test_a_history_without_embeddings_gives_a_zero_context_and_says_so_once(
    settings: Settings, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    features = RedisOnlineStore.from_settings(settings)
    with features.publish_batch_view(Entity.ITEM, WM) as write:
        write([item_row(item) for item in HISTORY])  # what the batch layer publishes: no embedding
    stats = BanditStats(features, features.attribution(), RedisLinUcbStore(features.spec, D), cache_s=0)
    with caplog.at_level(logging.WARNING, logger="services.explore.stats"):
        assert not stats.user_vector(HISTORY).any() and not stats.user_vector(HISTORY[:1]).any()
    assert [r.getMessage().count("LinUCB serves the ranker's order") for r in caplog.records] == [1]
