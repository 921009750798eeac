"""A small open-loop HTTP/1.1 load generator: raw asyncio streams over keep-alive connections.

An httpx client spends about a millisecond of Python per request; on a 2-core machine that CPU
comes out of the server's share and the generator falls behind before the server does. Here a
request is one pre-built byte string and a response is read by its Content-Length, so a few
hundred requests per second cost the generator a small fraction of a core.

Connections are opened before the clock starts (`connections`, like a load balancer's keep-alive
pool) and reused least-recently-used first, so requests spread over all of them, and so over all
server workers that accepted them; more are opened when all are busy.

Latency is measured from each request's *scheduled* send time (no coordinated omission); the
generator's own lag (actual minus scheduled send time) is reported so a rate it could not deliver
is visible. A request that fails, or takes longer than `deadline_s`, is an error; its connection is
closed (its state is unknown) and later requests open new ones.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int
    elapsed_s: float
    latencies_ms: np.ndarray
    lags_ms: np.ndarray
    stages_ms: dict[str, list[float]] = field(default_factory=dict)  # `timings_ms` of JSON bodies
    served: dict[str, int] = field(default_factory=dict)  # `request_id` → number of `items`, of JSON bodies
    cpu_s: float = 0.0  # the generator process's CPU time during the run

    def summary(self) -> dict[str, object]:
        def q(values: np.ndarray, p: float) -> float:
            return float(np.percentile(values, p)) if len(values) else float("nan")

        return {
            "requests": self.requests, "errors": self.errors, "achieved_rps": self.requests / self.elapsed_s,
            "p50": q(self.latencies_ms, 50), "p95": q(self.latencies_ms, 95), "p99": q(self.latencies_ms, 99),
            "generator_lag_p99": q(self.lags_ms, 99), "generator_cpu_per_request_ms": self.cpu_s / self.requests * 1000,
            "stages": {s: (q(np.asarray(v), 50), q(np.asarray(v), 99)) for s, v in self.stages_ms.items()},
            "served": self.served,
        }  # fmt: skip


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def get_request(host: str, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\r\n".encode()


async def _exchange(connection: Connection, request: bytes) -> tuple[int, bytes]:
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, (await reader.readexactly(length) if length else b"")


async def open_loop(
    host: str, port: int, path_of: Callable[[int], str], rate: float, seconds: float,
    deadline_s: float = 2.0, collect_stages: bool = False, connections: int = 32,
) -> LoadResult:  # fmt: skip
    """Send `rate × seconds` GETs at fixed intervals, `path_of(i)` for the i-th."""
    clock = time.perf_counter  # uvloop's loop.time() has millisecond resolution
    total = int(rate * seconds)
    idle: deque[Connection] = deque([await asyncio.open_connection(host, port) for _ in range(connections)])
    latencies = np.zeros(total)
    lags = np.zeros(total)
    failed = np.zeros(total, dtype=bool)
    stages: dict[str, list[float]] = {}
    served: dict[str, int] = {}
    cpu_started = time.process_time()
    started = clock() + 0.05  # leave time to schedule every task before the first send

    async def one(index: int) -> None:
        scheduled = started + index / rate
        await asyncio.sleep(max(0.0, scheduled - clock()))
        lags[index] = clock() - scheduled
        connection = idle.popleft() if idle else None
        try:
            async with asyncio.timeout(deadline_s - (clock() - scheduled)):
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                status, body = await _exchange(connection, get_request(host, path_of(index)))
            idle.append(connection)
            failed[index] = status != 200
            if collect_stages and status == 200:
                document = json.loads(body)
                for stage, ms in document.get("timings_ms", {}).items():
                    stages.setdefault(stage, []).append(ms)
                if "request_id" in document:
                    served[document["request_id"]] = len(document.get("items", ()))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            failed[index] = True
            if connection is not None:
                connection[1].close()
        latencies[index] = clock() - scheduled

    await asyncio.gather(*(one(i) for i in range(total)))
    elapsed = clock() - started
    for _, writer in idle:
        writer.close()
    return LoadResult(total, int(failed.sum()), elapsed, latencies * 1000, lags * 1000, stages, served,
                      time.process_time() - cpu_started)  # fmt: skip


def run_open_loop(host: str, port: int, path_of: Callable[[int], str], rate: float, seconds: float,
                  deadline_s: float = 2.0, collect_stages: bool = False) -> dict[str, object]:  # fmt: skip
    """`open_loop` on a fresh event loop (uvloop when installed), as a summary dict."""
    coroutine = open_loop(host, port, path_of, rate, seconds, deadline_s, collect_stages)
    try:
        import uvloop

        result = uvloop.run(coroutine)
    except ImportError:
        result = asyncio.run(coroutine)
    return result.summary()
