"""Promotion and rollback under load: failed requests, latency during swaps against steady state,
and how long after a CURRENT change the last answer from the old version came.

Setup on loopback: an embedded Redis; two small DIN rankers trained here on planted synthetic
samples, both blessed, the first current; the API under `recsys serve --workers W` with
`api.model_poll_interval_s` = `--poll-s`; a crowd of clicks posted so recommendations are ranked.
Load: `--clients` closed-loop clients (each sends its next request when the last one answered).

Phases, in one run: `--steady-s` seconds without swaps (the peer), then `--swaps` changes of the
ranker's CURRENT every `--every-s` seconds, alternating `recsys models promote` of the second
version and `recsys models rollback` (the library calls behind them; workers learn of each change
by polling, as after a training run). Reported: errors; p50/p99 latency at steady state, in the
`--window-s` after each swap, and their ratio; per swap, the lag from the change to the last
answer still carrying the old version (every worker swapped by then).

    .venv/bin/python benchmarks/model_swap.py [--workers 2] [--clients 4] [--poll-s 1] [--swaps 6]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.redis_server import EmbeddedRedis, free_port  # noqa: E402
from models.registry import ModelRegistry  # noqa: E402
from serving import wait_ready  # noqa: E402
from tests.models.ranking.conftest import ITEMS, write_samples  # noqa: E402

KEY = "bench-key"


def _train(registry: ModelRegistry, work: Path, seed: int) -> str:
    from models.ranking.dataset import build_spec
    from models.ranking.din import DIN
    from models.ranking.export import build_manifest, export_ranker, publish_ranker
    from models.ranking.trainer import TrainConfig, Trainer

    samples = write_samples(work / f"samples-{seed}.parquet", rows=3000, seed=seed)
    spec = build_spec(samples, ("item_pop_7d", "user_event_count"), max_seq_len=20)
    model = DIN(spec, embedding_dim=8, attention_units=(16,), hidden_units=(32, 16))
    config = TrainConfig(epochs=1, batch_size=256, seed=seed)
    result = Trainer(model, config, show_progress=False).fit(samples)
    manifest = build_manifest(model, config, result, {"validation": result.validation})
    version = publish_ranker(registry, export_ranker(model, work / f"artifact-{seed}"), manifest, set_current=False)
    registry.bless("ranker", version, {"benchmark": "blessed by the setup"})
    return version


class Clients:
    """Closed-loop clients recording (send time, latency, status, ranker version)."""

    def __init__(self, base: str, count: int) -> None:
        self.base, self.records, self.stop = base, list[tuple[float, float, int, str]](), threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(n,)) for n in range(count)]

    def _run(self, number: int) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    response = client.get(f"/v1/users/user{number}/recommendations", params={"k": 10})
                    version = response.json().get("model_versions", {}).get("ranker", "none") if response.status_code == 200 else ""
                    status = response.status_code
                except httpx.HTTPError:
                    status, version = 0, ""
                self.records.append((sent, time.monotonic() - sent, status, version))

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def _serve(state: Path, redis_url: str, port: int, workers: int, poll_s: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECSYS_REDIS__URL": redis_url, "RECSYS_STATE_DIR": str(state),
           "RECSYS_API__MODEL_POLL_INTERVAL_S": str(poll_s), "RECSYS_API__API_KEYS": f'["{KEY}"]',
           "RECSYS_API__LOG_IMPRESSIONS": "false"}  # fmt: skip
    args = [sys.executable, "-c", "from services.cli import app; app()", "serve", "--port", str(port), "--workers", str(workers)]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(state / "api.log", "wb"))


def _quantiles(latencies: list[float]) -> tuple[float, float]:
    values = np.array(latencies) * 1000
    return (float(np.percentile(values, 50)), float(np.percentile(values, 99))) if len(values) else (float("nan"),) * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--every-s", type=float, default=8.0)
    parser.add_argument("--window-s", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recsys-swap-bench-") as folder:
        state = Path(folder)
        registry = ModelRegistry(state / "registry")
        print("training two rankers …", flush=True)
        v1, v2 = (_train(registry, state, seed) for seed in (1, 2))
        registry.promote("ranker", v1)
        redis = EmbeddedRedis(state / "redis")
        redis.start()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = _serve(state, redis.url, port, args.workers, args.poll_s)
        try:
            wait_ready(base, api)
            crowd = [{"event_id": f"c{n}", "user_id": f"crowd{n % 7}", "item_id": f"i{n % ITEMS}", "type": "click",
                      "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())} for n in range(200)]  # fmt: skip
            httpx.post(f"{base}/v1/events", json=crowd, headers={"X-API-Key": KEY}, timeout=30)
            clients = Clients(base, args.clients)
            clients.start()
            time.sleep(args.steady_s)  # the steady-state phase is measured, not waited on
            steady_end = time.monotonic()
            swaps: list[tuple[float, str, str]] = []
            for number in range(args.swaps):
                old, new = (v1, v2) if number % 2 == 0 else (v2, v1)
                if new == v2:
                    registry.bless("ranker", v2, {"benchmark": "blessed again after its rollback"})
                    at = time.monotonic()
                    registry.promote("ranker", v2)
                else:
                    at = time.monotonic()
                    registry.rollback("ranker")
                swaps.append((at, old, new))
                print(f"swap {number + 1}: {old[-6:]} → {new[-6:]}", flush=True)
                time.sleep(args.every_s)
            clients.close()
        finally:
            api.terminate()
            api.wait(60)
            redis.stop()
    _report(clients.records, steady_end, swaps, args)


def _report(records: list[tuple[float, float, int, str]], steady_end: float, swaps: list[tuple[float, str, str]],
            args: argparse.Namespace) -> None:  # fmt: skip
    errors = [r for r in records if r[2] != 200]
    steady = [r[1] for r in records if r[0] < steady_end]
    in_swap = [r[1] for r in records if any(at <= r[0] < at + args.window_s for at, _, _ in swaps)]
    (s50, s99), (w50, w99) = _quantiles(steady), _quantiles(in_swap)
    print(f"\nrequests {len(records):,}, errors {len(errors)} (workers {args.workers}, clients {args.clients}, poll {args.poll_s} s)")
    print(f"steady state (peer): {len(steady):,} requests, p50 {s50:.1f} ms, p99 {s99:.1f} ms")
    print(f"within {args.window_s} s after a swap: {len(in_swap):,} requests, p50 {w50:.1f} ms, p99 {w99:.1f} ms")
    print(f"ratio swap/steady: p50 {w50 / s50:.2f}x, p99 {w99 / s99:.2f}x")
    for number, (at, old, new) in enumerate(swaps, start=1):
        end = swaps[number][0] if number < len(swaps) else float("inf")
        after = [r for r in records if at <= r[0] < end and r[2] == 200]
        last_old = max((r[0] + r[1] for r in after if r[3] == old), default=at)
        first_new = min((r[0] + r[1] for r in after if r[3] == new), default=float("nan"))
        print(f"swap {number} ({'promote' if new != swaps[0][1] else 'rollback'}): first new answer after "
              f"{first_new - at:.2f} s, last old answer after {last_old - at:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
