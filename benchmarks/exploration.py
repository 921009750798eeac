"""Exploration policies on the simulator: clicks and regret against the oracle, and cold start.

    .venv/bin/python benchmarks/exploration.py [--requests 10000] [--seeds 5] [--plot benchmarks/exploration_regret.png]

In-process, not through HTTP (100k requests × 5 seeds × 6 policies through the API would take
days on this machine): the same policy objects the explore stage runs (`services.explore`), the
simulator's position-based click model and truth (`pipelines.simulate.click_model`), and the
attribution store's count arithmetic in memory:

- population: 200 users, 160 items at the start and 40 more (20% of the final catalog) arriving
  at the middle of the run (`PopulationParams.new_items_at`), 16-dimensional planted vectors;
- ranker: one non-personalised score per item, the population-average attractiveness at step 0
  plus N(0, 0.02) noise (a popularity ranker); an item arriving later has no history and ranks last
  (score 0). Every arrived item is a candidate (200 at the end), k = 10 slots, η = 1;
- feedback as the stream job applies it, in batches of `--batch` requests (its freshness):
  impressions and clicks per (item, position), θ_k from the per-position counts with
  `feature_store.position_bias.examination`, examined counts E_i = Σ_k θ_k n_{i,k}; LinUCB's
  (A_i⁻¹, b_i) with `feature_store.linucb_store.linucb_update`, context x_t = the normalised mean
  item vector of the user's last 10 clicked items. `linucb` takes the planted vectors (d = 16, the
  optimistic case of a perfect embedding); `linucb categories` takes what the service serves, each
  item's category signature as the batch layer writes it (d = 32, computed once per population by
  `pipelines.spark.jobs.batch_features.category_signature` on local Spark);
- regret per request = oracle expected clicks − the shown list's expected clicks (the truth's exact
  expectations, not the drawn clicks); clicks are drawn from the click model.

Reported per policy: mean clicks per request and cumulative regret with 95% CIs over seeds
(t-distribution), clicks relative to greedy; cold start: per new item, impressions until its
debiased CTR (`position_bias.debiased_ctr`) is within ±20% of its true activity-weighted mean
attractiveness.

`--ope`: OPE accuracy (issue 19). Per seed, 200 items (no arrivals), `--warmup` ε-greedy requests
fill the statistics, which then freeze; `--requests` more ε-greedy (ε = 0.2) requests are logged
with their clicks; greedy, UCB1, Thompson and LinUCB with the frozen statistics are estimated from
that log (`services.explore.ope`: IPS, SNIPS, DR with the position-based reward model), and
compared with each target's true CTR per slot on the same requests (the truth's expected clicks
of the target's slates, 4 draws per request for Thompson).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_store.linucb_store import linucb_update  # noqa: E402
from feature_store.position_bias import CLICK, IMPRESSION, debiased_ctr, examination  # noqa: E402
from pipelines.simulate.click_model import GroundTruth, PositionBasedModel  # noqa: E402
from pipelines.simulate.population import PopulationParams, make_population  # noqa: E402
from services.explore.epsilon_greedy import EpsilonGreedy  # noqa: E402
from services.explore.greedy import Greedy  # noqa: E402
from services.explore.linucb import LinUcb  # noqa: E402
from services.explore.ope.estimators import estimate  # noqa: E402
from services.explore.ope.replay import Decision, reward_model, slate_logs  # noqa: E402
from services.explore.policy import ItemCounts, LinearStats, Policy, Ranked  # noqa: E402
from services.explore.thompson import Thompson  # noqa: E402
from services.explore.ucb import Ucb1  # noqa: E402

K, HISTORY, COLD_TOLERANCE = 10, 10, 0.2


def policies() -> dict[str, Policy]:
    """The simulated policies. Thompson's slates are one posterior draw whatever `draws` is (that
    only sets the propensity estimate, which clicks and regret do not use), so one draw here."""
    return {"greedy": Greedy(), "eps 0.05": EpsilonGreedy(0.05), "eps 0.1": EpsilonGreedy(0.1),
            "ucb1": Ucb1(10.0), "ucb1 c=0.1": Ucb1(10.0, c=0.1), "thompson": Thompson(10.0, draws=1),
            "linucb": LinUcb(1.0), "linucb categories": LinUcb(1.0)}


#: The LinUCB runs whose item vectors are the batch layer's category signatures, not the planted ones.
CATEGORY_CONTEXT = {"linucb categories"}


@dataclass
class Feedback:
    """What the stream job would have written, applied every `batch` requests."""

    items: int
    dim: int
    linear: bool = True  # keep LinUCB's statistics (only a LinUCB run reads them)
    shown: np.ndarray = field(init=False)  # (items, K) impressions per position
    clicked: np.ndarray = field(init=False)  # (items, K) clicks per position
    A_inv: np.ndarray = field(init=False)
    b: np.ndarray = field(init=False)
    pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shown, self.clicked = np.zeros((self.items, K)), np.zeros((self.items, K))
        self.A_inv, self.b = np.tile(np.eye(self.dim), (self.items, 1, 1)), np.zeros((self.items, self.dim))

    def record(self, items: np.ndarray, clicks: np.ndarray, x: np.ndarray | None) -> None:
        self.pending.append((items, clicks, x))

    def apply(self) -> None:
        for items, clicks, x in self.pending:
            slots = np.arange(len(items))
            self.shown[items, slots] += 1
            self.clicked[items, slots] += clicks
            for item, click in zip(items, clicks) if self.linear and x is not None else ():
                self.A_inv[item], self.b[item] = linucb_update(self.A_inv[item], self.b[item], x, float(click))
        self.pending.clear()

    def counts(self) -> ItemCounts:
        theta = examination({str(k): {IMPRESSION: int(self.shown[:, k].sum()), CLICK: int(self.clicked[:, k].sum())}
                             for k in range(K)})
        weights = np.array([theta[str(k)] for k in range(K)])
        return ItemCounts(self.shown @ weights, self.clicked.sum(axis=1))


def exploration_params(seed: int, requests: int) -> PopulationParams:
    return PopulationParams(users=200, items=160, new_items=40, new_items_at=requests // 2, dim=16, seed=seed)


def run(name: str, policy: Policy, seed: int, requests: int, batch: int, progress: Progress, task: int,
        signatures: np.ndarray | None = None) -> dict:
    """One policy on one seed; `signatures` (items × d): the item vectors of LinUCB's context
    instead of the planted ones."""
    params = exploration_params(seed, requests)
    population = make_population(params)
    vectors = population.item_vectors if signatures is None else signatures
    truth = GroundTruth(population, PositionBasedModel(1.0))
    n = params.total_items
    # Separate streams, so every policy of a seed meets the same users and the same ranker noise.
    rng, users, choices, draws = (np.random.default_rng([seed, stream]) for stream in range(4))
    everyone = np.stack([truth._every_item(population.user_id(u), 0) for u in range(params.users)])
    popularity = population.user_activity @ everyone + rng.normal(0, 0.02, n)
    popularity[population.item_arrival > 0] = 0.0
    linear = policy.needs is LinearStats
    feedback, counts = Feedback(n, vectors.shape[1], linear), None
    recent: dict[int, list[int]] = {}
    regret, clicks = np.zeros(requests), np.zeros(requests)
    new = np.flatnonzero(population.item_arrival > 0)
    cold_hit = np.full(len(new), -1.0)
    ids = [population.item_id(i) for i in range(n)]
    seen = truth.model.examination(K)
    rankings: dict[int, tuple[np.ndarray, Ranked]] = {}  # by the number of arrived items (arrivals only add)
    # The truth's click model and oracle from one attractiveness vector per request (the same
    # arithmetic and random draws as GroundTruth.draw_clicks/expected_clicks/oracle_clicks, 4x faster).
    for step in range(requests):
        if step % batch == 0:
            feedback.apply()
            counts = feedback.counts()
            if step >= requests // 2:
                _cold_start(feedback, counts, new, population, everyone_at(truth, population, params, step), cold_hit)
        user = int(users.choice(params.users, p=population.user_activity))
        user_id = population.user_id(user)
        exists = population.arrived(step)
        if int(exists.sum()) not in rankings:
            arrived = np.flatnonzero(exists)
            order = arrived[np.argsort(-popularity[arrived], kind="stable")]
            rankings[int(exists.sum())] = order, Ranked(tuple(ids[i] for i in order), popularity[order])
        order, ranked = rankings[int(exists.sum())]
        x = _context(vectors, recent.get(user, [])) if linear else None
        stats = (ItemCounts(counts.examined[order], counts.clicks[order]) if policy.needs is ItemCounts
                 else LinearStats.from_inverse(feedback.A_inv[order], feedback.b[order], x)
                 if linear else None)
        slate = policy.choose(ranked, K, choices, stats)
        shown = order[list(slate.positions)]
        every = truth._every_item(user_id, step)
        drawn = draws.random(len(shown)) < seen[:len(shown)] * every[shown]
        feedback.record(shown, drawn.astype(float), x)
        recent[user] = (recent.get(user, []) + [int(i) for i in shown[drawn]])[-HISTORY:]
        clicks[step] = drawn.sum()
        best = np.sort(np.partition(np.where(exists, every, -1.0), len(every) - K)[-K:])[::-1]
        regret[step] = seen @ best - seen[:len(shown)] @ every[shown]
        if step % 500 == 0:
            progress.update(task, advance=500)
    return {"clicks": clicks, "regret": regret, "cold": cold_hit}


def category_signatures(seeds: int, requests: int) -> dict[int, np.ndarray]:
    """Per seed, every item's LinUCB context as the batch layer computes it (its one category,
    named as the simulator names it, through `category_signature` on local Spark)."""
    import tempfile

    from feature_store.linucb_store import context_dim
    from feature_store.settings import Settings
    from pipelines.spark.jobs.batch_features import category_signature
    from pipelines.spark.session import build_session

    rows = []
    for seed in range(seeds):
        population = make_population(exploration_params(seed, requests))
        rows += [(seed, i, [population.category_id(int(c))]) for i, c in enumerate(population.item_category)]
    with tempfile.TemporaryDirectory() as work:
        spark = build_session(Settings(state_dir=work), "bench-exploration", {"spark.ui.enabled": "false"})
        try:
            frame = spark.createDataFrame(rows, "seed int, item int, categories array<string>")
            signed = frame.select("seed", "item", category_signature("categories", context_dim()).alias("x")).collect()
        finally:
            spark.stop()
    out = {seed: np.zeros((sum(1 for r in rows if r[0] == seed), context_dim())) for seed in range(seeds)}
    for row in signed:
        out[row["seed"]][row["item"]] = row["x"]
    return out


def everyone_at(truth: GroundTruth, population, params: PopulationParams, step: int) -> np.ndarray:
    """Activity-weighted mean attractiveness of every item at `step`: an item's true CTR."""
    rows = np.stack([truth._every_item(population.user_id(u), step) for u in range(params.users)])
    return population.user_activity @ rows


def _cold_start(feedback: Feedback, counts: ItemCounts, new: np.ndarray, population, true_ctr: np.ndarray,
                hit: np.ndarray) -> None:
    estimate = debiased_ctr(counts.clicks[new], counts.examined[new])
    close = np.abs(estimate - true_ctr[new]) <= COLD_TOLERANCE * true_ctr[new]
    shown = feedback.shown[new].sum(axis=1)
    first = (hit < 0) & close & (shown > 0)
    hit[first] = shown[first]


def _context(vectors: np.ndarray, recent: list[int]) -> np.ndarray:
    """The service's x_t (`services.explore.stats.ExploreStats.user_vector`): the normalised mean
    vector of the user's recent items."""
    if not recent:
        return np.zeros(vectors.shape[1])
    mean = vectors[recent].mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


OPE_TARGETS = {"greedy": Greedy(), "ucb1": Ucb1(10.0), "thompson": Thompson(10.0), "linucb": LinUcb(1.0)}


def ope_accuracy(seed: int, warmup: int, requests: int, progress: Progress, task: int,
                 targets: Sequence[str] = tuple(OPE_TARGETS), true_theta: bool = False) -> dict[str, dict[str, float]]:
    """Log `requests` ε-greedy (0.2) slates with statistics frozen after `warmup` ε-greedy requests,
    estimate each target from the log, and return {target: {estimator: relative error, "true": CTR,
    "<estimator> se": the bootstrap standard error relative to the truth, "<estimator> covers": 0/1}}."""
    params = PopulationParams(users=200, items=200, dim=16, seed=seed)
    population = make_population(params)
    truth = GroundTruth(population, PositionBasedModel(1.0))
    rng, users, choices, draws = (np.random.default_rng([seed, stream, 7]) for stream in range(4))
    ids = [population.item_id(i) for i in range(params.items)]
    everyone = np.stack([truth._every_item(population.user_id(u), 0) for u in range(params.users)])
    order = np.argsort(-(population.user_activity @ everyone + rng.normal(0, 0.02, params.items)))
    ranked = Ranked(tuple(ids[i] for i in order), np.linspace(1.0, 0.0, params.items))
    logging, feedback, recent = EpsilonGreedy(0.2), Feedback(params.items, params.dim), {}
    decisions, requesters = [], []
    for step in range(warmup + requests):
        if step == warmup:
            feedback.apply()
            counts = feedback.counts()
            counts = ItemCounts(counts.examined[order], counts.clicks[order])
            frozen = LinearStats.pack(feedback.A_inv[order], feedback.b[order])  # shared by every logged request (memory)
        user = int(users.choice(params.users, p=population.user_activity))
        x = _context(population.item_vectors, recent.get(user, []))
        slate = logging.choose(ranked, K, choices, None)
        shown = order[list(slate.positions)]
        drawn = truth.draw_clicks(population.user_id(user), slate.item_ids, step, draws)
        recent[user] = (recent.get(user, []) + [int(i) for i in shown[drawn]])[-HISTORY:]
        if step < warmup:
            feedback.record(shown, drawn.astype(float), x)
            continue
        linear = LinearStats.from_packed(frozen, x)  # views: no copy per request
        decisions.append(Decision(ranked, counts, slate, drawn, linear))
        requesters.append(population.user_id(user))
        if step % 500 == 0:
            progress.update(task, advance=500)
    rewards = reward_model(decisions)
    if true_theta:  # diagnostic: the click model's own examination instead of the estimate
        rewards.theta = truth.model.examination(K)
    out = {}
    for name in targets:
        target = OPE_TARGETS[name]
        logs = slate_logs(decisions, logging, target, rewards, np.random.default_rng([seed, 9]), samples=2)
        true = np.mean([truth.expected_clicks(u, target.choose(d.ranked, K, choices, d.stats_for(target)).item_ids, warmup)
                        for u, d in zip(requesters, decisions) for _ in range(1 if target.deterministic else 4)]) / K
        estimates = estimate(logs, bootstrap=500, seed=seed)
        out[name] = {"true": float(true), **{e: v.value / true - 1 for e, v in estimates.items()},
                     **{f"{e} covers": float(v.low <= true <= v.high) for e, v in estimates.items()},
                     **{f"{e} se": (v.high - v.low) / (2 * 1.96 * true) for e, v in estimates.items()}}
    return out


def ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width over seeds (t-distribution)."""
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100, help="requests between two stream updates")
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/exploration_regret.png"))
    parser.add_argument("--policies", nargs="+", default=None, help="a subset of the policies (greedy is always run)")
    parser.add_argument("--ope", action="store_true", help="measure OPE accuracy instead (ε-greedy 0.2 logs)")
    parser.add_argument("--warmup", type=int, default=2000, help="--ope: ε-greedy requests before the statistics freeze")
    parser.add_argument("--targets", nargs="+", choices=list(OPE_TARGETS), default=list(OPE_TARGETS),
                        help="--ope: the target policies to estimate")
    parser.add_argument("--true-theta", action="store_true",
                        help="--ope diagnostic: weight with the click model's examination, not the one estimated from the log")
    args = parser.parse_args()
    console = Console()
    if args.ope:
        with Progress(console=console) as progress:
            task = progress.add_task("logging", total=args.seeds * args.requests)
            runs = [ope_accuracy(seed, args.warmup, args.requests, progress, task, args.targets, args.true_theta)
                    for seed in range(args.seeds)]
        report_ope(console, runs, args)
        return
    chosen = {name: policy for name, policy in policies().items()
              if args.policies is None or name in args.policies or name == "greedy"}
    results: dict[str, list[dict]] = {name: [] for name in chosen}
    signatures = category_signatures(args.seeds, args.requests) if CATEGORY_CONTEXT & set(chosen) else {}
    with Progress(console=console) as progress:
        task = progress.add_task("simulating", total=len(results) * args.seeds * args.requests)
        for seed in range(args.seeds):
            for name, policy in chosen.items():
                results[name].append(run(name, policy, seed, args.requests, args.batch, progress, task,
                                         signatures.get(seed) if name in CATEGORY_CONTEXT else None))
    report(console, results, args)


def report_ope(console: Console, runs: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    table = Table(title=f"OPE from ε-greedy (0.2) logs: {args.requests} requests × {args.seeds} seeds; "
                        "relative error (mean ± 95% CI over seeds), CI coverage of the truth")
    for column in ("target", "true CTR / slot", "IPS", "SNIPS", "DR", "covered (IPS/SNIPS/DR)"):
        table.add_column(column)
    for target in runs[0]:
        cells = [f"{ci(np.array([r[target]['true'] for r in runs]))[0]:.4f}"]
        for name in ("ips", "snips", "dr"):
            mean, half = ci(np.array([r[target][name] for r in runs]))
            cells.append(f"{mean:+.1%} ± {half:.1%}")
        covered = [sum(r[target][f"{e} covers"] for r in runs) for e in ("ips", "snips", "dr")]
        cells.append(" / ".join(f"{c:.0f}" for c in covered) + f" of {len(runs)}")
        table.add_row(target, *cells)
    console.print(table)
    seeds = Table(title="Per seed: relative error (error / bootstrap standard error); variance alone gives |z| < 2 in ~95% of cells")
    for column in ("target", "seed", "IPS", "SNIPS", "DR"):
        seeds.add_column(column)
    for target in runs[0]:
        for seed, r in enumerate(runs):
            seeds.add_row(target, str(seed), *(f"{r[target][e]:+.1%} ({r[target][e] / r[target][f'{e} se']:+.1f})"
                                               for e in ("ips", "snips", "dr")))
    console.print(seeds)


def report(console: Console, results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = Table(title=f"{args.requests} requests × {args.seeds} seeds, k = {K}, 95% CIs over seeds")
    for column in ("policy", "clicks / request", "vs greedy", "cumulative regret", "new items learned",
                   "impressions to ±20% (median)"):
        table.add_column(column)
    greedy = np.array([r["clicks"].mean() for r in results["greedy"]])
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, runs in results.items():
        per_seed = np.array([r["clicks"].mean() for r in runs])
        lift = per_seed / greedy - 1  # paired by seed: the same population and users
        cumulative = np.stack([np.cumsum(r["regret"]) for r in runs])
        cold = np.concatenate([r["cold"] for r in runs])
        mean, half = ci(per_seed)
        lift_mean, lift_half = ci(lift)
        regret_mean, regret_half = ci(cumulative[:, -1])
        learned = cold >= 0
        table.add_row(name, f"{mean:.4f} ± {half:.4f}", f"{lift_mean:+.1%} ± {lift_half:.1%}",
                      f"{regret_mean:.0f} ± {regret_half:.0f}", f"{learned.mean():.0%}",
                      f"{np.median(cold[learned]):.0f}" if learned.any() else "never")
        steps = np.arange(1, args.requests + 1)
        centre = cumulative.mean(axis=0)
        spread = scipy_stats.t.ppf(0.975, max(len(runs) - 1, 1)) * cumulative.std(axis=0, ddof=1) / np.sqrt(len(runs))
        axis.plot(steps, centre, label=name)
        axis.fill_between(steps, centre - spread, centre + spread, alpha=0.2)
    axis.axvline(args.requests // 2, color="grey", linestyle=":", label="20% new items arrive")
    axis.set_xlabel("request")
    axis.set_ylabel("cumulative regret (expected clicks vs oracle)")
    axis.set_title(f"Exploration on the simulator ({args.seeds} seeds, 95% CI)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(args.plot, dpi=110)
    console.print(table)
    console.print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
