"""Online feature reads: 200 items × 20 features per read, one round trip vs one GET per key.

    .venv/bin/python benchmarks/feature_reads.py [--items 100000] [--reads 2000] [--naive-reads 50] [--cluster]

Starts an embedded redis-server on loopback (or uses REDIS_URL), publishes `--items` items with 20
batch features through the real publish path, then times `RedisOnlineStore.get_features` (one Lua
script per read) against the naive peer: the same values stored one string key per (item, feature)
and read with one GET per key. Also reports Redis memory per item (used_memory delta / items),
scaled to 1M items, against the raw size of the values.

`--cluster` also starts a 3-master Redis Cluster on loopback (the test suite's fixture) and runs the
same benchmark against it in the same process, then prints the cluster/single ratio of the read
latency (on a cluster, `feature_store.cluster_read` assembles a read from several round trips).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store.definitions import DType, Entity, FeatureDef, FeatureRegistry, Source  # noqa: E402
from feature_store.online_store import RedisOnlineStore  # noqa: E402
from feature_store.redis_client import ConnectionSpec  # noqa: E402
from feature_store.redis_server import EmbeddedRedis  # noqa: E402
from feature_store.settings import FeatureStoreSettings  # noqa: E402

WATERMARK = datetime(2024, 1, 1, tzinfo=timezone.utc)
DTYPES = [DType.INT] * 8 + [DType.FLOAT] * 8 + [DType.STRING] * 2 + [DType.SEQUENCE] * 2
REGISTRY = FeatureRegistry(tuple(
    FeatureDef(Entity.ITEM, f"f{k:02d}", dtype, Source.BATCH, cap=10 if dtype is DType.SEQUENCE else None)
    for k, dtype in enumerate(DTYPES)
))
NAMES = REGISTRY.names(Entity.ITEM)


def make_row(k: int, rng: random.Random) -> dict[str, Any]:
    row: dict[str, Any] = {"item_id": f"item{k}"}
    for name, dtype in zip(NAMES, DTYPES):
        if dtype is DType.INT:
            row[name] = rng.randrange(100_000)
        elif dtype is DType.FLOAT:
            row[name] = rng.random()
        elif dtype is DType.STRING:
            row[name] = rng.choice(["Drama", "Comedy", "Action", "Thriller", "Children's"])
        else:
            row[name] = [f"item{rng.randrange(1_000_000)}" for _ in range(3)]
    return row


def raw_bytes(row: dict[str, Any]) -> int:
    """Bytes of the data itself: the id, 8 per number, UTF-8 of strings and sequence members."""
    size = len(row["item_id"])
    for name, dtype in zip(NAMES, DTYPES):
        value = row[name]
        size += 8 if dtype in (DType.INT, DType.FLOAT) else sum(len(v) for v in value) if isinstance(value, list) else len(value)
    return size


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_reads(read: Callable[[list[str]], Any], n_items: int, reads: int, rng: random.Random) -> list[float]:
    samples = []
    for _ in range(reads):
        ids = [f"item{rng.randrange(n_items)}" for _ in range(200)]
        start = time.perf_counter()
        read(ids)
        samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--naive-reads", type=int, default=50)
    parser.add_argument("--cluster", action="store_true", help="also run against a 3-master Redis Cluster")
    args = parser.parse_args()
    server = None if os.environ.get("REDIS_URL") else EmbeddedRedis(Path(tempfile.mkdtemp()) / "redis").start()
    url = os.environ.get("REDIS_URL") or server.url  # type: ignore[union-attr]
    try:
        single = run(url, args)
    finally:
        if server is not None:
            server.kill()  # no final save of a throwaway dataset
    if args.cluster:
        from tests.cluster.conftest import RedisClusterProcesses

        cluster = RedisClusterProcesses(Path(tempfile.mkdtemp()) / "cluster").start()
        try:
            on_cluster = run(cluster.url, args)
        finally:
            cluster.stop()
        print(f"cluster/single get_features: p50 {on_cluster[0] / single[0]:.2f}x, p99 {on_cluster[1] / single[1]:.2f}x")


def used(client: Any, section: str, field: str) -> float:
    """An INFO field, summed over the masters of a cluster (whose client answers per node)."""
    info = client.info(section, target_nodes="primaries") if hasattr(client, "get_primaries") else client.info(section)
    if field in info:
        return float(info[field])
    return float(sum(node[field] for node in info.values() if field in node))


def run(url: str, args: argparse.Namespace) -> tuple[float, float]:
    """Publish, time the reads against the naive peer, print; returns get_features' (p50, p99) in ms."""
    spec = ConnectionSpec(url, socket_timeout_s=2.0, connect_timeout_s=2.0, key_prefix="bench")
    cluster = spec.cluster
    store = RedisOnlineStore(spec, FeatureStoreSettings(write_batch_size=2000), REGISTRY)
    client = store.client
    client.flushdb(target_nodes="primaries") if cluster else client.flushdb()
    rng = random.Random(42)
    rows = [make_row(k, rng) for k in range(args.items)]
    before = used(client, "memory", "used_memory")
    start = time.perf_counter()
    with store.publish_batch_view(Entity.ITEM, WATERMARK) as write:
        write(rows)
    publish_s = time.perf_counter() - start
    per_item = (used(client, "memory", "used_memory") - before) / args.items
    raw_per_item = sum(raw_bytes(r) for r in rows) / len(rows)

    naive_items = min(args.items, 10_000)
    pipe = client.pipeline(transaction=False)
    for row in rows[:naive_items]:
        for name in NAMES:
            value = row[name]
            pipe.set(f"naive:{row['item_id']}:{name}", "\x1f".join(value) if isinstance(value, list) else value)
    pipe.execute()

    def naive_read(ids: list[str]) -> list[Any]:
        return [client.get(f"naive:{i}:{name}") for i in ids for name in NAMES]

    time_reads(lambda ids: store.get_features("item", ids, NAMES), args.items, 100, rng)  # warm-up
    client.config_resetstat(target_nodes="primaries") if cluster else client.config_resetstat()
    fast = time_reads(lambda ids: store.get_features("item", ids, NAMES), args.items, args.reads, rng)
    server_us = None if cluster else client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"]
    naive = time_reads(naive_read, naive_items, args.naive_reads, rng)
    (fast50, fast99), (naive50, naive99) = percentiles(fast), percentiles(naive)
    version = client.info("server", target_nodes="random")["redis_version"] if cluster else client.info("server")["redis_version"]
    print(f"redis {version} at {url}; {args.items:,} items × {len(NAMES)} features "
          f"published in {publish_s:.1f}s ({args.items / publish_s:,.0f} items/s)")
    how = "pointer, meta, rows by MGET per slot (cluster_read)" if cluster else "one Lua round trip"
    print(f"get_features ({how}), 200 items × 20 features, {args.reads} reads: "
          f"p50 {fast50:.3f} ms, p99 {fast99:.3f} ms")
    if server_us is not None:
        print(f"  of which inside redis-server (commandstats, the read script): {server_us / 1000:.3f} ms per read")
    print(f"naive one GET per key (4,000 GETs), {args.naive_reads} reads: p50 {naive50:.1f} ms, p99 {naive99:.1f} ms")
    print(f"speed-up naive/get_features: p50 {naive50 / fast50:.0f}x, p99 {naive99 / fast99:.0f}x")
    print(f"memory: {per_item:.0f} B/item in Redis → {per_item * 1e6 / 2**30:.2f} GiB per 1M items × 20 features; "
          f"raw data {raw_per_item:.0f} B/item → {per_item / raw_per_item:.1f}x raw")
    print(f"p99 target < 2 ms: {'met' if fast99 < 2 else 'NOT met'}; median of all: {statistics.median(fast) * 1000:.3f} ms")
    store.close()
    return fast50, fast99


if __name__ == "__main__":
    main()
