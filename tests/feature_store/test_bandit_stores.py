"""The bandit statistics in Redis: LinUCB's (A, b) per item and the examined counts, on a real Redis."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import pytest
import redis

from feature_store.attribution import Impression, Outcome
from feature_store.attribution_store import RedisAttributionStore
from feature_store.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA
from feature_store.linucb_store import STATS_TTL_MS, RedisLinUcbStore
from feature_store.redis_client import ConnectionSpec
from feature_store.redis_layout import KeyLayout
from feature_store.settings import Settings

D = 4


@pytest.fixture
def spec(settings: Settings, redis_client: redis.Redis) -> ConnectionSpec:
    return ConnectionSpec(settings.redis.url or "")


@pytest.fixture
def linucb(spec: ConnectionSpec) -> Iterator[RedisLinUcbStore]:
    store = RedisLinUcbStore(spec, dim=D, ridge=2.0)
    yield store
    store.close()


def test_linucb_keeps_the_inverse_of_the_outer_products_and_the_rewards(linucb: RedisLinUcbStore) -> None:
    """A⁻¹ by Sherman–Morrison after a seeded sequence of updates (some replayed) equals
    np.linalg.inv of λI + Σ x xᵀ over the updates applied once each."""
    rng = np.random.default_rng(1)
    xs, rewards = rng.normal(size=(300, D)), rng.integers(0, 2, size=300).astype(float)
    for n, (x, r) in enumerate(zip(xs, rewards)):
        assert linucb.update(f"o{n}", "i:1", x, r)
        if n % 7 == 0:
            assert not linucb.update(f"o{n // 2}", "i:1", xs[n // 2], rewards[n // 2])  # a replay adds nothing
    A_inv, b = linucb.read(["i:1", "never"])
    np.testing.assert_allclose(A_inv[0], np.linalg.inv(2.0 * np.eye(D) + xs.T @ xs), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b[0], xs.T @ rewards, rtol=1e-12)
    np.testing.assert_array_equal(A_inv[1], np.eye(D) / 2.0)
    np.testing.assert_array_equal(b[1], np.zeros(D))


def test_a_replayed_linucb_update_adds_nothing_and_each_update_renews_the_ttl(
    linucb: RedisLinUcbStore, spec: ConnectionSpec, redis_client: redis.Redis
) -> None:
    x = np.arange(D, dtype=float)
    key = KeyLayout(spec.key_prefix).linucb("i1")
    redis_client.hset(key, mapping={"b": np.zeros(D).tobytes(), "Ainv": (np.eye(D) / 2.0).tobytes()})
    redis_client.pexpire(key, 1_000_000)  # as if updated long ago
    assert linucb.update("o1", "i1", x, 1.0)
    assert STATS_TTL_MS - 60_000 < redis_client.pttl(key) <= STATS_TTL_MS  # the item's last update: 30 days to live
    assert not linucb.update("o1", "i1", x, 1.0)
    A_inv, b = linucb.read(["i1"])
    np.testing.assert_allclose(A_inv[0], np.linalg.inv(2.0 * np.eye(D) + np.outer(x, x)))
    np.testing.assert_allclose(b[0], x)


def test_a_key_written_before_the_inverse_was_kept_reads_and_updates(linucb: RedisLinUcbStore, spec: ConnectionSpec) -> None:
    """The upgrade path: an item hash holding `A` (the old layout) reads as A⁻¹, and its next update
    stores A⁻¹ in its place."""
    x, y = np.arange(D, dtype=float), np.ones(D)
    A = 2.0 * np.eye(D) + np.outer(x, x)
    client, key = spec.client(), KeyLayout(spec.key_prefix).linucb("old")
    client.hset(key, mapping={"A": A.tobytes(), "b": x.tobytes()})
    np.testing.assert_allclose(linucb.read(["old"])[0][0], np.linalg.inv(A))
    assert linucb.update("o1", "old", y, 0.0)
    A_inv, b = linucb.read(["old"])
    np.testing.assert_allclose(A_inv[0], np.linalg.inv(A + np.outer(y, y)))
    np.testing.assert_allclose(b[0], x)
    assert sorted(client.hkeys(key)) == [b"Ainv", b"b"]
    client.close()


def test_linucb_rejects_a_context_of_the_wrong_dimension(linucb: RedisLinUcbStore) -> None:
    with pytest.raises(ValueError, match="expected"):
        linucb.update("o1", "i1", np.ones(D + 1), 1.0)


def test_examined_counts_are_the_terms_of_the_debiased_ctr(spec: ConnectionSpec) -> None:
    """E_i and c_i recombine into the store's own dCTR_i, and follow θ_k · impressions planted per slot."""
    store = RedisAttributionStore(spec, dedup_ttl_s=86400, max_future_skew_s=900)
    now = int(time.time() * 1000)
    rng = np.random.default_rng(2)
    planted = {"a": (60, 0.3), "b:2": (25, 0.1), "c": (5, 0.0)}
    for item, (shown, ctr) in planted.items():
        for n in range(shown):
            impression = Impression(f"imp-{item}-{n}", "u", item, now - 1000, f"r{item}{n}", n % 3, "greedy", None, None)
            store.record_impression(impression, now)
            if rng.random() < ctr or n == 0 and ctr > 0:
                store.record_credit(impression, Outcome(f"c-{item}-{n}", "u", item, "click", now - 500, None), now)
    items = [*planted, "unknown"]
    since, until = now - 3_600_000, now + 3_600_000
    counts = store.examined_counts(items, since, until)
    examined, clicks = counts.examined, counts.clicks
    dctr = store.debiased_ctr(items, since, until)
    np.testing.assert_allclose((clicks + CTR_PRIOR_ALPHA) / (examined + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA), dctr)
    theta = store.position_bias(since, until)
    expected = [sum(theta[str(p)] * sum(1 for n in range(shown) if n % 3 == p) for p in range(3))
                for shown, _ in planted.values()]
    np.testing.assert_allclose(examined, [*expected, 0.0])
    assert clicks[-1] == 0 and clicks[0] >= 1
    store.close()
