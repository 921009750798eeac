"""The A/B guardrail looked at again and again: how often it stops a healthy arm, one sitting on
the allowed drop and arms that truly fell, and how soon.

Users arrive in order, each with all of their impressions, half in each arm; the guardrail (10%
allowed drop, p < 0.01) is looked at `--looks` times as they arrive, as the API's monitor does
every `experiments.guardrail_interval_s`. Users are drawn from one of two populations:

- `ml-100k`: MovieLens 100k's users resampled, each rating an impression and a rating of 4 or
  more a click: a user's impressions and click propensity are a real user's;
- `lognormal`: impressions `1 + Poisson(20 LogNormal(0, 1))`, propensity `0.1 LogNormal(−0.5, 1)`.

A treatment arm's users click at `ratio` times their own propensity. Three rules:

- `z, impressions`: the fixed-horizon one-sided z at the boundary on impression counts (the rule
  before the always-valid test);
- `mSPRT, users so far`: `analysis.guardrail_p`, each arm's design effect from its users so far
  (what the batch layer's per-user rows give the service);
- `mSPRT, default`: the same with `analysis.DEFAULT_DESIGN_EFFECT` (no per-user rows yet).

It also prints MovieLens 100k's design effect, the figure behind the default.

    .venv/bin/python benchmarks/guardrail.py --runs 300 --looks 50 --users 4000
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table
from scipy import stats

from services.experiments import analysis

DROP, ALPHA = 0.10, 0.01
RATIOS = {"healthy (A/A)": 1.0, "on the boundary (-10%)": 0.9, "-30%": 0.7, "broken (-60%)": 0.4}
Population = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def movielens(path: Path) -> Population:
    """Users resampled from ml-100k: (impressions, click propensity) of real users."""
    ratings = np.loadtxt(path / "u.data", dtype=np.int64, usecols=(0, 2))
    users, index = np.unique(ratings[:, 0], return_inverse=True)
    shown = np.bincount(index).astype(float)
    propensity = np.bincount(index, weights=ratings[:, 1] >= 4) / shown

    def draw(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
        picks = rng.integers(len(users), size=m)
        return shown[picks], propensity[picks]

    return draw


def lognormal(rng: np.random.Generator, m: int) -> tuple[np.ndarray, np.ndarray]:
    shown = 1 + rng.poisson(20 * rng.lognormal(0.0, 1.0, m))
    return shown.astype(float), np.clip(0.1 * rng.lognormal(-0.5, 1.0, m), 0, 1)


def fixed_z(c_t: int, n_t: int, c_0: int, n_0: int) -> float:
    """The previous rule: one-sided z at the boundary on impression counts, fixed horizon."""
    p_t, p_0 = c_t / n_t, c_0 / n_0
    b = (1 - DROP) * p_0
    if n_t * b < analysis.GUARDRAIL_MIN_EXPECTED:
        return 1.0
    variance = b * (1 - b) / n_t + (1 - DROP) ** 2 * p_0 * (1 - p_0) / n_0
    return float(stats.norm.cdf((p_t - b) / math.sqrt(variance)))


def first_stop(rng: np.random.Generator, population: Population, users: int, looks: int, ratio: float) -> dict[str, int | None]:
    """The look at which each rule first stopped the arm (None: never), on one arriving population."""
    shown, propensity = population(rng, users)
    arm = rng.random(users) < 0.5
    propensity = np.where(arm, np.clip(propensity * ratio, 0, 1), propensity)
    clicks = rng.binomial(shown.astype(np.int64), propensity).astype(float)
    stops: dict[str, int | None] = {"z, impressions": None, "mSPRT, users so far": None, "mSPRT, default": None}
    for look in range(1, looks + 1):
        upto = np.arange(users) < users * look // looks
        t, c = upto & arm, upto & ~arm
        counts = (int(clicks[t].sum()), int(shown[t].sum()), int(clicks[c].sum()), int(shown[c].sum()))
        effects = [analysis.design_effect(clicks[s], shown[s]) for s in (t, c)]
        effects = [e if math.isfinite(e) else analysis.DEFAULT_DESIGN_EFFECT for e in effects]
        p = {"z, impressions": fixed_z(*counts),
             "mSPRT, users so far": analysis.guardrail_p(*counts, DROP, *effects),
             "mSPRT, default": analysis.guardrail_p(*counts, DROP, analysis.DEFAULT_DESIGN_EFFECT,
                                                    analysis.DEFAULT_DESIGN_EFFECT)}  # fmt: skip
        for rule, value in p.items():
            if stops[rule] is None and value < ALPHA:
                stops[rule] = look
    return stops


def movielens_design_effect(path: Path) -> float:
    ratings = np.loadtxt(path / "u.data", dtype=np.int64, usecols=(0, 2))
    _, index = np.unique(ratings[:, 0], return_inverse=True)
    return analysis.design_effect(np.bincount(index, weights=ratings[:, 1] >= 4), np.bincount(index).astype(float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--looks", type=int, default=50)
    parser.add_argument("--users", type=int, default=4000)
    parser.add_argument("--movielens", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ml-100k")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    console = Console()
    populations: dict[str, Population] = {"lognormal": lognormal}
    if (args.movielens / "u.data").exists():
        populations = {"ml-100k": movielens(args.movielens), **populations}
        console.print(f"MovieLens 100k's design effect (943 users): {movielens_design_effect(args.movielens):.1f}")
    rng = np.random.default_rng(args.seed)
    table = Table(title=f"guardrail stops over {args.runs} runs, {args.looks} looks, {args.users:,} users "
                        f"(10% allowed drop, alpha {ALPHA})")  # fmt: skip
    for column in ("population", "treatment", "rule", "stopped [95% CI]", "median look"):
        table.add_column(column)
    for name, population in populations.items():
        for label, ratio in RATIOS.items():
            runs = [first_stop(rng, population, args.users, args.looks, ratio)
                    for _ in track(range(args.runs), description=f"{name}, {label}")]
            for rule in runs[0]:
                looks = [run[rule] for run in runs if run[rule] is not None]
                rate = analysis.wilson(len(looks), len(runs))
                table.add_row(name, label, rule, f"{rate.estimate:.3f} [{rate.low:.3f}, {rate.high:.3f}]",
                              f"{np.median(looks):.0f}" if looks else "-")
    console.print(table)


if __name__ == "__main__":
    main()
