"""Attribution freshness of the speed layer: from a click's `EventLog.append` returning to its
attributed count being readable in Redis.

    .venv/bin/python benchmarks/freshness.py [--seconds 10] [--rates 100,1000]

For each configuration (tuned: low bundle time/size, fast source monitoring and log rolling,
exactly-once checkpoints; the same with at-least-once checkpoints; peer: Flink's default Python
bundle settings, 1 s monitoring and rolling), it starts the real job on a local mini-cluster and
appends events at each steady rate for a bounded time: half impressions (one per request, with a
request id and a position), half clicks carrying the request id of an impression appended one
tick (10 ms) before. It polls each click's credit marker (`KeyLayout.attribution_credit`), which
the attribution store sets in the same atomic script as the counts, so "marker present" means
"attributed count readable". Prints p50/p95/p99, sustained clicks/s, CPU seconds of the job
(driver, JVM, Python worker) per wall second, files written per hour, the rate the appender
really offered (it may fall short of the asked one on a busy machine), and the rate at which the
job works off a backlog (`--backlog` pairs appended at once: its capacity) with its CPU ms per
event meanwhile; `--before DIR` first runs the tuned config with the job of another checkout (a
before/after in one run on a shared machine), and the CPU other
processes used meanwhile (the machine is shared: a figure taken beside them is not a quiet one's).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
import redis
from rich.console import Console
from rich.table import Table

from feature_store.event_log import LocalEventLog
from feature_store.redis_layout import KeyLayout
from feature_store.redis_server import EmbeddedRedis
from feature_store.schemas import Event, EventContext, EventType
from feature_store.settings import EventLogSettings
from pipelines.flink.runner import StreamJob
from quiet import ForeignCpu  # benchmarks/quiet.py: the script's folder is on sys.path

console = Console(width=170)


@dataclass(frozen=True)
class Config:
    name: str
    roll_s: float
    monitor_ms: int
    bundle_time_ms: int
    bundle_size: int
    checkpoint_ms: int = 5_000
    checkpoint_mode: str = "EXACTLY_ONCE"
    code_dir: Path | None = None  # run the job from this checkout (a "before"), else from this one


TUNED = Config("tuned", roll_s=0.1, monitor_ms=100, bundle_time_ms=20, bundle_size=100)
DEFAULTS = Config("flink defaults", roll_s=1.0, monitor_ms=1000, bundle_time_ms=1000, bundle_size=100_000)


class MarkerPoller(threading.Thread):
    """Records when each expected Redis key (a click's credit marker) appears."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client, self.layout = client, KeyLayout(prefix)
        self.pending: dict[str, float] = {}
        self.latencies: list[float] = []
        self.last_seen = 0.0
        self.lock = threading.Lock()
        self.stopped = False

    def expect(self, keys: list[str], appended_at: float) -> None:
        with self.lock:
            self.pending.update((key, appended_at) for key in keys)

    def run(self) -> None:
        while not self.stopped:
            with self.lock:
                waiting = list(self.pending.items())
            if waiting:
                pipe = self.client.pipeline(transaction=False)
                for key, _ in waiting:
                    pipe.exists(key)
                found, now = pipe.execute(), time.perf_counter()
                with self.lock:
                    for (key, appended_at), present in zip(waiting, found):
                        if present:
                            self.latencies.append(now - appended_at)
                            self.last_seen = now
                            del self.pending[key]
            time.sleep(0.002)


def job_cpu_seconds(job: StreamJob) -> float:
    assert job.process is not None
    root = psutil.Process(job.process.pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run_rate(log: LocalEventLog, poller: MarkerPoller, rate: int, seconds: float, tag: str) -> int:
    """Append `rate` events/s in 10 ms batches for `seconds` (impressions, then clicks on the
    previous batch's impressions); returns the number of clicks appended."""
    pairs, sent, clicks, started = max(1, rate // 200), 0, 0, time.perf_counter()
    shown: list[Event] = []
    while time.perf_counter() - started < seconds:
        now = datetime.now(timezone.utc)
        # Built without validation (model_construct): the appender must keep up with 1,000 events/s.
        batch = [_event(f"{e.event_id}-c", e.user_id, e.item_id, EventType.CLICK, now, e.context.request_id, None)
                 for e in shown]
        shown = [_event(f"{tag}-{sent + n}", f"u{(sent + n) % 500}", f"i{(sent + n) % 2000}", EventType.IMPRESSION, now,
                        f"{tag}-r{sent + n}", n % 10) for n in range(pairs)]
        log.append(batch + shown)
        poller.expect([poller.layout.attribution_credit(e.event_id[:-2], "click") for e in batch], time.perf_counter())
        sent, clicks = sent + pairs, clicks + len(batch)
        time.sleep(max(0.0, started + 2 * sent / rate - time.perf_counter()))
    return clicks


def _event(event_id: str, user: str, item: str, kind: EventType, ts: datetime, request_id: str, position: int | None) -> Event:
    context = EventContext.model_construct(request_id=request_id, position=position)
    return Event.model_construct(event_id=event_id, user_id=user, item_id=item, type=kind, ts=ts, context=context)


def backlog_rate(log: LocalEventLog, poller: MarkerPoller, pairs: int, job: StreamJob) -> tuple[float, float]:
    """Events/s the job works off a backlog at (`pairs` impressions, then their clicks, appended at
    once), and the job's CPU ms per event meanwhile (driver, JVM and Python workers together)."""
    deadline = time.perf_counter() + 120
    while poller.pending and time.perf_counter() < deadline:  # the job catches up with the rates first
        time.sleep(0.1)
    now = datetime.now(timezone.utc)
    shown = [_event(f"b-{n}", f"u{n % 500}", f"i{n % 2000}", EventType.IMPRESSION, now, f"b-r{n}", n % 10)
             for n in range(pairs)]
    clicks = [_event(f"b-{n}-c", e.user_id, e.item_id, EventType.CLICK, now, f"b-r{n}", None) for n, e in enumerate(shown)]
    poller.latencies.clear()
    cpu_before, started = job_cpu_seconds(job), time.perf_counter()
    log.append(shown + clicks)
    poller.expect([poller.layout.attribution_credit(e.event_id, "click") for e in shown], started)
    deadline = started + 300
    while poller.pending and time.perf_counter() < deadline:
        time.sleep(0.05)
    cpu_ms = (job_cpu_seconds(job) - cpu_before) * 1000 / (2 * len(poller.latencies))
    return len(poller.latencies) * 2 / (poller.last_seen - started), cpu_ms


def measure(config: Config, rates: list[int], seconds: float, workdir: Path, server: EmbeddedRedis,
            backlog: int) -> list[dict[str, str]]:
    state = workdir / config.name.replace(" ", "-")
    client = redis.Redis.from_url(server.url)
    prefix = f"bench{abs(hash(config.name)) % 10_000}"
    env = {
        "RECSYS_REDIS__URL": server.url, "RECSYS_REDIS__KEY_PREFIX": prefix,
        "RECSYS_FLINK__MONITOR_INTERVAL_MS": str(config.monitor_ms),
        "RECSYS_FLINK__BUNDLE_TIME_MS": str(config.bundle_time_ms),
        "RECSYS_FLINK__BUNDLE_SIZE": str(config.bundle_size),
        "RECSYS_FLINK__CHECKPOINT_INTERVAL_MS": str(config.checkpoint_ms),
        "RECSYS_FLINK__CHECKPOINT_MODE": config.checkpoint_mode,
    }
    log = LocalEventLog(state / "events", EventLogSettings(roll_max_age_s=config.roll_s))
    job = StreamJob(state, env=env, code_dir=config.code_dir).start()
    poller = MarkerPoller(client, prefix)
    poller.start()
    rows = []
    try:
        run_rate(log, poller, 200, 0.05, "warmup")  # a few clicks: waits until the job runs
        while poller.pending:
            if not job.running:
                raise RuntimeError(f"job exited; see {job.log_file}")
            time.sleep(0.1)
        for rate in rates:
            console.print(f"{config.name}: {rate} events/s for {seconds:.0f} s")
            poller.latencies.clear()
            files_before = len(list((state / "events").rglob("part-*.jsonl")))
            cpu_before, started = job_cpu_seconds(job), time.perf_counter()
            sent = run_rate(log, poller, rate, seconds, f"r{rate}")
            deadline = time.perf_counter() + 30
            while poller.pending and time.perf_counter() < deadline:
                time.sleep(0.05)
            wall = (time.perf_counter() if poller.pending else poller.last_seen) - started
            cpu = job_cpu_seconds(job) - cpu_before
            files = len(list((state / "events").rglob("part-*.jsonl"))) - files_before
            lat = np.array(poller.latencies) * 1000
            rows.append({
                "config": config.name, "rate": f"{rate}/s", "offered ev/s": f"{2 * sent / seconds:.0f}", "clicks": str(sent),
                "credited": str(len(lat)),
                "p50 ms": f"{np.percentile(lat, 50):.0f}", "p95 ms": f"{np.percentile(lat, 95):.0f}",
                "p99 ms": f"{np.percentile(lat, 99):.0f}", "sustained clicks/s": f"{len(lat) / wall:.0f}",
                "job CPU s/s": f"{cpu / wall:.2f}", "files/hour": f"{files / seconds * 3600:.0f}",
            })
        if backlog:
            console.print(f"{config.name}: a backlog of {2 * backlog} events")
            capacity, cpu_ms = backlog_rate(log, poller, backlog, job)
            for row in rows:
                row["backlog ev/s"] = f"{capacity:.0f}"
                row["backlog CPU ms/ev"] = f"{cpu_ms:.2f}"
    finally:
        poller.stopped = True
        job.stop()
        log.close()
    return rows


def compact_cost(events: int, file_counts: list[int], workdir: Path) -> list[dict[str, str]]:
    """Wall time of Spark's compact job over the same events split into more and more files."""
    from pipelines.spark.runner import run_jobs
    from pipelines.spark.session import build_session
    from feature_store.settings import Settings

    now = datetime.now(timezone.utc)
    lines = [Event(event_id=f"c{n}", user_id=f"u{n % 500}", item_id=f"i{n % 2000}", type="click",
                   ts=now).to_json_line() for n in range(events)]
    spark = build_session(Settings(state_dir=workdir), "freshness-compact",
                          {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    rows = []
    for run, files in enumerate([1, *file_counts]):  # the first run only warms the JVM up
        settings = Settings(state_dir=workdir / f"compact-{run}", spark={"shuffle_partitions": 4})
        partition = settings.event_log_dir / f"dt={now:%Y-%m-%d}" / f"hr={now:%H}"
        partition.mkdir(parents=True)
        per_file = -(-events // files)
        for n in range(files):
            (partition / f"part-{n:06d}.jsonl").write_text("".join(lines[n * per_file:(n + 1) * per_file]))
        started = time.perf_counter()
        list(run_jobs(spark, settings, ["compact"]))
        if run:
            rows.append({"files": str(files), "events": str(events), "compact s": f"{time.perf_counter() - started:.1f}"})
    spark.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--rates", default="100,1000", help="comma-separated events/s")
    parser.add_argument("--compact", action="store_true", help="only measure Spark compact over many small files")
    parser.add_argument("--tuned-bundle", default="20,100", help="bundle time ms,size of the tuned config")
    parser.add_argument("--skip-at-least-once", action="store_true", help="measure only tuned and the peer")
    parser.add_argument("--backlog", type=int, default=3000, help="impression+click pairs appended at once (0: skip)")
    parser.add_argument("--before", type=Path, help="also run the tuned config with the job of this checkout "
                        "(e.g. `git worktree add --detach /tmp/before <commit>`), first, in the same run")
    args = parser.parse_args()
    bundle_ms, bundle_size = (int(v) for v in args.tuned_bundle.split(","))
    tuned = Config("tuned", TUNED.roll_s, TUNED.monitor_ms, bundle_ms, bundle_size)
    at_least_once = Config("tuned, at-least-once", tuned.roll_s, tuned.monitor_ms, bundle_ms, bundle_size,
                           checkpoint_mode="AT_LEAST_ONCE")
    rates = [int(r) for r in args.rates.split(",")]
    configs = (tuned, DEFAULTS) if args.skip_at_least_once else (tuned, at_least_once, DEFAULTS)
    if args.before:
        configs = (Config("tuned (before)", tuned.roll_s, tuned.monitor_ms, bundle_ms, bundle_size,
                          code_dir=args.before.resolve()), *configs)
    if args.compact:
        with tempfile.TemporaryDirectory(prefix="compact-") as tmp:
            rows = compact_cost(20_000, [1, 100, 2_000], Path(tmp))
        for row in rows:
            console.print(row)
        console.print(f"2000 files / 1 file: {float(rows[-1]['compact s']) / float(rows[0]['compact s']):.1f}x")
        return
    with tempfile.TemporaryDirectory(prefix="freshness-") as tmp:
        server = EmbeddedRedis(Path(tmp) / "redis").start()
        started = time.perf_counter()
        try:
            with ForeignCpu() as other:
                rows = [row for config in configs for row in measure(config, rates, args.seconds, Path(tmp), server, args.backlog)]
        finally:
            server.stop()
        busy = other.core_seconds / (time.perf_counter() - started)
    table = Table(title="attribution freshness (click appended → attributed count readable in Redis)")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)
    for config in configs:
        console.print(f"{config.name}: roll {config.roll_s}s, monitor {config.monitor_ms}ms, "
                      f"bundle.time {config.bundle_time_ms}ms, bundle.size {config.bundle_size}, "
                      f"checkpoints every {config.checkpoint_ms}ms {config.checkpoint_mode}")
    console.print(f"other processes used {busy:.1f} cores on average (peak {other.peak:.1f}, {other.busiest})")
    for rate in rates:
        ours, peer = (next(r for r in rows if r["config"] == c.name and r["rate"] == f"{rate}/s") for c in (tuned, DEFAULTS))
        console.print(f"{rate}/s: p95 flink defaults / tuned = {float(peer['p95 ms']) / max(float(ours['p95 ms']), 1):.1f}x")


if __name__ == "__main__":
    main()
