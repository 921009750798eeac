"""What `serving.py --impressions` and `--lossless-seconds` report: impression logging on vs off,
and whether every item the load generator was shown reached the event log as an impression."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from rich.table import Table

from feature_store.event_log import EventLogReader

Runs = dict[tuple[bool, int], list[dict[str, Any]]]  # (logging on, rate) -> one open-loop summary per repeat


def logged_per_request(log_root: Path, since: datetime, request_ids: dict[str, int]) -> dict[str, int]:
    """Impression events in the log (duplicates dropped, as every reader does) per request id of `request_ids`."""
    logged: dict[str, int] = {}
    for event in EventLogReader(log_root).read(start=since - timedelta(seconds=1)):
        request_id = event.context.request_id
        if event.type.value == "impression" and request_id in request_ids:
            logged[request_id] = logged.get(request_id, 0) + 1
    return logged


def lossless_summary(result: dict[str, Any], logged: dict[str, int]) -> str:
    """One line: items the generator was shown, impressions logged for them, and how many are missing;
    with the writers' backlog when the load stopped and the server's dropped counter then."""
    served: dict[str, int] = result["served"]
    shown, found = sum(served.values()), sum(logged.values())
    lost = sum(max(n - logged.get(request, 0), 0) for request, n in served.items())
    colour = "green" if lost == 0 and found == shown else "red"
    return (f"[{colour}]lossless run: {len(served):,} answered requests (p50 {result['p50']:.1f} ms, p99 "
            f"{result['p99']:.1f} ms, errors {result['errors']}/{result['requests']}, other processes "
            f"{result.get('other_cpu_s', float('nan')):.1f} CPU-s), {shown:,} items shown, {found:,} impressions "
            f"logged, {lost} lost; when the load stopped: {result['backlog']:,.0f} not yet logged, "
            f"{result['dropped']:.0f} dropped[/]")


def server_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a server process and its workers."""
    root = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])


def logging_cpu_summary(cpu: dict[bool, list[float]], requests: int) -> str:
    """One line: the server's CPU per request with logging off and on (medians over repeats)."""
    off, on = float(np.median(cpu[False])), float(np.median(cpu[True]))
    every = "; ".join(f"{'on' if logged else 'off'} " + ", ".join(f"{v:.2f}" for v in values)
                      for logged, values in cpu.items())
    return (f"closed loop ({requests} requests per run): server CPU per request, logging off {off:.2f} ms, on "
            f"{on:.2f} ms ({on - off:+.2f} ms, {on / off - 1:+.1%}; runs: {every})")


def report_logging(results: Runs, rates: list[int]) -> Table:
    """Per rate: p50/p99 with logging off (the peer) and on, medians over the repeats."""
    table = Table(title="GET /v1/users/{id}/recommendations (DIN, k=10): impression logging on vs off, same server; "
                        "median over repeats, every p99 in brackets")
    for column in ("rate", "off p50", "off p99", "on p50", "on p99", "p99 on - off", "p99 on/off", "errors on/off",
                   "other CPU-s"):
        table.add_column(column, justify="right")
    for rate in rates:
        off, on = results[(False, rate)], results[(True, rate)]
        table.add_row(
            str(rate), f"{_median(off, 'p50'):.1f}", f"{_median(off, 'p99'):.1f} [{_every_p99(off)}]",
            f"{_median(on, 'p50'):.1f}", f"{_median(on, 'p99'):.1f} [{_every_p99(on)}]",
            f"{_median(on, 'p99') - _median(off, 'p99'):+.1f} ms", f"{_median(on, 'p99') / _median(off, 'p99'):.2f}×",
            f"{sum(r['errors'] for r in on)}/{sum(r['errors'] for r in off)}",
            f"{max(r['other_cpu_s'] for r in on + off):.1f}",
        )
    return table


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return float(np.median([run[key] for run in runs]))


def _every_p99(runs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{run['p99']:.1f}" for run in runs)
