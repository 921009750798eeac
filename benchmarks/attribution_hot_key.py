"""The Flink attribution join's cost on one busy (user, item) key, against the same outcomes spread
over as many keys (the peer in the same run: the join's cost without the key's state growing).

    .venv/bin/python benchmarks/attribution_hot_key.py --outcomes 1000 2000 4000 8000

The join runs as the stream job runs it, without Flink (`pipelines.flink.join.AttributionJoin` on
in-memory key state): a client clicks at 10 per second without request ids, the watermark trails
the newest event by 5 s, and a key's timers are kept once per (key, time), as Flink's timer service
keeps them; each due timer fires the join's `fire`. Outcomes are the only thing timed.
"""

from __future__ import annotations

import argparse
import heapq
import time

from feature_store.attribution import Impression, Outcome
from pipelines.flink.join import AttributionJoin, KeyMaps

WINDOW_MS, LATENESS_MS = 1_800_000, 3_600_000
START_MS = 1_796_600_000_000


def run(outcomes: int, one_key: bool) -> float:
    """Seconds to join `outcomes` clicks (each key has one impression first), to the last decision."""
    join, states, timers, registered = AttributionJoin(WINDOW_MS, LATENESS_MS), {}, [], set()
    started = time.perf_counter()
    for n in range(outcomes):
        key = ("u", "i") if one_key else ("u", f"i{n}")
        state = states.setdefault(key, KeyMaps.in_memory())
        ts = START_MS + n * 100
        if n == 0 or not one_key:
            join.impression(Impression(f"imp{n}", *key, ts - 1, None, 0, None, None, None), state)
        at = join.outcome(Outcome(f"o{n}", *key, "click", ts, None), state)
        if at is not None and (at, key) not in registered:
            registered.add((at, key))
            heapq.heappush(timers, (at, key))
        while timers and timers[0][0] <= ts - 5_000:
            fired, fired_key = heapq.heappop(timers)
            join.fire(fired, states[fired_key])
        join.drain()
    while timers:  # the watermark passes every decision
        fired, fired_key = heapq.heappop(timers)
        join.fire(fired, states[fired_key])
    join.drain()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    args = parser.parse_args()
    print(f"{'outcomes':>9} {'one key (s)':>12} {'spread (s)':>11} {'ratio':>7}")
    for outcomes in args.outcomes:
        one, spread = run(outcomes, True), run(outcomes, False)
        print(f"{outcomes:>9,} {one:>12.3f} {spread:>11.3f} {one / spread:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
