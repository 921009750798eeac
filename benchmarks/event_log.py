"""Event log append throughput: durable appends (fsync per batch, group commit) vs a buffered write.

For batch sizes 1, 100 and 1000 it appends the same events through `LocalEventLog` and, in the
same run, writes the same bytes with a plain buffered `file.write` and no fsync (the floor: what
the disk and the page cache cost without durability). Also a run with 8 threads appending single
events concurrently, where group commit shares one fsync between waiting writers.

    .venv/bin/python benchmarks/event_log.py [--events 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event
from feature_store.settings import EventLogSettings

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def make_events(n: int) -> list[Event]:
    return [
        Event(event_id=f"e{i}", user_id=f"u{i % 997}", item_id=f"i{i % 4099}", type="click",
              ts=T0 + timedelta(seconds=i // 50), context={"request_id": f"r{i}", "position": i % 10})
        for i in range(n)
    ]


def durable_append(root: Path, events: list[Event], batch: int) -> float:
    log = LocalEventLog(root, EventLogSettings(roll_max_age_s=3600))
    start = time.perf_counter()
    for offset in range(0, len(events), batch):
        log.append(events[offset : offset + batch])
    log.close()
    return time.perf_counter() - start


def buffered_write(root: Path, events: list[Event], batch: int) -> float:
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with (root / "plain.jsonl").open("w") as handle:
        for offset in range(0, len(events), batch):
            handle.write("".join(e.to_json_line() for e in events[offset : offset + batch]))
    return time.perf_counter() - start


def concurrent_single_appends(root: Path, events: list[Event], threads: int) -> float:
    log = LocalEventLog(root, EventLogSettings(roll_max_age_s=3600))
    shards = [events[t::threads] for t in range(threads)]

    def worker(shard: list[Event]) -> None:
        for event in shard:
            log.append([event])

    workers = [threading.Thread(target=worker, args=(s,)) for s in shards]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    events = make_events(args.events)
    table = Table(title=f"event log append, {args.events:,} events")
    for column in ("batch size", "durable events/s", "buffered events/s", "durable / buffered"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for batch in (1, 100, 1000):
            n = min(len(events), 2_000) if batch == 1 else len(events)
            durable = durable_append(Path(tmp) / f"d{batch}", events[:n], batch)
            plain = buffered_write(Path(tmp) / f"p{batch}", events[:n], batch)
            table.add_row(str(batch), f"{n / durable:,.0f}", f"{n / plain:,.0f}", f"{plain / durable:.3f}")
        n = min(len(events), 4_000)
        concurrent = concurrent_single_appends(Path(tmp) / "c", events[:n], threads=8)
        plain = buffered_write(Path(tmp) / "pc", events[:n], 1)
        table.add_row("1 × 8 threads", f"{n / concurrent:,.0f}", f"{n / plain:,.0f}", f"{plain / concurrent:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
