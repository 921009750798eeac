"""The impression writer's CPU per served list, by batch size, without the noise of HTTP load.

Setup: an embedded Redis, a 1,000-item catalog, the API's serving store and a local event log
(fsync on). Served lists of 10 items are written through `services.recommend.intake.ingest` as the
writer does (`claim=False`), and, as the peer, with the claim markers that `POST /v1/events` uses
(`claim=True`), in batches of 1, 5 and 10 lists. Reported: the writing thread's CPU time per list
(`time.thread_time`, so other threads and processes do not count) and wall time per list.

    .venv/bin/python benchmarks/impression_writer.py [--lists 400]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.event_log import LocalEventLog  # noqa: E402
from feature_store.online_store import RedisOnlineStore  # noqa: E402
from feature_store.redis_client import ConnectionSpec  # noqa: E402
from feature_store.redis_server import EmbeddedRedis  # noqa: E402
from feature_store.schemas import Item  # noqa: E402
from feature_store.settings import Settings  # noqa: E402
from services.recommend.impressions import ServedList  # noqa: E402
from services.recommend.intake import ingest  # noqa: E402
from services.recommend.online_store import ServingStore  # noqa: E402

console = Console(width=160)
ITEMS, K = 1000, 10
POLICY = "ranker=20261206T043719192207Z-f1fb4d;explore=greedy"
VERSIONS = {"ranker": "20261206T043719192207Z-f1fb4d", "recall": "20261206T043728393805Z-55af94"}


def served_lists(prefix: str, count: int) -> list[ServedList]:
    now = datetime.now(timezone.utc)
    return [ServedList(request_id=f"{prefix}-{n}", user_id=f"user{n % 300}", served_at=now, policy=POLICY,
                       item_ids=tuple(f"i{(n * 7 + j * 13) % ITEMS}" for j in range(K)), propensities=(1.0,) * K,
                       model_versions=VERSIONS) for n in range(count)]  # fmt: skip


def measure(store: ServingStore, log: LocalEventLog, lists: list[ServedList], per_batch: int, claim: bool) -> tuple[float, float]:
    """(thread CPU ms, wall ms) per list."""
    cpu, wall = time.thread_time(), time.perf_counter()
    for start in range(0, len(lists), per_batch):
        ingest(store, log, [event for served in lists[start:start + per_batch] for event in served.events()], claim)
    return (time.thread_time() - cpu) / len(lists) * 1000, (time.perf_counter() - wall) / len(lists) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lists", type=int, default=400, help="served lists per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            settings = Settings(state_dir=Path(tmp) / "state", redis={"url": server.url})
            client = redis.Redis.from_url(server.url)
            features = RedisOnlineStore(ConnectionSpec.from_settings(settings, server.url), settings.feature_store)
            store = ServingStore(client, features, settings.redis.key_prefix, math.ceil(settings.feature_store.dedup_ttl_s))
            store.sync_items([Item(item_id=f"i{n}", title=f"Film {n}", categories=[f"c{n % 20}"]) for n in range(ITEMS)],
                             written_at_ms=0)
            table = Table(title=f"impression intake, {K} items per list: writer thread CPU / wall per list (ms)")
            for column in ("lists per batch", "claim=False (writer)", "claim=True (POST /v1/events path)", "CPU ratio"):
                table.add_column(column, justify="right")
            with LocalEventLog(settings.event_log_dir, settings.event_log) as log:
                measure(store, log, served_lists("warm", 50), 5, False)
                for per_batch in (1, 5, 10):
                    own = measure(store, log, served_lists(f"own{per_batch}", args.lists), per_batch, False)
                    peer = measure(store, log, served_lists(f"peer{per_batch}", args.lists), per_batch, True)
                    console.print(f"{per_batch} lists per batch: done")
                    table.add_row(str(per_batch), f"{own[0]:.3f} / {own[1]:.2f}", f"{peer[0]:.3f} / {peer[1]:.2f}",
                                  f"{own[0] / peer[0]:.2f}×")
            console.print(table)
            features.close()
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
