"""Online learning on the simulator with preference drift: frozen ranker vs DBGD vs PDGD vs an
oracle retrained on post-drift data (issue 17).

    .venv/bin/python benchmarks/online_learning.py [--seeds 5] [--pre 1500] [--post 4500] \\
        [--methods pdgd "dbgd (tuned)" ...] [--plot benchmarks/online_learning.png]

In-process, not through HTTP: the learners are the library the service would run
(`services.learner`: `Dbgd`, `Pdgd`), clicks come from the simulator's position-based click model
and truth (`pipelines.simulate.click_model`, η = 1), k = 10 slots, every item is a candidate.

- population: 200 users, 200 items, 16 dimensions; drift at step `--pre` (each user's vector turns
  toward another category, λ = 0.8); the no-drift condition is the same population without it;
- ranker: a linear head over fixed penultimate features
  `h(u, i) = [û_u ⊙ v_i, r_u ⊙ v_i, b_i]` (33 numbers): û_u the user's long-term profile (the
  planted pre-drift unit vector: what a trained base has learned about the user and keeps after the
  drift), r_u the unit mean vector of the user's last 10 clicked items (a live feature), v_i the
  item vector, b_i the item's popularity term. Only the head's weights learn online;
- frozen: the head fitted (logistic regression, the truth's click probabilities as soft labels) on
  `--train` requests logged before the drift by a popularity Plackett–Luce policy; oracle: the same
  fit on `--train` requests logged after the drift, served from the drift on (the best a retrain of
  this ranker could do); DBGD (DRN's α = 0.1, η = 0.05, one comparison per round, and the values
  the simulation prefers, `--alpha/--eta/--comparisons/--margin/--significance`, by default the
  settings' defaults) and PDGD (`--lr`; `--sharpness` c: from c × the frozen head, the same
  ranking with a sharper Plackett–Luce list) start from the frozen head at step 0 and learn from
  every request (a 100% learning share); DBGD A/A uses w̃ = w;
- reported: CTR (expected clicks / k under the truth, not the drawn clicks) of the served list
  (the interleaved list for DBGD, the Plackett–Luce list for PDGD) and of the learner's own top-10
  (what the traffic outside the learning share would see), after the drift; recovery of the gap
  `(learner − frozen) / (oracle − frozen)` per seed; the no-drift difference to the frozen ranker;
  95% CIs over seeds (t-distribution).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy import optimize
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel  # noqa: E402
from pipelines.simulate.population import PopulationParams, make_population  # noqa: E402
from services.experiments.interleaving import team_credit  # noqa: E402
from services.learner.base import OnlineLearner, top_k  # noqa: E402
from services.learner.dbgd import Dbgd  # noqa: E402
from services.learner.gate import Gated, ServingGate  # noqa: E402
from services.learner.pdgd import Pdgd, starting_weights  # noqa: E402

K, HISTORY = 10, 10
LEARNERS = ("dbgd (DRN defaults)", "dbgd (tuned)", "dbgd A/A", "pdgd", "pdgd (gated)")


class World:
    """One seed's population, truth, and the users' click histories (a live feature)."""

    def __init__(self, seed: int, drift_at: int | None) -> None:
        self.population = make_population(PopulationParams(users=200, items=200, dim=16, seed=seed, drift_at=drift_at))
        self.truth = GroundTruth(self.population, PositionBasedModel(1.0))
        self.profile = self.population.user_vectors / self.population.params.affinity
        self.history: dict[int, list[int]] = {}

    def features(self, user: int) -> np.ndarray:
        """`h(u, i)` for every item (rows)."""
        v = self.population.item_vectors
        recent = self.history.get(user, [])
        r = v[recent].mean(axis=0) if recent else np.zeros(v.shape[1])
        r = r / max(float(np.linalg.norm(r)), 1e-12)
        return np.hstack([v * self.profile[user], v * r, self.population.item_bias[:, None]])

    def attractive(self, user: int, step: int) -> np.ndarray:
        return self.truth._every_item(self.population.user_id(user), step)

    def show(self, user: int, shown: np.ndarray, step: int, rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """Draw clicks on `shown`, update the user's history; returns the clicks and the expected clicks."""
        probability = self.attractive(user, step)[shown] / np.arange(1, len(shown) + 1)
        clicks = rng.random(len(shown)) < probability
        self.history[user] = (self.history.get(user, []) + [int(i) for i in shown[clicks]])[-HISTORY:]
        return clicks, float(probability.sum())


def fit_head(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logistic regression with soft labels (mean cross-entropy + 1e-4 ‖w‖²); returns w (no intercept)."""
    x = np.hstack([rows, np.ones((len(rows), 1))])

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        p = 1.0 / (1.0 + np.exp(-z))
        value = np.mean(np.logaddexp(0.0, z) - labels * z) + 1e-4 * w[:-1] @ w[:-1]
        grad = x.T @ (p - labels) / len(x)
        grad[:-1] += 2e-4 * w[:-1]
        return float(value), grad

    return optimize.minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x[:-1]


def logged(world: World, steps: range, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log a popularity Plackett–Luce policy over `steps`; the head fitted to the truth on its rows."""
    rows, labels = [], []
    bias = world.population.item_bias
    for step, user in zip(steps, users):
        shown = np.argsort(-(bias + rng.gumbel(size=len(bias))))[:K]
        rows.append(world.features(user)[shown])
        labels.append(world.attractive(user, step)[shown])
        world.show(user, shown, step, rng)
    return fit_head(np.vstack(rows), np.concatenate(labels))


def learners(frozen: np.ndarray, args: argparse.Namespace, seed: int) -> dict[str, OnlineLearner | None]:
    return {
        "frozen": None, "oracle": None,
        "dbgd (DRN defaults)": Dbgd(frozen, alpha=0.1, eta=0.05, max_step=args.max_step, seed=seed),
        "dbgd (tuned)": Dbgd(frozen, alpha=args.alpha, eta=args.eta, comparisons=args.comparisons,
                             margin=args.margin, significance=args.significance, max_step=args.max_step, seed=seed),
        "dbgd A/A": Dbgd(frozen, alpha=args.alpha, eta=args.eta, comparisons=args.comparisons, aa=True, seed=seed),
        "pdgd": Pdgd(starting_weights(frozen, args.sharpness), lr=args.lr, max_step=args.max_step),
        "pdgd (gated)": Gated(Pdgd(starting_weights(frozen, args.sharpness), lr=args.lr, max_step=args.max_step),
                              ServingGate(frozen, share=args.gate_share, window=args.gate_window, level=args.gate_level,
                                          min_comparisons=args.gate_min_comparisons, seed=seed)),
    }  # fmt: skip


def run_seed(seed: int, drift: bool, args: argparse.Namespace, progress: Progress, task: int) -> dict[str, dict]:
    """Every method on one seed; {method: {"served": (T,), "own": (T,), "explore_share": float}}."""
    steps = args.pre + args.post
    before = World(seed, None)
    pick = np.random.default_rng([seed, 1])
    activity = before.population.user_activity
    train_users = pick.choice(len(activity), size=2 * args.train, p=activity)
    users = pick.choice(len(activity), size=steps, p=activity)
    # The frozen head is fitted on a log without drift (it also warms the users' histories up), the
    # oracle on a log after the drift, continuing those histories.
    frozen = logged(before, range(args.train), train_users[: args.train], np.random.default_rng([seed, 2]))
    warm_history = {u: list(h) for u, h in before.history.items()}
    after = World(seed, args.pre)
    after.history = {u: list(h) for u, h in warm_history.items()}
    oracle = logged(after, range(args.pre, args.pre + args.train), train_users[args.train :],
                    np.random.default_rng([seed, 3])) if drift else frozen  # fmt: skip
    out = {}
    for name, learner in learners(frozen, args, seed).items():
        if learner is not None and name not in args.methods:
            continue
        world = World(seed, args.pre if drift else None)
        world.history = {u: list(h) for u, h in warm_history.items()}
        clicks_rng, list_rng = np.random.default_rng([seed, 4]), np.random.default_rng([seed, 5])
        served, own = np.zeros(steps), np.zeros(steps)
        promoted = 0
        # The gate's evidence, for replaying other promotion rules (benchmarks/gate_rules.py): the
        # base's and w's own top-k CTR and each comparison's credit (w's clicks − the base's).
        base_own, learned_own, credit = np.zeros(steps), np.zeros(steps), np.zeros(steps, dtype=np.int8)
        compared = np.zeros(steps, dtype=bool)
        start = None if learner is None else learner.weights.copy()
        for step, user in enumerate(users):
            features = world.features(int(user))
            attractive = world.attractive(int(user), step)
            if learner is None:
                w = oracle if name == "oracle" and step >= args.pre else frozen
                shown = np.argsort(-(features @ w), kind="stable")[:K]
            else:
                top = learner.rank(features, K)
                own[step] = expected_clicks(attractive, top)
                if isinstance(learner, Gated):
                    base_own[step] = expected_clicks(attractive, top_k(features @ learner.gate.base, K))
                    learned_own[step] = expected_clicks(attractive, top_k(features @ learner.weights, K))
                presentation = learner.present(features, K, list_rng)
                shown = np.array(presentation.shown)
            clicks, served[step] = world.show(int(user), shown, step, clicks_rng)
            if learner is None:
                own[step] = served[step]
            else:
                if isinstance(learner, Gated) and presentation is learner.comparison:
                    base, learned = team_credit(presentation.teams, [bool(c) for c in clicks], 2)
                    compared[step], credit[step] = True, learned - base
                learner.learn(presentation, clicks)
                promoted += isinstance(learner, Gated) and learner.gate.promoted
        share = learner.explore_wins / max(learner.explore_wins + learner.current_wins, 1) if isinstance(learner, Dbgd) else np.nan
        moved = float(np.linalg.norm(learner.weights - start)) if learner is not None else 0.0
        out[name] = {"served": served / K, "own": own / K, "explore_share": share, "moved": moved,
                     "promoted": promoted / steps if isinstance(learner, Gated) else np.nan}
        if isinstance(learner, Gated):
            out[name]["gate"] = {"base": base_own / K, "learned": learned_own / K, "compared": compared, "credit": credit}
        progress.update(task, advance=steps)
    return out


def expected_clicks(attractive: np.ndarray, ranking: np.ndarray) -> float:
    """Expected clicks on `ranking` under the position-based model (examination 1 / rank, η = 1)."""
    return float((attractive[ranking] / np.arange(1, len(ranking) + 1)).sum())


def save_traces(path: Path, drifted: list[dict], steady: list[dict], args: argparse.Namespace) -> None:
    """Per seed and condition, what a promotion rule needs to be replayed (benchmarks/gate_rules.py):
    frozen's and the oracle's CTR and the gated learner's evidence. Promotion feeds back into
    nothing here (the traffic outside the learning share is not simulated: its CTR is computed), so a
    replay of another rule on these traces is exact."""
    arrays = {}
    for condition, runs in (("drift", drifted), ("steady", steady)):
        for seed, run in zip(range(args.first_seed, args.first_seed + args.seeds), runs):
            prefix = f"{condition}/{seed}/"
            arrays[prefix + "frozen"], arrays[prefix + "oracle"] = run["frozen"]["served"], run["oracle"]["served"]
            arrays.update({prefix + key: value for key, value in run["pdgd (gated)"]["gate"].items()})
    np.savez_compressed(path, pre=args.pre, **arrays)


def ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% half-width over seeds (t-distribution)."""
    values = np.asarray(values, dtype=np.float64)
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def fmt(values: np.ndarray, percent: bool = False, digits: int = 4) -> str:
    mean, half = ci(values)
    return f"{mean:+.1%} ± {half:.1%}" if percent else f"{mean:.{digits}f} ± {half:.{digits}f}"


def report(console: Console, drifted: list[dict], steady: list[dict], args: argparse.Namespace) -> None:
    post = slice(args.pre, None)
    table = Table(title=f"Drift at step {args.pre}, {args.post} steps after it, {len(drifted)} seeds, k = {K}; "
                        "CTR after the drift; 95% CIs over seeds")  # fmt: skip
    for column in ("method", "served CTR", "own top-10 CTR", "recovery (served)", "recovery (own)",
                   "no drift: served − frozen", "no drift: own − frozen", "explore wins", "‖w − w0‖ (drift)",
                   "w served (drift / no drift)"):
        table.add_column(column)
    frozen = np.array([r["frozen"]["served"][post].mean() for r in drifted])
    gap = np.array([r["oracle"]["served"][post].mean() for r in drifted]) - frozen
    steady_frozen = np.array([r["frozen"]["served"].mean() for r in steady])
    for name in drifted[0]:
        served = np.array([r[name]["served"][post].mean() for r in drifted])
        own = np.array([r[name]["own"][post].mean() for r in drifted])
        shares = np.array([r[name]["explore_share"] for r in steady])
        table.add_row(
            name, fmt(served), fmt(own), fmt((served - frozen) / gap, True), fmt((own - frozen) / gap, True),
            fmt(np.array([r[name]["served"].mean() for r in steady]) - steady_frozen),
            fmt(np.array([r[name]["own"].mean() for r in steady]) - steady_frozen, digits=5),
            "" if np.isnan(shares).all() else fmt(shares, True).replace("+", ""),
            f"{np.mean([r[name]['moved'] for r in drifted]):.3f}",
            "" if name not in ("pdgd (gated)",) else
            f"{np.mean([r[name]['promoted'] for r in drifted]):.1%} / {np.mean([r[name]['promoted'] for r in steady]):.1%}",
        )  # fmt: skip
    console.print(table)
    console.print(f"CTR gap oracle − frozen after the drift: {fmt(gap)}")
    if args.output is not None:
        per_seed = {name: {"recovery_own": ((np.array([r[name]["own"][post].mean() for r in drifted]) - frozen) / gap).tolist(),
                           "no_drift_own": (np.array([r[name]["own"].mean() for r in steady]) - steady_frozen).tolist()}
                    for name in drifted[0]}  # fmt: skip
        args.output.write_text(json.dumps(per_seed, indent=1))
    plot(drifted, args)


def plot(drifted: list[dict], args: argparse.Namespace) -> None:
    """Left: CTR per method (mean over seeds); right: its difference to the frozen ranker, paired by
    seed, with the 95% CI. Moving means over `--window` requests; learners by their own top-10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = args.window
    figure, (levels, lifts) = plt.subplots(1, 2, figsize=(12, 4.5))
    smooth = lambda series: np.convolve(series, np.ones(window) / window, mode="valid")  # noqa: E731
    frozen = np.stack([smooth(r["frozen"]["served"]) for r in drifted])
    x = np.arange(window - 1, window - 1 + frozen.shape[1])
    for name in drifted[0]:
        key = "served" if name in ("frozen", "oracle") else "own"
        curves = np.stack([smooth(r[name][key]) for r in drifted])
        levels.plot(x, curves.mean(axis=0), label=name)
        lift = curves - frozen
        spread = scipy_stats.t.ppf(0.975, len(lift) - 1) * lift.std(axis=0, ddof=1) / np.sqrt(len(lift))
        lifts.plot(x, lift.mean(axis=0), label=name)
        lifts.fill_between(x, lift.mean(axis=0) - spread, lift.mean(axis=0) + spread, alpha=0.15)
    for axis, label in ((levels, "expected CTR"), (lifts, "CTR − frozen, 95% CI")):
        axis.axvline(args.pre, color="grey", linestyle=":", label="preference drift")
        axis.set_xlabel("request")
        axis.set_ylabel(f"{label}, moving mean over {window}")
    levels.legend(fontsize=8)
    figure.suptitle(f"Online learning after drift ({len(drifted)} seeds; learners: own top-10)")
    figure.tight_layout()
    figure.savefig(args.plot, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run: first-seed .. first-seed + seeds - 1")
    parser.add_argument("--pre", type=int, default=1500, help="requests before the drift")
    parser.add_argument("--post", type=int, default=4500, help="requests after the drift (until the next retrain)")
    parser.add_argument("--train", type=int, default=3000, help="logged requests each fit uses")
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--eta", type=float, default=0.015)
    parser.add_argument("--comparisons", type=int, default=1)
    parser.add_argument("--margin", type=float, default=0.0)
    parser.add_argument("--significance", type=float, default=1.0, help="DBGD's sign test level (1.0: none)")
    parser.add_argument("--lr", type=float, default=0.2, help="PDGD's learning rate (learner.lr's default)")
    parser.add_argument("--sharpness", type=float, default=5.0,
                        help="PDGD starts from this multiple of the frozen head (learner.sharpness's default)")
    parser.add_argument("--gate-share", type=float, default=0.3,
                        help="pdgd (gated): share of learning requests showing the base-vs-w comparison")
    parser.add_argument("--gate-window", type=int, default=250, help="pdgd (gated): decided comparisons in the sign test")
    parser.add_argument("--gate-level", type=float, default=0.05, help="pdgd (gated): the sign test's level")
    parser.add_argument("--gate-min-comparisons", type=int, default=50,
                        help="pdgd (gated): no promotion before this many decided comparisons (learner.gate_min_comparisons)")
    parser.add_argument("--max-step", type=float, default=1.0)
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--methods", nargs="+", choices=LEARNERS, default=list(LEARNERS),
                        help="learners to run (frozen and oracle always run)")
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/online_learning.png"))
    parser.add_argument("--output", type=Path, help="JSON of each method's per-seed recovery and no-drift difference (own top-10)")
    parser.add_argument("--traces", type=Path, help="pdgd (gated): save the gate's evidence per step (.npz) for gate_rules.py")
    args = parser.parse_args()
    console = Console()
    drifted, steady = [], []
    with Progress(console=console) as progress:
        methods = 2 + len(args.methods)
        task = progress.add_task("simulating", total=2 * args.seeds * methods * (args.pre + args.post))
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            drifted.append(run_seed(seed, True, args, progress, task))
            steady.append(run_seed(seed, False, args, progress, task))
    if args.traces is not None:
        save_traces(args.traces, drifted, steady, args)
        console.print(f"traces: {args.traces}")
    report(console, drifted, steady, args)
    console.print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
