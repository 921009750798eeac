"""Interleaving against A/B on the simulator's click model: sensitivity, A/A false positives, agreement.

In-process, against the simulator's ground truth (`pipelines.simulate`: population, position-based
click model), with the service's own code: `assignment.unit_hash` splits A/B users,
`interleaving.team_draft` merges, `analysis.two_proportion_p` (A/B, per impression) and
`analysis.unit_outcomes` + `analysis.preference` (interleaving, per user, sign test) decide.

Rankers: each scores a user's items by `logit a(u, i) + σ·z` (z fixed per ranker, user and
item; a larger σ is a worse ranker) and shows its top k (it hands the merge its top 2k, so
team-draft always runs k/2 rounds). A ranker's true CTR is the mean over
users of `Σ_k e_k a(u, list_k) / k`, exact from the truth. The sensitivity pair's noise levels are
set so the worse one's true CTR is 2% (relative) below the better one's.

Team-draft's only randomness is each round's order (k/2 coin flips for two rankers), so every
user's 2^(k/2) possible interleaved lists are made once with `team_draft` itself (fed each coin
sequence) and each request draws one uniformly: the same merge, vectorised over requests.

    .venv/bin/python benchmarks/experiments.py --runs 100 --aa-runs 200 --pairs 30

Prints the tables recorded in RESULTS.md (and writes --out JSON). `--plot PNG` draws the power
curves (matplotlib, the `bench` extra); `--from-json LABEL=FILE …` draws them from saved runs
without running again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.progress import track

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population
from services.experiments.analysis import preference, two_proportion_p, unit_outcomes
from services.experiments.assignment import unit_hash
from services.experiments.interleaving import team_draft

K = 10
ALPHA = 0.05
UNIT = "request"  # interleaving's unit: "request" or "user" (--unit)


class World:
    """Attractiveness of every item for every user, and fixed per-ranker noise."""

    def __init__(self, users: int, items: int, seed: int) -> None:
        population = make_population(PopulationParams(users=users, items=items, seed=seed))
        truth = GroundTruth(population, PositionBasedModel(1.0))
        self.users = [population.user_id(u) for u in range(users)]
        self.attract = np.stack([truth.attractiveness(u, [population.item_id(i) for i in range(items)], 0)
                                 for u in self.users])
        self.exam = truth.model.examination(K)
        self.rng = np.random.default_rng(seed)

    def ranker(self, sigma: float, noise: np.ndarray) -> np.ndarray:
        """Each user's top-2K item numbers under `logit a + sigma * noise`."""
        logit = np.log(self.attract) - np.log1p(-self.attract)
        return np.argsort(-(logit + sigma * noise), axis=1)[:, : 2 * K]

    def true_ctr(self, lists: np.ndarray) -> float:
        """Mean over users of the shown top K's expected clicks per slot."""
        return float((np.take_along_axis(self.attract, lists[:, :K], 1) * self.exam).sum(1).mean() / K)


class _Coins:
    """A generator stand-in that hands `team_draft` one given sequence of round orders."""

    def __init__(self, orders: list[np.ndarray]) -> None:
        self.orders = iter(orders)

    def permutation(self, m: int) -> np.ndarray:
        return next(self.orders)


class Merges:
    """Every user's 2^(K/2) team-draft lists of rankers A and B (item numbers, teams)."""

    def __init__(self, lists: tuple[np.ndarray, np.ndarray]) -> None:
        rounds = K // 2
        users = lists[0].shape[0]
        self.items = np.zeros((users, 2**rounds, K), dtype=np.int64)
        self.teams = np.zeros((users, 2**rounds, K), dtype=np.int64)
        for outcome in range(2**rounds):
            orders = [np.array([0, 1]) if outcome >> r & 1 else np.array([1, 0]) for r in range(rounds)]
            for user in range(users):
                merged = team_draft([lists[0][user].tolist(), lists[1][user].tolist()], K, _Coins(list(orders)))
                self.items[user, outcome] = merged.items
                self.teams[user, outcome] = merged.teams


def pair_with_gap(world: World, gap: float, sigma_a: float = 1.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rankers A (noise sigma_a) and B, B's noise bisected until CTR_B = (1 - gap) CTR_A."""
    noise_a, noise_b = world.rng.standard_normal((2, *world.attract.shape))
    a = world.ranker(sigma_a, noise_a)
    target = (1 - gap) * world.true_ctr(a)
    low, high = sigma_a * 0.5, sigma_a * 8
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if world.true_ctr(world.ranker(mid, noise_b)) > target else (low, mid)
    b = world.ranker((low + high) / 2, noise_b)
    return a, b, world.true_ctr(a), world.true_ctr(b)


def ab_run(world: World, lists: tuple[np.ndarray, np.ndarray], requests: int, seed: int) -> tuple[float, int]:
    """One A/B test: (p-value, sign of CTR_A - CTR_B)."""
    rng = np.random.default_rng(seed)
    arm = np.array([unit_hash(f"arm:run{seed}", u) < 0.5 for u in world.users], dtype=np.int64)  # 1: A
    users = rng.integers(len(world.users), size=requests)
    probs = np.where(arm[users, None] == 1,
                     np.take_along_axis(world.attract[users], lists[0][users, :K], 1),
                     np.take_along_axis(world.attract[users], lists[1][users, :K], 1)) * world.exam
    clicks = (rng.random(probs.shape) < probs).sum(1)
    in_a = arm[users] == 1
    c_a, n_a = int(clicks[in_a].sum()), int(in_a.sum()) * K
    c_b, n_b = int(clicks[~in_a].sum()), int((~in_a).sum()) * K
    return float(two_proportion_p(c_a, n_a, c_b, n_b)), int(np.sign(c_a / max(n_a, 1) - c_b / max(n_b, 1)))


def interleaving_run(world: World, merges: Merges, requests: int, seed: int) -> tuple[float, int]:
    """One team-draft interleaving test per unit (request or user): (sign-test p-value, sign of
    the preference)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(len(world.users), size=requests)
    outcome = rng.integers(merges.items.shape[1], size=requests)
    shown, teams = merges.items[users, outcome], merges.teams[users, outcome]
    clicked = rng.random(shown.shape) < np.take_along_axis(world.attract[users], shown, 1) * world.exam
    credit = np.stack([(clicked & (teams == team)).sum(1) for team in (0, 1)], axis=1).astype(float)
    units = np.arange(requests).astype(str) if UNIT == "request" else users.astype(str)
    outcome = preference(unit_outcomes(units, credit[:, 0], credit[:, 1]), rng, resamples=200)
    return outcome.sign_p, int(np.sign(outcome.wins_a - outcome.wins_b))


def power(run, world, lists, requests: int, runs: int, offset: int) -> float:  # type: ignore[no-untyped-def]
    """Share of seeded runs that pick A (the better) at p < ALPHA."""
    results = [run(world, lists, requests, offset + s) for s in range(runs)]
    return float(np.mean([p < ALPHA and sign > 0 for p, sign in results]))


def needed(run, world, lists, runs: int, start: int, label: str) -> tuple[int | None, list[tuple[int, float]]]:  # type: ignore[no-untyped-def]
    """Smallest request count on a x1.5 grid with power >= 0.8 (None past 64x the start)."""
    curve = []
    requests = start
    while requests <= start * 64:
        measured = power(run, world, lists, requests, runs, offset=requests)
        curve.append((requests, measured))
        print(f"  {label}: {requests:>9,} requests ({requests * K:>10,} impressions): power {measured:.2f}", flush=True)
        if measured >= 0.8:
            return requests, curve
        requests = int(requests * 1.5)
    return None, curve


def plot(summaries: dict[str, dict], path: Path) -> None:
    """Power against impressions per run: interleaving per saved run (its label), and A/B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for label, summary in summaries.items():
        n, power_ = zip(*summary["curves"]["interleaving"])
        axis.plot(np.array(n) * K, power_, marker="o", label=f"team-draft interleaving, per {label}")
    n, power_ = zip(*next(iter(summaries.values()))["curves"]["ab"])
    axis.plot(np.array(n) * K, power_, marker="s", color="black", label="A/B, per impression")
    axis.axhline(0.8, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_xlabel("impressions per run (10 per request)")
    axis.set_ylabel("power (p < 0.05, right winner; 100 runs)")
    axis.set_title("2% relative true-CTR gap, simulator (2,000 users)")
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--aa-runs", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--unit", choices=("request", "user"), default="request")
    parser.add_argument("--il-start", type=int, default=500)
    parser.add_argument("--ab-start", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the power curves")
    parser.add_argument("--from-json", nargs="+", default=None, metavar="LABEL=FILE",
                        help="plot saved runs (--out files) instead of running")
    args = parser.parse_args()
    if args.from_json:
        saved = dict(item.split("=", 1) for item in args.from_json)
        plot({label: json.loads(Path(file).read_text()) for label, file in saved.items()}, args.plot)
        return
    global UNIT
    UNIT = args.unit
    started = time.perf_counter()
    world = World(args.users, args.items, args.seed)
    a, b, ctr_a, ctr_b = pair_with_gap(world, 0.02)
    print(f"pair: true CTR A {ctr_a:.5f}, B {ctr_b:.5f} (relative gap {1 - ctr_b / ctr_a:.4f})")
    merges = Merges((a, b))
    il_n, il_curve = needed(interleaving_run, world, merges, args.runs, args.il_start, "interleaving")
    ab_n, ab_curve = needed(ab_run, world, (a, b), args.runs, args.ab_start, "A/B")
    aa = {}
    same = Merges((a, a))
    for name, run, arg, requests in (("ab", ab_run, (a, a), ab_n or args.ab_start),
                                     ("interleaving", interleaving_run, same, il_n or args.il_start)):
        ps = [run(world, arg, requests, 10_000 + s)[0] for s in track(range(args.aa_runs), description=f"A/A {name}")]
        rate = float(np.mean(np.array(ps) < ALPHA))
        half = 1.96 * np.sqrt(rate * (1 - rate) / len(ps))
        aa[name] = {"requests": requests, "runs": len(ps), "false_positive_rate": rate, "ci95": [rate - half, rate + half]}
        print(f"A/A {name}: {rate:.3f} [{rate - half:.3f}, {rate + half:.3f}] over {len(ps)} runs at {requests:,} requests")
    agreement = []
    for n in track(range(args.pairs), description="agreement"):
        gap = float(world.rng.uniform(0.02, 0.10))
        x, y, cx, cy = pair_with_gap(world, gap, sigma_a=float(world.rng.uniform(0.5, 2.0)))
        il = interleaving_run(world, Merges((x, y)), il_n or args.il_start, 20_000 + n)
        ab = ab_run(world, (x, y), 40 * (ab_n or args.ab_start), 30_000 + n)
        agreement.append({"gap": gap, "truth": int(np.sign(cx - cy)), "interleaving": il[1], "interleaving_p": il[0],
                          "ab": ab[1], "ab_p": ab[0]})
    agree_ab = float(np.mean([r["interleaving"] == r["ab"] for r in agreement])) if agreement else None
    agree_truth = float(np.mean([r["interleaving"] == r["truth"] for r in agreement])) if agreement else None
    summary = {
        "true_ctr": [ctr_a, ctr_b], "interleaving_requests": il_n, "ab_requests": ab_n,
        "ratio": (ab_n / il_n) if ab_n and il_n else None, "curves": {"interleaving": il_curve, "ab": ab_curve},
        "aa": aa, "agreement_with_ab": agree_ab, "agreement_with_truth": agree_truth, "pairs": agreement,
        "seconds": time.perf_counter() - started,
    }
    print(f"needed for 80% power at p < 0.05: interleaving {il_n} requests, A/B {ab_n} requests "
          f"(ratio {summary['ratio']}); agreement with a 40x A/B {agree_ab}, with the truth {agree_truth}; "
          f"{summary['seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    if args.plot:
        plot({args.unit: summary}, args.plot)


if __name__ == "__main__":
    main()
