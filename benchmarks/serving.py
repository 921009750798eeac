"""Serving latency: the recommendations endpoint (DIN over ~200 candidates) vs a bare FastAPI floor.

Setup, all on loopback: an embedded Redis; a small DIN trained here on planted synthetic samples
(sequence length 50) and published to a registry, with an Item2vec recall model; the API under
`recsys serve`'s launcher (uvicorn, `--workers` processes, each on its own SO_REUSEPORT socket) with
a 1,000-item catalog and 300 users with 50-item live histories posted through `/v1/events`. The
peer, in the same run: a bare FastAPI endpoint under the same launcher and settings
returning a fixed JSON body of the same size as a real recommendation response (the framework floor).

Load: open loop at fixed request rates, each bounded by `--seconds` and `rate × seconds` requests;
latency is measured from each request's *scheduled* send time (no coordinated omission). The load
generator runs in its own process pinned to `--client-cpus` (with Redis), the servers to
`--server-cpus`, so the generator does not starve the server; its own lag (actual minus scheduled
send time) is reported, and a rate where its p99 lag exceeds 5 ms is flagged as not delivered. Also reports
the closed-loop service time (one request at a time) of both, then p50/p95/p99 and error rate per
rate (a request slower than 2 s counts as an error), and per-stage server timings (features, recall, rank) from the
responses' `timings_ms`. The CPU other processes used during each measured rate is reported too
(`benchmarks/quiet.py`), and a rate where they used more than 0.5 CPU-s is flagged as not quiet.

The API logs every served list as impressions (its default). `--impressions` compares, instead of
API vs floor, the same API with logging off (`?log_impressions=false`, the peer) and on, alternated
`--repeats` times per rate, after measuring the server's CPU per request both ways in a closed loop
(with logging on, until the writers have logged every shown item); `--lossless-seconds S` then runs S seconds at `--lossless-rate` with
logging on, stops the API (which drains its impression queues) and checks that the event log holds
one impression per item shown in every answered response, by request id (`serving_impressions.py`).

    .venv/bin/python benchmarks/serving.py [--rates 50 100 200 400] [--seconds 10] [--server-cpus 0 --client-cpus 1]
    .venv/bin/python benchmarks/serving.py --impressions --rates 100 200 --repeats 3 --lossless-seconds 60
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.redis_server import EmbeddedRedis, free_port  # noqa: E402
from http_load import run_open_loop  # noqa: E402
from quiet import ForeignCpu  # noqa: E402
from serving_impressions import (  # noqa: E402
    logged_per_request, logging_cpu_summary, lossless_summary, report_logging, server_cpu_s,
)

console = Console(width=160)
ITEMS, CATEGORIES, USERS, HISTORY = 1000, 20, 300, 50
KEY = "bench-key"
REQUEST_DEADLINE_S = 2.0  # a request slower than this counts as an error
GENERATOR_LAG_LIMIT_MS = 5.0  # generator p99 send lag above this: the rate was not delivered
FOREIGN_CPU_LIMIT_S = 0.5  # CPU time other processes may use during one measured rate


def category_of(item: int) -> str:
    return f"c{item % CATEGORIES}"


# -- the model ------------------------------------------------------------------------------------


def write_samples(path: Path, rows: int, seed: int = 3) -> Path:
    """Planted rule: a click is likely when the candidate's category is in the user's history."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.ranking import samples

    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    table: dict[str, list[Any]] = {f.name: [] for f in samples.sample_schema(("item_pop_7d",))}
    for row in range(rows):
        interests = rng.choice(CATEGORIES, size=2, replace=False)
        history = [int(rng.integers(ITEMS // CATEGORIES)) * CATEGORIES + int(rng.choice(interests))
                   for _ in range(int(rng.integers(5, HISTORY + 1)))]
        candidate = int(rng.integers(ITEMS))
        label = int(rng.random() < (0.8 if category_of(candidate) in {category_of(i) for i in history} else 0.1))
        fraction = row / rows
        for name, value in (
            (samples.USER_ID, f"u{row % 5000}"), (samples.ITEM_ID, f"i{candidate}"),
            (samples.TS, start + timedelta(seconds=row)), (samples.LABEL, label),
            (samples.LABEL_SOURCE, "click"),
            (samples.SPLIT, "train" if fraction < 0.8 else "validation" if fraction < 0.9 else "test"),
            (samples.HIST_ITEM_IDS, [f"i{i}" for i in history]),
            (samples.HIST_CATEGORIES, [category_of(i) for i in history]),
            (samples.ITEM_CATEGORY, category_of(candidate)), ("item_pop_7d", float(rng.normal(5, 2))),
        ):
            table[name].append(value)
    pq.write_table(pa.Table.from_pydict(table, schema=samples.sample_schema(("item_pop_7d",))), path)
    return path


def publish_recall_model(registry_root: Path, seed: int = 5) -> str:
    """Item2vec over histories like the seeded users' (two interest categories each), served as the
    registry's recall channels (neighbours of recent items and the user vector, faiss index)."""
    from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
    from models.evaluation.baselines import PopularityRecommender
    from models.registry import ModelRegistry
    from models.retrieval.artifact import RecallArtifact, publish_recall

    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(3000):
        interests = rng.choice(CATEGORIES, size=2, replace=False)
        sequences.append([f"i{int(rng.integers(ITEMS // CATEGORIES)) * CATEGORIES + int(rng.choice(interests))}"
                          for _ in range(HISTORY)])
    embeddings = SkipGramTrainer(SkipGramConfig(dim=32, epochs=2)).fit(sequences)
    artifact = RecallArtifact.build({"item2vec": embeddings}, PopularityRecommender(sequences))
    manifest = {"params": {"dim": 32, "epochs": 2}, "data_window": {"sequences": len(sequences)}, "metrics": {}}
    return publish_recall(ModelRegistry(registry_root), artifact, manifest)


def train_and_publish(registry_root: Path, work: Path) -> str:
    from models.ranking.dataset import build_spec
    from models.ranking.din import DIN
    from models.ranking.export import build_manifest, export_ranker, publish_ranker
    from models.ranking.trainer import TrainConfig, Trainer
    from models.registry import ModelRegistry

    path = write_samples(work / "samples.parquet", rows=20_000)
    spec = build_spec(path, ("item_pop_7d",), max_seq_len=HISTORY)
    model = DIN(spec, embedding_dim=16, attention_units=(36,), hidden_units=(200, 80), learning_rate=5e-3)
    config = TrainConfig(epochs=2, batch_size=256, shuffle_buffer=20_000)
    result = Trainer(model, config, show_progress=False).fit(path)
    artifact = export_ranker(model, work / "artifact")
    manifest = build_manifest(model, config, result, {"validation": result.validation})
    console.print(f"DIN trained: validation AUC {result.validation['auc']:.3f}")
    return publish_ranker(ModelRegistry(registry_root), artifact, manifest)


# -- servers --------------------------------------------------------------------------------------


def bare_app() -> Any:
    """The floor: FastAPI returning a fixed JSON body (the bytes of a real recommendation response)."""
    from fastapi import FastAPI, Response

    body = Path(os.environ["BENCH_BARE_BODY"]).read_bytes()
    app = FastAPI()

    @app.get("/v1/users/{user_id}/recommendations")
    def recommendations(user_id: str, k: int = 10) -> Response:
        return Response(body, media_type="application/json")

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def pin(cpus: set[int] | None) -> None:
    """Restrict the calling process (and what it starts later) to `cpus`."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def add_cpu_arguments(parser: argparse.ArgumentParser) -> None:
    """`--server-cpus` and `--client-cpus`: the servers apart from the load generator and Redis."""
    cpus = sorted(os.sched_getaffinity(0))
    parser.add_argument("--server-cpus", type=int, nargs="*", default=cpus[:-1] if len(cpus) > 1 else [],
                        help="CPUs of the API and floor servers (default: all but the last; none: no pinning)")
    parser.add_argument("--client-cpus", type=int, nargs="*", default=cpus[-1:] if len(cpus) > 1 else [],
                        help="CPUs of the load generator and Redis (default: the last)")


def load_generator(args: argparse.Namespace) -> tuple[concurrent.futures.ProcessPoolExecutor, set[int] | None]:
    """The load generator's process pinned to `--client-cpus` (printed with the split and the load
    average), and the servers' CPUs (None: no pinning); call `pin(client_cpus)` in the body."""
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus, client_cpus = set(args.server_cpus) or None, set(args.client_cpus) or None
    console.print(f"CPUs: servers {sorted(server_cpus or cpus)}, generator and Redis {sorted(client_cpus or cpus)}; "
                  f"load average {os.getloadavg()[0]:.1f}")
    generator = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("spawn"), initializer=pin, initargs=(client_cpus,)
    )
    return generator, server_cpus


def start_server(
    factory: str, env: dict[str, str], app_dir: Path, workers: int = 1, cpus: set[int] | None = None,
    cwd: Path = ROOT,
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # `recsys serve`'s launcher: uvicorn, one SO_REUSEPORT socket per worker, no access log.
    command = [sys.executable, "-m", "services.api.server", factory, "--factory", "--app-dir", str(app_dir),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--workers", str(workers)]
    process = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd, preexec_fn=lambda: pin(cpus))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, timeout_s=120)
    except RuntimeError:
        process.kill()
        raise
    return process, base


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    """Until the API at `base` answers `/readyz`; RuntimeError if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API at {base} did not become ready in {timeout_s:.0f} s")


def seed(base: str) -> None:
    """Catalog, crowd popularity over every item, and 50-item live histories for USERS users."""
    now = datetime.now(timezone.utc)
    headers = {"X-API-Key": KEY}
    with httpx.Client(base_url=base, timeout=30, headers=headers) as client:
        for item in range(ITEMS):
            client.put(f"/v1/items/i{item}", json={"title": f"Film {item}", "categories": [category_of(item)]})
        rng = np.random.default_rng(0)
        events = [{"event_id": f"crowd-{n}", "user_id": f"crowd{n % 50}", "item_id": f"i{int(rng.zipf(1.3)) % ITEMS}",
                   "type": "click", "ts": now.isoformat()} for n in range(20_000)]
        for user in range(USERS):
            interests = rng.choice(CATEGORIES, size=2, replace=False)
            for n in range(HISTORY):
                item = int(rng.integers(ITEMS // CATEGORIES)) * CATEGORIES + int(rng.choice(interests))
                events.append({"event_id": f"h-{user}-{n}", "user_id": f"user{user}", "item_id": f"i{item}",
                               "type": "click", "ts": (now - timedelta(seconds=HISTORY - n)).isoformat()})
        for start in range(0, len(events), 1000):
            response = client.post("/v1/events", json=events[start:start + 1000])
            response.raise_for_status()


# -- load -----------------------------------------------------------------------------------------


def recommendations_path(index: int) -> str:
    return f"/v1/users/user{index % USERS}/recommendations?k=10"


def unlogged_recommendations_path(index: int) -> str:
    return f"{recommendations_path(index)}&log_impressions=false"


def open_loop_in_process(base: str, rate: int, seconds: float, log_impressions: bool = True) -> dict[str, Any]:
    """Entry point of the generator process."""
    url = httpx.URL(base)
    path = recommendations_path if log_impressions else unlogged_recommendations_path
    return run_open_loop(url.host, url.port, path, rate, seconds, REQUEST_DEADLINE_S, collect_stages=True)


def drain(base: str, timeout_s: float = 120.0) -> None:
    """Wait until an overloaded server has worked off its backlog (requests the client gave up on
    still run server-side), so it does not steal CPU from the next measurement."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=base, timeout=timeout_s) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get("/healthz")
            if time.perf_counter() - started < 0.02:
                return
            time.sleep(0.5)


def closed_loop(base: str, requests: int, log_impressions: bool = True) -> dict[str, float]:
    """One request at a time on one connection: the service time without queueing."""
    latencies = []
    params = {"k": 10} if log_impressions else {"k": 10, "log_impressions": "false"}
    with httpx.Client(base_url=base, timeout=10) as client:
        for index in range(requests):
            started = time.perf_counter()
            client.get(f"/v1/users/user{index % USERS}/recommendations", params=params).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
    return {"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def candidates_per_request(base: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    requests = sum(v for k, v in values.items() if k.startswith("recsys_stage_seconds_count") and 'stage="rank"' in k)
    return values.get("recsys_recalled_candidates_total", 0.0) / max(requests, 1.0)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the API (and of the floor)")
    parser.add_argument("--threads", type=int, default=1, help="settings.api.inference_threads (TensorFlow and faiss)")
    add_cpu_arguments(parser)
    parser.add_argument("--impressions", action="store_true",
                        help="instead of API vs floor: the API with impression logging on vs off, same server")
    parser.add_argument("--repeats", type=int, default=1, help="--impressions: off/on pairs per rate")
    parser.add_argument("--lossless-seconds", type=float, default=0.0,
                        help="then a run this long with logging on, checking every shown item was logged (0: none)")
    parser.add_argument("--lossless-rate", type=int, default=200)
    args = parser.parse_args()
    generator, server_cpus = load_generator(args)
    with tempfile.TemporaryDirectory() as tmp, generator:
        work = Path(tmp)
        pin(set(args.client_cpus) or None)  # this process only seeds and waits; Redis inherits the generator's CPUs
        redis = EmbeddedRedis(work / "redis").start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            version = train_and_publish(work / "registry", work)
            recall_version = publish_recall_model(work / "registry")
            env = {"RECSYS_STATE_DIR": str(work / "state"), "RECSYS_REDIS__URL": redis.url,
                   "RECSYS_REGISTRY_DIR": str(work / "registry"), "RECSYS_API__API_KEYS": json.dumps([KEY]),
                   "RECSYS_API__RECALL_CANDIDATES": "200", "RECSYS_API__INFERENCE_THREADS": str(args.threads),
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
            api, api_base = start_server("services.api.app:create_app_from_env", env, ROOT, args.workers, server_cpus)
            processes.append(api)
            console.print(f"API up with ranker {version} and recall {recall_version}; seeding …")
            seed(api_base)
            sample = httpx.get(f"{api_base}/v1/users/user0/recommendations", params={"k": 10})
            assert sample.json()["model_versions"].get("ranker") == version, sample.text
            (work / "body.json").write_bytes(sample.content)
            bare, bare_base = start_server("serving:bare_app", {"BENCH_BARE_BODY": str(work / "body.json")},
                                           ROOT / "benchmarks", args.workers, server_cpus)
            processes.append(bare)
            service = {name: closed_loop(base, 300) for name, base in (("api", api_base), ("bare", bare_base))}
            console.print(f"closed loop (one request at a time, 300 requests): api p50 {service['api']['p50']:.2f} ms "
                          f"p99 {service['api']['p99']:.2f} ms; bare p50 {service['bare']['p50']:.2f} ms "
                          f"p99 {service['bare']['p99']:.2f} ms; api/bare p50 "
                          f"{service['api']['p50'] / service['bare']['p50']:.1f}x")
            if args.impressions:
                cpu = logging_cpu(api, api_base, 500, args.repeats)
                console.print(logging_cpu_summary(cpu, 500))
                runs = measure_logging(generator, api_base, args.rates, args.seconds, args.repeats)
                console.print(f"API workers {args.workers}, TensorFlow/faiss threads per worker {args.threads}")
                console.print(report_logging(runs, args.rates))
            else:
                results = {(name, rate): measure(generator, name, base, rate, args.seconds)
                           for rate in args.rates for name, base in (("bare", bare_base), ("api", api_base))}
                console.print(f"API workers {args.workers}, TensorFlow/faiss threads per worker {args.threads}")
                report(results, args.rates, candidates_per_request(api_base), len(sample.content))
            if args.lossless_seconds:
                check_lossless(generator, api, api_base, work / "state" / "events", args.lossless_rate,
                               args.lossless_seconds)
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
            redis.stop()


def measure(
    generator: concurrent.futures.Executor, name: str, base: str, rate: int, seconds: float,
    log_impressions: bool = True,
) -> dict[str, Any]:
    """One measured rate after a 1 s warm-up, with the CPU other processes used meanwhile."""
    generator.submit(open_loop_in_process, base, rate, 1.0, log_impressions).result()  # warm-up
    drain(base)
    with ForeignCpu() as other:
        result = generator.submit(open_loop_in_process, base, rate, seconds, log_impressions).result()
    result["other_cpu_s"] = other.core_seconds
    drain(base)
    if other.core_seconds > FOREIGN_CPU_LIMIT_S:
        console.print(f"[red]{name} @ {rate} rps: other processes used {other.core_seconds:.1f} "
                      f"CPU-s (up to {other.peak:.0%} of a core, {other.busiest}): not a quiet run[/]")
    behind = result["generator_lag_p99"] > GENERATOR_LAG_LIMIT_MS
    console.print(f"{name} @ {rate} rps: p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, "
                  f"errors {result['errors']}/{result['requests']}, generator lag p99 "
                  f"{result['generator_lag_p99']:.1f} ms{' (GENERATOR FELL BEHIND)' if behind else ''}, "
                  f"generator CPU {result['generator_cpu_per_request_ms']:.2f} ms/request")
    return result


def measure_logging(
    generator: concurrent.futures.Executor, base: str, rates: list[int], seconds: float, repeats: int
) -> dict[tuple[bool, int], list[dict[str, Any]]]:
    """The API with impression logging off (`?log_impressions=false`, the peer) and on, alternated
    `repeats` times per rate on the same server."""
    results: dict[tuple[bool, int], list[dict[str, Any]]] = {}
    for rate in rates:
        for _ in range(repeats):
            for logged in (False, True):
                name = f"impressions {'on' if logged else 'off'}"
                results.setdefault((logged, rate), []).append(measure(generator, name, base, rate, seconds, logged))
    return results


def logging_cpu(api: subprocess.Popen[bytes], base: str, requests: int, repeats: int) -> dict[bool, list[float]]:
    """Server CPU (all processes of the API) per request in a closed loop, logging off and on,
    alternated; with logging on, until the writers have logged every shown item."""
    logged_metric = 'recsys_impressions_total{outcome="logged"}'
    cpu: dict[bool, list[float]] = {}
    for _ in range(repeats):
        for logged in (False, True):
            before, logged_before = server_cpu_s(api.pid), metric(base, logged_metric)
            closed_loop(base, requests, logged)
            deadline = time.monotonic() + 60
            while logged and metric(base, logged_metric) - logged_before < requests * 10:
                if time.monotonic() > deadline:
                    raise RuntimeError("the impression writers did not catch up within 60 s")
                time.sleep(0.05)
            cpu.setdefault(logged, []).append((server_cpu_s(api.pid) - before) / requests * 1000)
    return cpu


def check_lossless(
    generator: concurrent.futures.Executor, api: subprocess.Popen[bytes], base: str, log_root: Path, rate: int,
    seconds: float,
) -> None:
    """`seconds` at `rate` with logging on; then the API stops (draining its queues) and every
    shown item must be in the event log as an impression of its request."""
    started = datetime.now(timezone.utc)
    console.print(f"lossless run: {rate} rps for {seconds:.0f} s with impression logging on …")
    logged_metric = 'recsys_impressions_total{outcome="logged"}'
    logged_before = metric(base, logged_metric)
    with ForeignCpu() as other:
        result = generator.submit(open_loop_in_process, base, rate, seconds).result()
    result["other_cpu_s"] = other.core_seconds
    result["backlog"] = sum(result["served"].values()) - (metric(base, logged_metric) - logged_before)
    result["dropped"] = metric(base, 'recsys_impressions_total{outcome="dropped"}')
    api.terminate()  # the workers drain their queues for up to api.impression_drain_timeout_s
    api.wait(60)
    console.print(lossless_summary(result, logged_per_request(log_root, started, result["served"])))


def metric(base: str, name: str) -> float:
    """One sample of the API's /metrics (0 when absent)."""
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def report(results: dict[tuple[str, int], dict[str, Any]], rates: list[int], candidates: float, body_bytes: int) -> None:
    table = Table(title=f"GET /v1/users/{{id}}/recommendations, DIN over {candidates:.0f} candidates "
                        f"(seq 50), k=10, {body_bytes} B body; bare FastAPI floor, same body")
    for column in ("rate", "api p50", "api p95", "api p99", "api err", "bare p50", "bare p99", "bare err",
                   "p99 api/bare", "achieved rps", "gen lag p99", "other CPU-s"):
        table.add_column(column, justify="right")
    for rate in rates:
        api, bare = results[("api", rate)], results[("bare", rate)]
        table.add_row(
            str(rate), f"{api['p50']:.1f}", f"{api['p95']:.1f}", f"{api['p99']:.1f}",
            f"{api['errors'] / api['requests']:.2%}", f"{bare['p50']:.1f}", f"{bare['p99']:.1f}",
            f"{bare['errors'] / bare['requests']:.2%}", f"{api['p99'] / bare['p99']:.1f}×",
            f"{api['achieved_rps']:.0f}", f"{api['generator_lag_p99']:.1f}", f"{api['other_cpu_s']:.1f}",
        )
    console.print(table)
    stages = Table(title="server-side stage timings (ms, p50 / p99) from the responses")
    stages.add_column("rate", justify="right")
    names = sorted(results[("api", rates[0])]["stages"])
    for name in names:
        stages.add_column(name, justify="right")
    for rate in rates:
        row = results[("api", rate)]["stages"]
        stages.add_row(str(rate), *(f"{row[n][0]:.2f} / {row[n][1]:.2f}" for n in names))
    console.print(stages)


if __name__ == "__main__":
    main()
