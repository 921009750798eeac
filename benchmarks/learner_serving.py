"""Online learner serving cost: interleaved W/W̃/base requests beside plain requests, and revision propagation.

Setup as `benchmarks/serving.py` (its helpers): an embedded Redis, a DIN trained here (tower
(200, 80): an 80-dim penultimate layer) and an Item2vec recall model published to a registry, the
API under `recsys serve`'s launcher with `--workers` processes, a 1,000-item catalog and 300 users
with 50-item histories. `learner.share` is 0.5 and one online revision (the base's own layer as `w`,
`w̃ = w + 0.1 · U(−1, 1) ⊙ w` as DBGD draws it) is published, so users in the share get the
interleaved list (one DIN call for the penultimate features, three dot products, probabilistic
interleaving) and the others the plain list.

Cost, the peer in the same run: open loop at each `--rates` (total rate), requests alternating
between a user in the share and one outside, so both kinds meet the same server load; latency from
each request's scheduled send time (no coordinated omission). `--repeats` runs per rate; the p99 of
each kind per run, their difference (interleaved − plain) and ratio, mean with a 95% t-interval over
the runs. Other processes' CPU during each run is reported (the machine is shared).

Closed loop first: `--closed-loop` requests one at a time, in alternating blocks of 50 plain and 50
interleaved requests: each kind's latency, and the server's CPU time per request per block with the
paired difference of the blocks (mean, 95% t-interval): the added cost without queueing, which a
saturated shared machine hides in the open-loop runs.

Propagation: `--revisions` revisions published one after another; for each, the time until every
worker's `/v1/admin/learner` reports it (polled on fresh connections every 50 ms; with one worker
per connection the time includes the polling granularity).

    .venv/bin/python benchmarks/learner_serving.py --rates 50 100 200 --seconds 10 --repeats 3 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.redis_server import EmbeddedRedis  # noqa: E402
from http_load import open_loop  # noqa: E402
from quiet import ForeignCpu  # noqa: E402
from serving_impressions import server_cpu_s  # noqa: E402
from serving import (  # noqa: E402
    KEY, REQUEST_DEADLINE_S, USERS, add_cpu_arguments, console, drain, load_generator, pin, publish_recall_model, seed,
    start_server, train_and_publish,
)

SHARE = 0.5


def split_users() -> tuple[list[str], list[str]]:
    """Users in the learning share and outside it (the service's own sticky hash)."""
    from services.learner.serving import in_learning_share

    users = [f"user{n}" for n in range(USERS)]
    return [u for u in users if in_learning_share(u, SHARE)], [u for u in users if not in_learning_share(u, SHARE)]


def mixed_run(base: str, rate: int, seconds: float, learners: list[str], plain: list[str]) -> dict[str, list[float]]:
    """Generator process: alternating requests (even: plain user, odd: learner user); latencies per kind."""
    def path(index: int) -> str:
        users = plain if index % 2 == 0 else learners
        return f"/v1/users/{users[(index // 2) % len(users)]}/recommendations?k=10"

    url = httpx.URL(base)
    result = asyncio.run(open_loop(url.host, url.port, path, rate, seconds, REQUEST_DEADLINE_S))
    return {"plain": result.latencies_ms[0::2].tolist(), "interleaved": result.latencies_ms[1::2].tolist(),
            "errors": [float(result.errors)], "lag_p99": [float(np.percentile(result.lags_ms, 99))]}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan with one value)."""
    array = np.asarray(values)
    if len(array) < 2:
        return float(array.mean()), float("nan")
    return float(array.mean()), float(stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / np.sqrt(len(array)))


def cost(generator: concurrent.futures.Executor, base: str, rates: list[int], seconds: float, repeats: int,
         learners: list[str], plain: list[str], label: str = "interleaved") -> None:
    """Open loop at each rate, `repeats` runs: p99 of plain requests and of the others (`label`:
    what they do on top) alternated in each run, their difference and ratio with a 95% t-interval."""
    for rate in rates:
        generator.submit(mixed_run, base, rate, 1.0, learners, plain).result()  # warm-up
        drain(base)
        differences, ratios = [], []
        for run in range(repeats):
            with ForeignCpu() as other:
                result = generator.submit(mixed_run, base, rate, seconds, learners, plain).result()
            drain(base)
            p99 = {kind: float(np.percentile(result[kind], 99)) for kind in ("plain", "interleaved")}
            p50 = {kind: float(np.percentile(result[kind], 50)) for kind in ("plain", "interleaved")}
            differences.append(p99["interleaved"] - p99["plain"])
            ratios.append(p99["interleaved"] / p99["plain"])
            console.print(f"{rate} rps run {run + 1}: p50 plain {p50['plain']:.1f} ms, {label} "
                          f"{p50['interleaved']:.1f} ms; p99 plain {p99['plain']:.1f} ms, {label} "
                          f"{p99['interleaved']:.1f} ms; errors {result['errors'][0]:.0f}, generator lag p99 "
                          f"{result['lag_p99'][0]:.1f} ms, other processes {other.core_seconds:.1f} CPU-s "
                          f"(peak {other.peak:.0%} of a core, {other.busiest})")
        difference, ratio = mean_ci(differences), mean_ci(ratios)
        console.print(f"[bold]{rate} rps: p99 {label} − plain {difference[0]:+.2f} ± {difference[1]:.2f} ms, "
                      f"ratio {ratio[0]:.3f} ± {ratio[1]:.3f} (mean ± 95% CI over {repeats} runs)[/]")


def closed_loop_cost(base: str, pid: int, requests: int, learners: list[str], plain: list[str], block: int = 50,
                     label: str = "interleaved") -> None:
    """One request at a time, in alternating blocks of `block` plain and `block` interleaved
    requests: each kind's latency, and the server's CPU per request of each block (its processes'
    user + system time, less sensitive to other processes than latency); the paired difference of
    the blocks (interleaved − the plain block before it), mean with a 95% t-interval."""
    times: dict[str, list[float]] = {"plain": [], "interleaved": []}
    cpu: dict[str, list[float]] = {"plain": [], "interleaved": []}
    with httpx.Client(base_url=base, timeout=10) as client:
        for index in range(requests // block):
            kind, users = ("plain", plain) if index % 2 == 0 else ("interleaved", learners)
            cpu_started = server_cpu_s(pid)
            for n in range(block):
                started = time.perf_counter()
                user = users[(index // 2 * block + n) % len(users)]
                client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).raise_for_status()
                times[kind].append((time.perf_counter() - started) * 1000)
            cpu[kind].append((server_cpu_s(pid) - cpu_started) / block * 1000)
    pairs = len(cpu["interleaved"])
    difference = mean_ci(list(np.asarray(cpu["interleaved"]) - np.asarray(cpu["plain"][:pairs])))
    console.print(f"[bold]closed loop, {requests} requests: latency p50 plain {np.percentile(times['plain'], 50):.2f} ms, "
                  f"{label} {np.percentile(times['interleaved'], 50):.2f} ms, p99 plain "
                  f"{np.percentile(times['plain'], 99):.2f} ms, {label} {np.percentile(times['interleaved'], 99):.2f} ms; "
                  f"server CPU per request plain {np.mean(cpu['plain']):.2f} ms, {label} "
                  f"{np.mean(cpu['interleaved']):.2f} ms, difference {difference[0]:+.2f} ± {difference[1]:.2f} ms "
                  f"(95% CI over {pairs} block pairs of {block})[/]")


def propagation(base: str, store: Any, version: str, head: np.ndarray, revisions: int, workers: int) -> None:
    rng = np.random.default_rng(0)
    times = []
    for _ in range(revisions):
        w = head[:-1]
        revision = store.publish(version, w, w + 0.1 * rng.uniform(-1, 1, w.shape) * w, None, "benchmark")
        started, seen = time.perf_counter(), set()
        while len(seen) < workers:
            status = httpx.get(f"{base}/v1/admin/learner", headers={"X-API-Key": KEY}, timeout=10).json()
            if status["revision"] == revision.id:
                seen.add(status["worker"])
            elif time.perf_counter() - started > 60:
                raise RuntimeError(f"revision {revision.id} not on every worker after 60 s")
            time.sleep(0.05)
        times.append(time.perf_counter() - started)
    console.print(f"[bold]propagation to all {workers} workers over {revisions} revisions: median "
                  f"{np.median(times):.2f} s, max {max(times):.2f} s (learner.poll_interval_s 1)[/]")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--revisions", type=int, default=10)
    parser.add_argument("--closed-loop", type=int, default=1000, help="requests of the closed-loop comparison")
    add_cpu_arguments(parser)
    args = parser.parse_args()
    generator, server_cpus = load_generator(args)
    with tempfile.TemporaryDirectory() as tmp, generator:
        work = Path(tmp)
        pin(set(args.client_cpus) or None)
        redis_server = EmbeddedRedis(work / "redis").start()
        api = None
        try:
            import redis

            from models.online_revisions import RevisionStore
            from models.registry import ModelRegistry
            from services.learner.process import exported_head

            version = train_and_publish(work / "registry", work)
            publish_recall_model(work / "registry")
            env = {"RECSYS_STATE_DIR": str(work / "state"), "RECSYS_REDIS__URL": redis_server.url,
                   "RECSYS_REGISTRY_DIR": str(work / "registry"), "RECSYS_API__API_KEYS": json.dumps([KEY]),
                   "RECSYS_API__RECALL_CANDIDATES": "200", "RECSYS_API__INFERENCE_THREADS": "1",
                   "RECSYS_LEARNER__SHARE": str(SHARE), "RECSYS_LEARNER__POLL_INTERVAL_S": "1",
                   "TF_CPP_MIN_LOG_LEVEL": "2"}
            api, base = start_server("services.api.app:create_app_from_env", env, ROOT, args.workers, server_cpus)
            seed(base)
            store = RevisionStore(redis.Redis.from_url(redis_server.url), "recsys")
            head = exported_head(ModelRegistry(work / "registry"))(version)
            propagation(base, store, version, head, args.revisions, args.workers)
            learners, plain = split_users()
            sample = httpx.get(f"{base}/v1/users/{learners[0]}/recommendations", params={"k": 10}).json()
            assert sample["explore"].startswith("learner:"), sample
            assert httpx.get(f"{base}/v1/users/{plain[0]}/recommendations").json()["explore"] == "greedy"
            console.print(f"{len(learners)} of {USERS} users in the learning share; API workers {args.workers}")
            drain(base)
            closed_loop_cost(base, api.pid, args.closed_loop, learners, plain)
            cost(generator, base, args.rates, args.seconds, args.repeats, learners, plain)
        finally:
            if api is not None:
                api.terminate()
                api.wait(10)
            redis_server.stop()


if __name__ == "__main__":
    main()
