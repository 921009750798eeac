"""Rankers on MovieLens 100k: AUC / GAUC / logloss of LR, Wide&Deep, DIN and popularity on the
time split of the Spark ranking samples (validation and test = the last 10% / 10% of positives by
time; negatives are ratings < 3.5 and uniformly sampled items, see ranking_samples.py).

Prepare the samples once, then run:

    .venv/bin/recsys data import-movielens ../shared/data/ml-100k --state-dir /tmp/ml100k
    .venv/bin/recsys batch all --state-dir /tmp/ml100k     # REDIS_URL unset: embedded redis-server
    .venv/bin/python benchmarks/ranking_ml100k.py --samples /tmp/ml100k/batch/samples

Peer: the popularity ranker and LR, trained/fitted on the same rows in the same run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from models.ranking.pipeline import train_ranker
from models.ranking.trainer import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, required=True, help="ranking samples folder (recsys batch output)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, patience=2, seed=args.seed)
    table: dict[str, dict[str, dict[str, float]]] = {}
    seconds: dict[str, float] = {}
    for kind in ("wide_deep", "din"):
        started = time.perf_counter()
        run = train_ranker(args.samples, kind, config=config, evaluate_baselines=kind == "din", show_progress=False)
        seconds[kind] = time.perf_counter() - started
        table.update(run.metrics)
    print(f"{'model':<10} {'val AUC':>8} {'val GAUC':>9} {'test AUC':>9} {'test GAUC':>10} {'test logloss':>13} {'test rows':>10}")
    for name in ("popularity", "lr", "wide_deep", "din"):
        val, test = table[name].get("validation", {}), table[name].get("test", {})
        print(f"{name:<10} {val.get('auc', float('nan')):>8.4f} {val.get('gauc', float('nan')):>9.4f} "
              f"{test.get('auc', float('nan')):>9.4f} {test.get('gauc', float('nan')):>10.4f} "
              f"{test.get('logloss', float('nan')):>13.4f} {int(test.get('rows', 0)):>10,}")  # fmt: skip
    pop = table["popularity"]["test"]
    for name in ("lr", "wide_deep", "din"):
        test = table[name]["test"]
        print(f"{name}: test AUC / popularity = {test['auc'] / pop['auc']:.3f}, GAUC / popularity = {test['gauc'] / pop['gauc']:.3f}")
    print("train+eval seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + " (din includes lr + popularity)")


if __name__ == "__main__":
    main()
