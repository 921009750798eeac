"""Probabilistic interleaving on the simulator: the observed assignment's credit against Hofmann's
marginalised credit, beside team-draft, for the stale-vector pair of `benchmarks/experiments.py`.

Probabilistic interleaving (Hofmann, Whiteson & de Rijke, CIKM 2011; the service's
`interleaving.probabilistic`, softmax exponent τ) picks a ranker uniformly per slot and draws the
slot's item from that ranker's softmax over the items not shown yet. Given the shown list `L`, the
items left before each slot are fixed, so the assignment's posterior factorises over slots:
ranker A placed slot `s` with probability `q_s = P_A(d_s | rest) / (P_A(d_s | rest) + P_B(d_s | rest))`.
Marginalising the count credit over every assignment that could have produced `L` gives
`E[c_A − c_B | L, clicks] = Σ_clicked (2 q_s − 1)`: the same expectation as the observed
assignment's credit with less variance (Hofmann et al.'s marginalised outcome, here for count
credit), and exactly 0 when A and B are the same ranker.

Each population user's merges are a bank of `--bank` lists drawn with `probabilistic` itself (one
drawn uniformly per request), and each request draws its teams afresh from their exact posterior
`q_s` given the list (which is how the pair (list, teams) is distributed): a fixed bank of
teams would carry its own sampling imbalance into every run (an A/A false-positive rate of 0.25 in
a first try with 8 lists per user). Team-draft uses all 2^(K/2) of its merges as in `experiments.py`.

    .venv/bin/python benchmarks/experiments_probabilistic.py --runs 100 --aa-runs 200 --out prob.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.progress import track

from experiments import (  # benchmarks/experiments.py: the script's folder is on sys.path
    ALPHA, K, POPULATIONS, Merges, Outcomes, World, crossing, interleaving_run, needed, pair_with_gap,
)  # fmt: skip

from pipelines.simulate.population import PopulationParams
from services.experiments.analysis import credit_difference, preference, unit_outcomes
from services.experiments.interleaving import probabilistic, softmax_distribution


class Bank:
    """Per population user, `size` probabilistic merges of A and B: items and each slot's `q_s`."""

    def __init__(self, lists: tuple[np.ndarray, np.ndarray], size: int, tau: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        users = lists[0].shape[0]
        self.items = np.zeros((users, size, K), dtype=np.int64)
        self.q = np.zeros((users, size, K))
        for user in range(users):
            rankings = [[str(i) for i in ranked[user]] for ranked in lists]
            universe = list(dict.fromkeys(rankings[0] + rankings[1]))
            weights = np.stack([softmax_distribution(r, universe, tau) for r in rankings])
            position = {item: n for n, item in enumerate(universe)}
            for draw in range(size):
                merged = probabilistic(rankings, K, rng, tau)
                left = np.ones(len(universe), dtype=bool)
                for slot, item in enumerate(merged.items):
                    n = position[item]
                    p = weights[:, n] / (weights * left).sum(1)
                    self.q[user, draw, slot] = p[0] / p.sum()
                    left[n] = False
                self.items[user, draw] = [int(item) for item in merged.items]


def probabilistic_run(world: World, bank: Bank, users: int, seed: int) -> Outcomes:
    """One probabilistic-interleaving test: the observed assignment's credit (sign test, count
    t-test) and the marginalised count credit (t-test), per request."""
    rng = np.random.default_rng(seed)
    types, requests = world.draw_users(users, rng)
    kind = np.repeat(types, requests)
    draw = rng.integers(bank.items.shape[1], size=len(kind))
    shown, q = bank.items[kind, draw], bank.q[kind, draw]
    teams = (rng.random(q.shape) >= q).astype(np.int64)  # team 0 (A) with probability q_s
    clicked = rng.random(shown.shape) < world.attract[kind[:, None], shown] * world.exam
    a, b = ((clicked & (teams == team)).sum(1).astype(float) for team in (0, 1))
    request = np.arange(len(kind))
    pref = preference(unit_outcomes(request, a, b), rng, resamples=10)
    observed, p_observed = credit_difference(request, a, b)
    marginal, p_marginal = credit_difference(request, (clicked * q).sum(1), (clicked * (1 - q)).sum(1))
    return {"pi_request_sign": (pref.sign_p, int(np.sign(pref.wins_a - pref.wins_b))),
            "pi_request_count": (p_observed, int(np.sign(observed.estimate))),
            "pi_marginalised": (p_marginal, int(np.sign(marginal.estimate)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", choices=sorted(POPULATIONS), default="realistic")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests-per-user", type=float, default=5.0)
    parser.add_argument("--tau", type=float, default=3.0)
    parser.add_argument("--bank", type=int, default=32, help="probabilistic merges made per population user")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--aa-runs", type=int, default=200)
    parser.add_argument("--start", type=int, default=200, help="users at the start of the grid")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    world = World(PopulationParams(users=args.users, items=args.items, seed=args.seed, **POPULATIONS[args.population]),
                  args.requests_per_user)
    a, b, ctr_a, ctr_b = pair_with_gap(world, "stale", 0.02)
    print(f"stale pair on the {args.population} population: true CTR A {ctr_a:.5f}, B {ctr_b:.5f}", flush=True)
    bank = Bank((a, b), args.bank, args.tau, args.seed)
    methods = {**needed(probabilistic_run, world, bank, args.runs, args.start, "probabilistic"),  # type: ignore[arg-type]
               **needed(interleaving_run, world, Merges((a, b)), args.runs, args.start, "team-draft")}
    size = methods["pi_request_sign"]["users"] or args.start
    same = Bank((a, a), args.bank, args.tau, args.seed)
    results = [probabilistic_run(world, same, size, 10_000 + s) for s in track(range(args.aa_runs), description="A/A")]
    aa = {m: float(np.mean([r[m][0] < ALPHA for r in results])) for m in results[0]}
    for method, value in methods.items():
        smooth = crossing(value["curve"])
        print(f"{method}: {value['users']} users on the grid, {smooth and round(smooth)} interpolated")
    print(f"A/A at {size:,} users over {args.aa_runs} runs: {aa}; {time.perf_counter() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps({"true_ctr": [ctr_a, ctr_b], "methods": methods, "aa": aa, "aa_users": size}, indent=2))


if __name__ == "__main__":
    main()
