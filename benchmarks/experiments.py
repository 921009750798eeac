"""Interleaving against A/B on the simulator's click model: sensitivity, A/A false positives, agreement.

In-process, against the simulator's ground truth (`pipelines.simulate`: population, position-based
click model with η = 1), with the service's own merge and statistics: `interleaving.team_draft`,
`analysis.user_level_lift` (A/B per user, the randomised unit), `analysis.two_proportion_p` (A/B
per impression), `analysis.unit_outcomes` + `analysis.preference` (interleaving, sign test per
request or per user) and `analysis.credit_difference` (interleaving, every click counted).

A run is an experiment on `users` users, each drawn from the population's users (its "types",
with replacement, so a run can have more users than the population) and making
`1 + Poisson((m − 1) · rate)` requests of K = 10 slots, `rate` the type's activity relative to
the mean (`PopulationParams.activity_skew`) and `m` the mean requests per user. A/B splits the
run's users 50/50 (a fresh draw per run; `assignment.unit_hash` is tested for this elsewhere);
interleaving shows every request a team-draft merge. Populations (`--population`):

- `realistic`: per-user click propensity `β_u ~ N(0, 1)` on the logit (an assumption: the 90th
  percentile user's click odds 13× the 10th's) and Zipf(0.5) activity (the coefficient of
  variation of requests per user 1.05, ml-100k's ratings per user 0.95);
- `homogeneous`: the population of the first measurement: `β_u = 0`, every user equally active.

Ranker pairs (`--kinds`): A scores `logit a(u, i) + σ_A z` (z fixed per ranker, user and item);
B is A made worse until its true CTR is 2% (relative) below A's: `noise` (B has its own noise,
larger: a random reshuffle), `stale` (B uses an older user vector, `unit((1 − λ) û + λ r)` with
`r` a random direction per user; shares A's noise) or `popularity` (B adds `w · log(n p_i)` to A's
score). A ranker shows its top K (the merge gets its top 2K). A list's true CTR is exact from the
truth: the mean over users of `Σ_k e_k a(u, list_k) / K`.

Team-draft's only randomness is each round's order, so each user's 2^(K/2) possible merges are
made once with `team_draft` itself (fed each coin sequence) and each request draws one uniformly.

    .venv/bin/python benchmarks/experiments.py --population realistic homogeneous --runs 100 \
        --aa-runs 200 --pairs 30 --out results.json --plot benchmarks/experiments_power.png

Prints, per population and pair, the users each test needs for 80% power (on the ×1.5 grid and
interpolated), the A/A rates and the agreement; `--from-json FILE` prints them and draws the plot
(`--plot`) from a saved `--out` file without running again.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.progress import track

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population
from services.experiments.analysis import credit_difference, preference, two_proportion_p, unit_outcomes, user_level_lift
from services.experiments.interleaving import team_draft

K = 10
ALPHA = 0.05
POPULATIONS = {"realistic": {"user_bias_spread": 1.0}, "homogeneous": {"user_bias_spread": 0.0, "activity_skew": 0.0}}
AB_METHODS = ("ab_user", "ab_impression")
IL_METHODS = ("il_request_sign", "il_request_count", "il_user_sign")
Outcomes = dict[str, tuple[float, int]]  # method -> (p-value, sign of A's advantage)


class World:
    """Attractiveness of every item for every population user, activity, and ranker parts."""

    def __init__(self, params: PopulationParams, requests_per_user: float) -> None:
        population = make_population(params)
        truth = GroundTruth(population, PositionBasedModel(1.0))
        items = [population.item_id(i) for i in range(params.items)]
        self.attract = np.stack([truth.attractiveness(population.user_id(u), items, 0) for u in range(params.users)])
        self.logit = np.log(self.attract) - np.log1p(-self.attract)
        self.popularity = (population.item_bias - params.offset)[: params.items]  # w · log(n p_i)
        self.vectors, self.items = population.user_vectors, population.item_vectors[: params.items]
        self.rate = population.user_activity * params.users
        self.requests_per_user = requests_per_user
        self.exam = truth.model.examination(K)
        self.rng = np.random.default_rng(params.seed)

    def top(self, scores: np.ndarray) -> np.ndarray:
        return np.argsort(-scores, axis=1)[:, : 2 * K]

    def true_ctr(self, lists: np.ndarray) -> float:
        """Mean over population users of the shown top K's expected clicks per slot."""
        return float((np.take_along_axis(self.attract, lists[:, :K], 1) * self.exam).sum(1).mean() / K)

    def draw_users(self, users: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(type, requests) of each of a run's users."""
        types = rng.integers(len(self.rate), size=users)
        return types, 1 + rng.poisson((self.requests_per_user - 1) * self.rate[types])


def pair_with_gap(world: World, kind: str, gap: float, sigma_a: float = 1.0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Rankers A and B of `kind`, B's strength bisected until CTR_B = (1 - gap) CTR_A."""
    noise_a, noise_b = world.rng.standard_normal((2, *world.attract.shape))
    score_a = world.logit + sigma_a * noise_a
    direction = world.rng.standard_normal(world.vectors.shape)
    unit = world.vectors / np.linalg.norm(world.vectors, axis=1, keepdims=True)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = np.linalg.norm(world.vectors, axis=1, keepdims=True)

    def b_scores(strength: float) -> np.ndarray:
        if kind == "noise":
            return world.logit + strength * noise_b
        if kind == "popularity":
            return score_a + strength * world.popularity
        stale = (1 - strength) * unit + strength * direction
        stale = scale * stale / np.linalg.norm(stale, axis=1, keepdims=True)
        return score_a + (stale - world.vectors) @ world.items.T

    a = world.top(score_a)
    target = (1 - gap) * world.true_ctr(a)
    low, high = {"noise": (sigma_a * 0.5, sigma_a * 8), "stale": (0.0, 1.0), "popularity": (0.0, 20.0)}[kind]
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (mid, high) if world.true_ctr(world.top(b_scores(mid))) > target else (low, mid)
    b = world.top(b_scores((low + high) / 2))
    return a, b, world.true_ctr(a), world.true_ctr(b)


class _Coins:
    """A generator stand-in that hands `team_draft` one given sequence of round orders."""

    def __init__(self, orders: list[np.ndarray]) -> None:
        self.orders = iter(orders)

    def permutation(self, m: int) -> np.ndarray:
        return next(self.orders)


class Merges:
    """Every population user's 2^(K/2) team-draft lists of rankers A and B (item numbers, teams)."""

    def __init__(self, lists: tuple[np.ndarray, np.ndarray]) -> None:
        self.lists = lists
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


def credit_efficiency(world: World, merges: Merges) -> float:
    """Exact `E[c_A − c_B]` per interleaved request over the A/B gap in expected clicks per request,
    `E[clicks | A] − E[clicks | B]`, both from the truth (mean over population users; every merge
    equally likely). With Poisson-like clicks, interleaving needs about `1 / (4 c²)` of A/B's
    requests at equal between-user variance (A/B splits the requests and differences two means)."""
    users = np.arange(len(world.attract))[:, None, None]
    p = world.attract[users, merges.items] * world.exam
    interleaved = (p * np.where(merges.teams == 0, 1.0, -1.0)).sum(2).mean()
    a, b = (np.take_along_axis(world.attract, lists[:, :K], 1) * world.exam for lists in merges.lists)
    return float(interleaved / (a.sum(1) - b.sum(1)).mean())


def crossing(curve: list[tuple[int, float]], level: float = 0.8) -> float | None:
    """Users at which the power curve first reaches `level`, interpolated linearly in log users
    between the grid points around it (the grid's own answer is up to 1.5x coarser)."""
    for (n0, p0), (n1, p1) in zip(curve, curve[1:]):
        if p0 < level <= p1:
            return float(np.exp(np.log(n0) + (level - p0) / (p1 - p0) * (np.log(n1) - np.log(n0))))
    return float(curve[0][0]) if curve and curve[0][1] >= level else None


def ab_run(world: World, merges: Merges, users: int, seed: int) -> Outcomes:
    """One A/B test on `users` users, analysed per user and per impression."""
    rng = np.random.default_rng(seed)
    types, requests = world.draw_users(users, rng)
    in_a = rng.random(users) < 0.5
    lists = np.where(in_a[:, None], merges.lists[0][types, :K], merges.lists[1][types, :K])
    probs = np.take_along_axis(world.attract[types], lists, 1) * world.exam
    clicks = rng.binomial(requests[:, None], probs).sum(1).astype(float)
    shown = (K * requests).astype(float)
    _, p_user = user_level_lift(clicks[in_a], shown[in_a], clicks[~in_a], shown[~in_a])
    c_a, n_a, c_b, n_b = clicks[in_a].sum(), shown[in_a].sum(), clicks[~in_a].sum(), shown[~in_a].sum()
    sign = int(np.sign(c_a / max(n_a, 1) - c_b / max(n_b, 1)))
    return {"ab_user": (p_user, sign), "ab_impression": (float(two_proportion_p(c_a, n_a, c_b, n_b)), sign)}


def interleaving_run(world: World, merges: Merges, users: int, seed: int) -> Outcomes:
    """One team-draft interleaving test on `users` users: sign test per request and per user, and
    the count-credit t-test per request."""
    rng = np.random.default_rng(seed)
    types, requests = world.draw_users(users, rng)
    kind, owner = np.repeat(types, requests), np.repeat(np.arange(users), requests)
    outcome = rng.integers(merges.items.shape[1], size=len(kind))
    shown, teams = merges.items[kind, outcome], merges.teams[kind, outcome]
    clicked = rng.random(shown.shape) < world.attract[kind[:, None], shown] * world.exam
    a, b = ((clicked & (teams == team)).sum(1).astype(float) for team in (0, 1))
    request = np.arange(len(kind))
    out = {}
    for name, units in (("il_request_sign", request), ("il_user_sign", owner)):
        pref = preference(unit_outcomes(units, a, b), rng, resamples=10)
        out[name] = (pref.sign_p, int(np.sign(pref.wins_a - pref.wins_b)))
    mean, p = credit_difference(request, a, b)
    out["il_request_count"] = (p, int(np.sign(mean.estimate)))
    return out


Run = Callable[[World, Merges, int, int], Outcomes]


def power(run: Run, world: World, merges: Merges, users: int, runs: int, offset: int) -> dict[str, float]:
    """Per method, the share of seeded runs that pick A (the better) at p < ALPHA."""
    results = [run(world, merges, users, offset + s) for s in range(runs)]
    return {m: float(np.mean([r[m][0] < ALPHA and r[m][1] > 0 for r in results])) for m in results[0]}


def needed(run: Run, world: World, merges: Merges, runs: int, start: int, label: str) -> dict[str, dict]:
    """Per method: the smallest user count on a x1.5 grid with power >= 0.8 (None past 200x the
    start) and the power curve."""
    curves: dict[str, list[tuple[int, float]]] = {}
    found: dict[str, int | None] = {}
    users = start
    while users <= start * 200:
        measured = power(run, world, merges, users, runs, offset=users)
        for method, value in measured.items():
            curves.setdefault(method, []).append((users, value))
            if value >= 0.8 and found.get(method) is None:
                found[method] = users
        print(f"  {label}: {users:>9,} users (~{users * world.requests_per_user * K:>12,.0f} impressions): "
              + ", ".join(f"{m} {v:.2f}" for m, v in measured.items()), flush=True)
        if all(found.get(m) is not None for m in measured):
            break
        users = int(users * 1.5)
    return {m: {"users": found.get(m), "curve": curve} for m, curve in curves.items()}


def sensitivity(world: World, kind: str, args: argparse.Namespace) -> dict:
    a, b, ctr_a, ctr_b = pair_with_gap(world, kind, 0.02)
    print(f"[{kind}] true CTR A {ctr_a:.5f}, B {ctr_b:.5f} (relative gap {1 - ctr_b / ctr_a:.4f}); "
          f"top-{K} overlap {np.mean([len(set(x[:K]) & set(y[:K])) for x, y in zip(a, b)]) / K:.2f}", flush=True)
    merges = Merges((a, b))
    efficiency = credit_efficiency(world, merges)
    print(f"[{kind}] interleaving credit efficiency c = {efficiency:.3f}", flush=True)
    methods = {**needed(interleaving_run, world, merges, args.runs, args.il_start, f"{kind} interleaving"),
               **needed(ab_run, world, merges, args.runs, args.ab_start, f"{kind} A/B")}
    return {"true_ctr": [ctr_a, ctr_b], "credit_efficiency": efficiency, "methods": methods, "_merges": merges}


def a_a(world: World, merges: Merges, sizes: dict[str, int], runs: int) -> dict:
    """False-positive rates of every method with both arms the same ranker."""
    same = Merges((merges.lists[0], merges.lists[0]))
    rates = {}
    for label, run, users in (("ab", ab_run, sizes["ab"]), ("interleaving", interleaving_run, sizes["il"])):
        results = [run(world, same, users, 10_000 + s) for s in track(range(runs), description=f"A/A {label}")]
        for method in results[0]:
            rate = float(np.mean([r[method][0] < ALPHA for r in results]))
            half = 1.96 * np.sqrt(rate * (1 - rate) / runs)
            rates[method] = {"users": users, "runs": runs, "false_positive_rate": rate, "ci95": [rate - half, rate + half]}
            print(f"A/A {method}: {rate:.3f} [{rate - half:.3f}, {rate + half:.3f}] over {runs} runs at {users:,} users")
    return rates


def agreement(world: World, pairs: int, il_users: int, ab_users: int, kinds: list[str]) -> list[dict]:
    """Planted pairs (kinds in turn, gap 2-10%): interleaving per request against a high-powered
    A/B per user, and both against the truth."""
    out = []
    for n in track(range(pairs), description="agreement"):
        kind, gap = kinds[n % len(kinds)], float(world.rng.uniform(0.02, 0.10))
        x, y, cx, cy = pair_with_gap(world, kind, gap, sigma_a=float(world.rng.uniform(0.5, 2.0)))
        merges = Merges((x, y))
        il = interleaving_run(world, merges, il_users, 20_000 + n)["il_request_sign"]
        ab = ab_run(world, merges, ab_users, 30_000 + n)["ab_user"]
        out.append({"kind": kind, "gap": gap, "truth": int(np.sign(cx - cy)), "interleaving": il[1],
                    "interleaving_p": il[0], "ab": ab[1], "ab_p": ab[0]})
    return out


def measure(name: str, args: argparse.Namespace) -> dict:
    knobs = {**POPULATIONS[name], **({"activity_skew": args.activity_skew} if args.activity_skew is not None else {})}
    world = World(PopulationParams(users=args.users, items=args.items, seed=args.seed, **knobs), args.requests_per_user)
    print(f"== population {name}: {knobs}, {args.requests_per_user:g} requests per user on average", flush=True)
    kinds = {kind: sensitivity(world, kind, args) for kind in args.kinds}
    head = kinds[args.kinds[0]]
    il_users = head["methods"][args.il_method]["users"] or args.il_start
    ab_users = head["methods"]["ab_user"]["users"] or args.ab_start
    aa = a_a(world, head.pop("_merges"), {"il": il_users, "ab": ab_users}, args.aa_runs)
    pairs = agreement(world, args.pairs, il_users, args.ab_power * ab_users, args.kinds)
    for result in kinds.values():
        result.pop("_merges", None)
    return {"knobs": knobs, "requests_per_user": args.requests_per_user, "kinds": kinds, "aa": aa, "pairs": pairs,
            "agreement_with_ab": float(np.mean([p["interleaving"] == p["ab"] for p in pairs])) if pairs else None,
            "agreement_with_truth": float(np.mean([p["interleaving"] == p["truth"] for p in pairs])) if pairs else None}


def report(summary: dict, il_method: str) -> None:
    """Users needed per method (grid and interpolated), A/B per user over interleaving, agreement."""
    for name, result in summary["populations"].items():
        for kind, r in result["kinds"].items():
            grid = {m: v["users"] for m, v in r["methods"].items()}
            smooth = {m: crossing(v["curve"]) for m, v in r["methods"].items()}
            ratio = (smooth["ab_user"] / smooth[il_method]) if smooth["ab_user"] and smooth[il_method] else None
            print(f"{name}/{kind}: users for 80% power on the grid {grid}; interpolated "
                  + ", ".join(f"{m} {v:,.0f}" if v else f"{m} -" for m, v in smooth.items())
                  + f"; A/B per user / {il_method}: {ratio if ratio is None else round(ratio, 2)}")
        print(f"{name}: agreement with the A/B {result['agreement_with_ab']}, with the truth {result['agreement_with_truth']}")


def plot(summary: dict, path: Path, kind: str) -> None:
    """Power against impressions per run for the `kind` pair, one panel per population."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    populations = summary["populations"]
    figure, axes = plt.subplots(1, len(populations), figsize=(6.5 * len(populations), 4.2), squeeze=False)
    for axis, (name, result) in zip(axes[0], populations.items()):
        scale = result["requests_per_user"] * K
        for method, style in (("il_request_sign", "o-"), ("il_request_count", "^-"), ("il_user_sign", "v:"),
                              ("ab_user", "s-"), ("ab_impression", "x--")):
            n, value = zip(*result["kinds"][kind]["methods"][method]["curve"])
            axis.plot(np.array(n) * scale, value, style, label=method)
        axis.axhline(0.8, color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlabel(f"impressions per run (≈ users × {scale:g})")
        axis.set_ylabel(f"power (p < 0.05, right winner; {summary['runs']} runs)")
        axis.set_title(f"{name} population, '{kind}' pair, 2% true-CTR gap")
        axis.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", nargs="+", choices=sorted(POPULATIONS), default=["realistic"])
    parser.add_argument("--kinds", nargs="+", choices=("stale", "popularity", "noise"), default=["stale", "popularity", "noise"])
    parser.add_argument("--users", type=int, default=2000, help="population users (types a run draws from)")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests-per-user", type=float, default=5.0)
    parser.add_argument("--activity-skew", type=float, default=None, help="override the population's Zipf exponent")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--aa-runs", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--ab-power", type=int, default=10, help="the agreement's A/B: this many times its needed users")
    parser.add_argument("--unit", choices=("request", "user"), default="request", help="interleaving's headline unit")
    parser.add_argument("--il-start", type=int, default=200, help="users at the start of interleaving's grid")
    parser.add_argument("--ab-start", type=int, default=2000, help="users at the start of A/B's grid")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the power curves")
    parser.add_argument("--from-json", type=Path, default=None, help="plot a saved --out file instead of running")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved, f"il_{args.unit}_sign")
        if args.plot:
            plot(saved, args.plot, saved["kinds"][0])
        return
    args.il_method = f"il_{args.unit}_sign"
    started = time.perf_counter()
    summary = {"runs": args.runs, "kinds": args.kinds, "populations": {name: measure(name, args) for name in args.population}}
    summary["seconds"] = time.perf_counter() - started
    report(summary, args.il_method)
    print(f"{summary['seconds']:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    if args.plot:
        plot(summary, args.plot, args.kinds[0])


if __name__ == "__main__":
    main()
