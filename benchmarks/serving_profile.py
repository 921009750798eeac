"""Where a recommendation request's server CPU goes, and the CPU per request of two checkouts.

Same setup as `serving.py` (embedded Redis, DIN + Item2vec recall trained here, 1,000 items, 300
users with 50-item live histories, k=10). The API runs with one worker (`recsys serve`'s launcher
runs it in-process), so its process is the worker.

1. **CPU per request**: server CPU time (`/proc`, all threads) over a closed loop of `--requests`
   GET /v1/users/{id}/recommendations, logging off (`log_impressions=false`) and on (until the
   writer has logged every shown item), and the server's idle CPU per second (background refresh
   threads) measured before. With `--baseline DIR` (another checkout of this repository, e.g.
   `git worktree add /tmp/base <commit>`), a second API from that checkout runs beside this one
   (same registry, each on its own Redis), and the bare FastAPI floor of `serving.py` beside both;
   all are measured alternately `--repeats` times: on a shared machine absolute CPU times are
   inflated by load, the ratio in the same run is not. Then, for this checkout: Redis commands per
   request (`INFO commandstats`) and CPU per request per thread (`/proc`, named by `py-spy dump`).
2. **Profile** (`--profile`): py-spy samples the worker (`--rate` per second, running threads
   only: a thread waiting on the GIL or a lock is idle) over a closed loop with logging on, and
   prints the share of samples per thread kind, per request-path function (inclusive), and the
   top functions by self time.
3. `--din-calls N`: the CPU of N calls of the DIN signature alone, in-process (the host's speed
   on a fixed workload).

    .venv/bin/python benchmarks/serving_profile.py --profile --requests 1000
    .venv/bin/python benchmarks/serving_profile.py --baseline /tmp/base --requests 500 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import redis
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.redis_server import EmbeddedRedis  # noqa: E402
from quiet import ForeignCpu  # noqa: E402
from serving import KEY, closed_loop, metric, publish_recall_model, seed, start_server, train_and_publish  # noqa: E402
from serving_impressions import server_cpu_s  # noqa: E402

console = Console(width=160)
LOGGED = 'recsys_impressions_total{outcome="logged"}'
BARE = "bare FastAPI"


def cpu_per_request(pid: int, base: str, requests: int, log_impressions: bool) -> tuple[float, float]:
    """Server CPU ms per request over a closed loop; with logging on, until every shown item is
    logged (a checkout from before impression logging has nothing to wait for); and the loop's p50 latency."""
    before, logged_before = server_cpu_s(pid), metric(base, LOGGED)
    latency = closed_loop(base, requests, log_impressions)
    deadline = time.monotonic() + 60
    logs = log_impressions and "recsys_impressions_total" in httpx.get(f"{base}/metrics").text
    while logs and metric(base, LOGGED) - logged_before < requests * 10:
        if time.monotonic() > deadline:
            raise RuntimeError("the impression writer did not catch up within 60 s")
        time.sleep(0.05)
    return (server_cpu_s(pid) - before) / requests * 1000, latency["p50"]


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name (py-spy dump), numbered pool threads pooled
    (`recommend_0` -> `recommend`)."""
    dump = subprocess.run([str(Path(sys.executable).parent / "py-spy"), "dump", "--pid", str(pid), "--json"],
                          capture_output=True, text=True, check=True)
    return {thread["os_thread_id"]: re.sub(r"_\d+$", "", thread["thread_name"] or "?") for thread in json.loads(dump.stdout)}


def thread_cpu(pid: int, names: dict[int, str]) -> Counter[str]:
    """CPU seconds per thread name."""
    used: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended
            continue
        used[names.get(int(task.name), "other")] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def thread_breakdown(pid: int, base: str, requests: int) -> None:
    """Server CPU ms per request per thread, closed loop with logging on (writer caught up)."""
    names = thread_names(pid)
    before = thread_cpu(pid, names)
    cpu_per_request(pid, base, requests, True)
    after = thread_cpu(pid, names | thread_names(pid))
    used = {name: (after[name] - before.get(name, 0.0)) / requests * 1000 for name in after}
    table = Table(title=f"server CPU ms per request by thread (closed loop, {requests} requests, logging on)")
    table.add_column("thread")
    table.add_column("ms per request", justify="right")
    for name, ms in sorted(used.items(), key=lambda kv: -kv[1]):
        if ms > 0:
            table.add_row(name, f"{ms:.2f}")
    table.add_row("total", f"{sum(used.values()):.2f}")
    console.print(table)


def idle_cpu(pid: int, seconds: float) -> float:
    """Server CPU ms per second with no requests (its background threads)."""
    before = server_cpu_s(pid)
    time.sleep(seconds)
    return (server_cpu_s(pid) - before) / seconds * 1000


def profile(pid: int, base: str, requests: int, rate: int, output: Path) -> Path:
    """py-spy's raw (collapsed) stacks of the running threads of `pid` over a closed loop."""
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--threads",
                            "--nonblocking", "--output", str(output)], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    closed_loop(base, requests, True)
    time.sleep(0.5)  # the writer logs the last lists
    spy.send_signal(signal.SIGINT)
    spy.wait(30)
    return output


def din_call_cpu(registry: Path, version: str, calls: int) -> str:
    """CPU per call of the published DIN's `score_user` signature, 200 candidates and 50 history
    items: the calling thread's and TensorFlow's pool threads'. A fixed workload, comparable
    across days: the host's speed. Run in a fresh process whose environment limits TensorFlow to
    one thread, as the API's (`din_call_cpu_in_subprocess`)."""
    from models.ranking.export import load_exported
    from models.ranking.inference import as_request
    from models.registry import ModelRegistry

    saved_model, spec = load_exported(ModelRegistry(registry).get("ranker", version).path)
    score = saved_model.signatures["serving_default"]
    rng = np.random.default_rng(0)
    history, items = [f"i{i}" for i in rng.integers(1000, size=50)], [f"i{i}" for i in rng.integers(1000, size=200)]
    request = as_request({"user_id": "u", "hist_item_ids": history, "hist_categories": [f"c{int(i[1:]) % 20}" for i in history],
                          "item_id": items, "item_category": [f"c{int(i[1:]) % 20}" for i in items],
                          **{name: np.full(len(items), 5.0, np.float32) for name in spec.dense_features}})
    for _ in range(50):  # warm-up
        score(**request)
    caller, started = time.thread_time(), time.process_time()
    for _ in range(calls):
        score(**request)
    total, own = time.process_time() - started, time.thread_time() - caller
    return (f"DIN score_user, 200 candidates, 50 history items, {calls} calls: {total / calls * 1000:.2f} ms of CPU "
            f"per call ({own / calls * 1000:.2f} calling thread, {(total - own) / calls * 1000:.2f} TensorFlow's pool)")


def din_call_cpu_in_subprocess(registry: Path, version: str, calls: int) -> str:
    threads = {name: "1" for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")}
    os.environ.update(threads)  # read by the spawned interpreter's TensorFlow (this one's is running)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(din_call_cpu, (registry, version, calls))


def redis_calls(url: str, base: str, requests: int) -> None:
    """Redis commands per request (INFO commandstats over a closed loop, logging off), and the
    server-side time they took: a count that load does not inflate."""
    client = redis.Redis.from_url(url)
    client.config_resetstat()
    closed_loop(base, requests, False)
    stats = client.info("commandstats")
    table = Table(title=f"Redis commands per request (closed loop, {requests} requests, logging off)")
    for column in ("command", "calls per request", "Redis µs per request"):
        table.add_column(column, justify="right")
    for name, row in sorted(stats.items(), key=lambda kv: -kv[1]["calls"]):
        if name not in ("cmdstat_config", "cmdstat_info"):
            table.add_row(name.removeprefix("cmdstat_"), f"{row['calls'] / requests:.2f}", f"{row['usec'] / requests:.1f}")
    console.print(table)


def parse_stacks(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread, frames outermost first, samples) per line of py-spy's raw format."""
    rows = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        rows.append((frames[0], frames[1:], int(count)))
    return rows


def function_name(frame: str) -> str:
    """`name (module/file.py:line)` -> `name (module/file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def thread_kind(thread: str, frames: list[str]) -> str:
    text = ";".join(frames)
    if "recommend" in thread or "_recommend_within" in text or "pipeline.py" in text and "recommend (" in text:
        return "request worker (pipeline)"
    if "impressions.py" in text:
        return "impression writer"
    if "asyncio" in text or "uvicorn" in text or "uvloop" in text:
        return "event loop"
    return "other (background refresh, metrics, GC)"


def report_profile(rows: list[tuple[str, list[str], int]], requests: int, top: int) -> None:
    total = sum(count for _, _, count in rows)
    kinds: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for thread, frames, count in rows:
        kinds[thread_kind(thread, frames)] += count
        for name in {function_name(f) for f in frames}:
            inclusive[name] += count
        if frames:
            own[function_name(frames[-1])] += count
    console.print(f"profile: {total:,} samples of running threads over {requests} requests "
                  f"({total / requests:.1f} per request)")
    table = Table(title="samples per thread kind")
    table.add_column("thread")
    table.add_column("share", justify="right")
    for kind, count in kinds.most_common():
        table.add_row(kind, f"{count / total:.1%}")
    console.print(table)
    for title, counter in (("inclusive (function and what it calls)", inclusive), ("self", own)):
        table = Table(title=f"top {top} functions, {title}")
        table.add_column("function")
        table.add_column("share", justify="right")
        for name, count in counter.most_common(top):
            table.add_row(name, f"{count / total:.1%}")
        console.print(table)


def compare(servers: dict[str, tuple[int, str]], requests: int, repeats: int, idle_s: float) -> None:
    """Idle CPU, then CPU per request of every server, logging off and on, alternated `repeats` times."""
    for name, (pid, _) in servers.items():
        console.print(f"{name}: idle {idle_cpu(pid, idle_s):.1f} CPU-ms per second")
    cpu: dict[tuple[str, bool], list[float]] = {}
    p50: dict[tuple[str, bool], list[float]] = {}
    with ForeignCpu() as other:
        for _ in track(range(repeats), description="closed loops"):
            for logged in (False, True):
                for name, (pid, base) in servers.items():
                    used, latency = cpu_per_request(pid, base, requests, logged)
                    cpu.setdefault((name, logged), []).append(used)
                    p50.setdefault((name, logged), []).append(latency)
    table = Table(title=f"server CPU ms per request and closed-loop p50 ms, {requests} requests × {repeats} "
                        "(median [each])")
    for column in ("server", "CPU, logging off", "CPU, logging on", "p50, logging off", "p50, logging on"):
        table.add_column(column, justify="right")
    for name in servers:
        table.add_row(name, *(f"{np.median(values[(name, logged)]):.2f} [{', '.join(f'{v:.2f}' for v in values[(name, logged)])}]"
                              for values in (cpu, p50) for logged in (False, True)))
    console.print(table)
    pairs = [("this checkout", "baseline"), ("this checkout", BARE), ("baseline", BARE)]
    for (new, old) in pairs:
        if new in servers and old in servers:
            for logged in (False, True):
                ratios = [a / b for a, b in zip(cpu[(new, logged)], cpu[(old, logged)])]
                console.print(f"logging {'on' if logged else 'off'}: {new} / {old} = {np.median(ratios):.3f} "
                              f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)})")
    console.print(f"other processes used {other.core_seconds:.1f} CPU-s meanwhile (peak {other.peak:.0%} of a core, "
                  f"{other.busiest})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--baseline", type=Path, help="another checkout: its API is measured beside this one")
    parser.add_argument("--profile", action="store_true", help="py-spy profile of this checkout's API")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--stacks", type=Path, help="keep py-spy's raw stacks in this file")
    parser.add_argument("--din-calls", type=int, default=0, help="then time this many DIN calls in-process")
    args = parser.parse_args()
    console.print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        processes: list[subprocess.Popen[bytes]] = []
        redises: dict[str, EmbeddedRedis] = {}
        try:
            version = train_and_publish(work / "registry", work)
            publish_recall_model(work / "registry")
            env = {"RECSYS_REGISTRY_DIR": str(work / "registry"), "RECSYS_API__API_KEYS": json.dumps([KEY]),
                   "RECSYS_API__RECALL_CANDIDATES": "200", "RECSYS_API__INFERENCE_THREADS": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
            servers: dict[str, tuple[int, str]] = {}
            roots = {"this checkout": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
            for index, (name, root) in enumerate(roots.items()):
                # Each server its own Redis: checkouts far apart may lay out keys differently.
                redises[name] = EmbeddedRedis(work / f"redis{index}").start()
                process, base = start_server("services.api.app:create_app_from_env",
                                             {**env, "RECSYS_STATE_DIR": str(work / f"state{index}"),
                                              "RECSYS_REDIS__URL": redises[name].url}, root, 1, None, cwd=root)
                processes.append(process)
                servers[name] = (process.pid, base)
                seed(base)
                closed_loop(base, 300)  # warm-up: TensorFlow's traces, caches
                console.print(f"{name} ({root}) up with ranker {version}, seeded")
            body = work / "body.json"
            body.write_bytes(httpx.get(f"{servers['this checkout'][1]}/v1/users/user0/recommendations",
                                       params={"k": 10}, headers={"X-API-Key": KEY}).content)
            process, base = start_server("serving:bare_app", {"BENCH_BARE_BODY": str(body)}, ROOT / "benchmarks")
            processes.append(process)
            servers[BARE] = (process.pid, base)
            compare(servers, args.requests, args.repeats, args.idle_seconds)
            redis_calls(redises["this checkout"].url, servers["this checkout"][1], args.requests)
            thread_breakdown(*servers["this checkout"], args.requests)
            if args.profile:
                pid, base = servers["this checkout"]
                rows = parse_stacks(profile(pid, base, args.requests, args.rate, args.stacks or work / "stacks.txt"))
                report_profile(rows, args.requests, args.top)
            if args.din_calls:
                console.print(din_call_cpu_in_subprocess(work / "registry", version, args.din_calls))
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
            for server in redises.values():
                server.stop()


if __name__ == "__main__":
    main()
