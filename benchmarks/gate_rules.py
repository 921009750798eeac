"""Replay promotion rules for the serving gate on the evidence of recorded runs (issue 17).

    .venv/bin/python benchmarks/online_learning.py --methods "pdgd (gated)" --seeds 20 --traces t0.npz
    .venv/bin/python benchmarks/gate_rules.py t0.npz [t20.npz ...] [--rules "window 250 0.05" "cusum 0.6 4" ...]

`online_learning.py --traces` saves, per seed and condition (drift / no drift), frozen's and the
oracle's CTR per step and the gated PDGD learner's evidence: the base's and `w`'s own top-10 CTR per
step and each comparison's credit (w's clicks − the base's on the team-draft list). In that
benchmark the promotion decides only what the traffic outside the learning share would see, which
is computed, not simulated, so it feeds back into nothing: replaying another rule on the same
evidence gives exactly the figures a run with that rule would (the service's rule replayed here
reproduces the run's own table). Rules:

- `window M L [N]`: the service's gate (`services.learner.gate.ServingGate`): promote when the
  one-sided sign test over the last M decided comparisons is ≤ L and at least N (default 1) were
  decided, demote when wins no longer exceed losses;
- `count M L`: the same with a one-sided t-test of the mean credit difference (ties included);
- `cusum P H`: Page's CUSUM of the log-likelihood ratio of a win rate P against 1/2 (promote at H;
  once promoted the mirrored CUSUM demotes at H), the classic detector of a change;
- `never`, `always`: the base, or `w`, served throughout; `ideal`: knows the truth, serves `w`
  while its mean CTR over the last 300 requests was above the base's (no rule can do better).

Reported: recovery of the oracle's gap after the drift, the no-drift difference to the frozen
ranker (the issue's "loses nothing") and to the same run's base (the rule's own cost: the learning
share's lists also shape the users' histories, which moves the base a little), and how often `w`
was served; 95% t intervals over seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.learner.gate import ServingGate  # noqa: E402

Rule = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (compared, credit) -> served before each step
DEFAULT_RULES = ("never", "always", "ideal", "window 250 0.05", "window 250 0.05 50", "window 250 0.01", "window 150 0.05",
                 "window 400 0.05", "count 250 0.05", "cusum 0.6 3", "cusum 0.6 4", "cusum 0.65 4")


def window_rule(window: int, level: float, least: int = 1) -> Rule:
    def served(compared: np.ndarray, credit: np.ndarray) -> np.ndarray:
        gate = ServingGate(np.zeros(1), window=window, level=level, min_comparisons=least)
        state = np.zeros(len(credit), dtype=bool)
        for step in range(len(credit)):
            state[step] = gate.promoted  # a step is ranked before its own comparison is credited
            if compared[step] and credit[step] != 0:
                gate.record_credit(int(credit[step] < 0), int(credit[step] > 0))
        return state
    return served


def count_rule(window: int, level: float) -> Rule:
    def served(compared: np.ndarray, credit: np.ndarray) -> np.ndarray:
        recent: deque[float] = deque(maxlen=window)
        promoted, state = False, np.zeros(len(credit), dtype=bool)
        for step in range(len(credit)):
            state[step] = promoted
            if not compared[step]:
                continue
            recent.append(float(credit[step]))
            values = np.fromiter(recent, float)
            if len(values) < 2 or values.std(ddof=1) == 0:
                continue
            t = values.mean() / (values.std(ddof=1) / np.sqrt(len(values)))
            promoted = values.mean() > 0 if promoted else stats.t.sf(t, len(values) - 1) <= level
        return state
    return served


def cusum_rule(rate: float, threshold: float) -> Rule:
    win, loss = np.log(rate / 0.5), np.log((1 - rate) / 0.5)

    def served(compared: np.ndarray, credit: np.ndarray) -> np.ndarray:
        score, promoted, state = 0.0, False, np.zeros(len(credit), dtype=bool)
        for step in range(len(credit)):
            state[step] = promoted
            if not compared[step] or credit[step] == 0:
                continue
            favours = (credit[step] > 0) != promoted  # evidence for switching
            score = max(0.0, score + (win if favours else loss))
            if score >= threshold:
                promoted, score = not promoted, 0.0
        return state
    return served


def parse_rule(text: str) -> Rule | str:
    name, *values = text.split()
    if name in ("never", "always", "ideal"):
        return name
    builders = {"window": lambda m, l, n="1": window_rule(int(m), float(l), int(n)),
                "count": lambda m, l: count_rule(int(m), float(l)), "cusum": lambda p, h: cusum_rule(float(p), float(h))}
    try:
        return builders[name](*values)
    except (KeyError, TypeError, ValueError):
        raise SystemExit(f"error: unknown rule {text!r}: never | always | ideal | window M L [N] | count M L | cusum P H") from None


def served_by(rule: Rule | str, run: dict[str, np.ndarray]) -> np.ndarray:
    if rule == "never":
        return np.zeros(len(run["credit"]), dtype=bool)
    if rule == "always":
        return np.ones(len(run["credit"]), dtype=bool)
    if rule == "ideal":
        gain = np.convolve(run["learned"] - run["base"], np.ones(300) / 300)[: len(run["base"])]
        return np.r_[False, gain[:-1] > 0]
    return rule(run["compared"], run["credit"])  # type: ignore[operator]


def load(paths: list[Path]) -> tuple[int, dict[str, list[dict[str, np.ndarray]]]]:
    runs: dict[str, dict[str, dict[str, np.ndarray]]] = {"drift": {}, "steady": {}}
    pre = None
    for path in paths:
        with np.load(path) as data:
            pre = int(data["pre"])
            for key in data.files:
                if key != "pre":
                    condition, seed, field = key.split("/")
                    runs[condition].setdefault(f"{path}:{seed}", {})[field] = data[key]
    assert pre is not None, "no traces given"
    return pre, {condition: list(by_seed.values()) for condition, by_seed in runs.items()}


def interval(values: list[float], scale: float = 1.0, digits: int = 6) -> str:
    v = np.asarray(values) * scale
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    unit = "%" if scale == 100 else ""
    return f"{v.mean():+.{digits}f}{unit} [{v.mean() - half:+.{digits}f}, {v.mean() + half:+.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="+", type=Path, help="files written by online_learning.py --traces")
    parser.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES))
    args = parser.parse_args()
    pre, runs = load(args.traces)
    table = Table(title=f"{len(runs['drift'])} seeds; 95% t intervals over seeds")
    for column in ("rule", "recovery (own top-10)", "no drift: own − frozen", "no drift: own − base (same run)",
                   "w served (drift / no drift)"):
        table.add_column(column)
    for text in args.rules:
        rule = parse_rule(text)
        recovery, versus_frozen, versus_base, shares = [], [], [], ([], [])
        for run in runs["drift"]:
            state = served_by(rule, run)
            own = np.where(state, run["learned"], run["base"])[pre:].mean()
            frozen, oracle = run["frozen"][pre:].mean(), run["oracle"][pre:].mean()
            recovery.append((own - frozen) / (oracle - frozen))
            shares[0].append(state.mean())
        for run in runs["steady"]:
            state = served_by(rule, run)
            own = np.where(state, run["learned"], run["base"]).mean()
            versus_frozen.append(own - run["frozen"].mean())
            versus_base.append(own - run["base"].mean())
            shares[1].append(state.mean())
        table.add_row(text, interval(recovery, 100, 1), interval(versus_frozen), interval(versus_base),
                      f"{np.mean(shares[0]):.1%} / {np.mean(shares[1]):.1%}")
    Console().print(table)


if __name__ == "__main__":
    main()
