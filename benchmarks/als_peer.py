"""The ALS peer alone under the field protocol (docs/evaluation.md): tuned on validation NDCG@10
over the protocol's grid (or `--small-grid`, quality.py's), test figures of the chosen point with a
95% bootstrap interval over users. The same `tune` the full benchmark (quality.py) runs, without the
other peers and the pipeline, to check the peer quickly.

    .venv/bin/python benchmarks/als_peer.py --data ml-100k
    .venv/bin/python benchmarks/als_peer.py --data amazon-toys --small-grid
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from models.evaluation.peers import ImplicitALS
from models.evaluation.protocol import TUNING_METRIC, protocol_split, tune
from models.evaluation.protocol_run import ProtocolConfig
from quality import SMALL_ALS_GRID  # benchmarks/quality.py: the script's folder is on sys.path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def interactions(name: str) -> list[tuple[str, str, float]]:
    """(user, item, time) of MovieLens 100k's ratings, or of Amazon Toys' lines (their order as time)."""
    if name == "ml-100k":
        rows = (line.split("\t") for line in (DATA / "ml-100k" / "u.data").read_text().splitlines())
        return [(user, item, float(ts)) for user, item, _, ts in rows]
    lines = (line.split() for line in (DATA / "amazon-toys" / "Toys_and_Games.txt").read_text().splitlines())
    return [(user, item, float(n)) for user, *items in lines for n, item in enumerate(items)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=["ml-100k", "amazon-toys"], required=True)
    parser.add_argument("--small-grid", action="store_true")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    split = protocol_split(interactions(args.data))
    sequences = split.training_sequences()
    started = time.monotonic()
    with threadpool_limits(limits=1, user_api="blas"):
        tuned = tune("ALS", lambda **p: ImplicitALS(sequences, **p), SMALL_ALS_GRID if args.small_grid else ProtocolConfig().als_grid, split)
    for params, score in tuned.grid:
        print(f"  {params}: validation {TUNING_METRIC} {score:.4f}")
    print(f"chosen {tuned.params}, validation {TUNING_METRIC} {tuned.validation[TUNING_METRIC].mean():.4f}")
    for metric in ("HR@10", "NDCG@10", "HR@50", "MRR"):
        print(f"test {metric} {tuned.test[metric].mean():.4f}")
    values = tuned.test["NDCG@10"]
    rng = np.random.default_rng(0)
    draws = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(args.bootstrap)]
    low, high = np.percentile(draws, [2.5, 97.5])
    print(f"test NDCG@10 95% interval [{low:.4f}, {high:.4f}]; {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
