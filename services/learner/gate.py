"""Serve the learned weights only once they beat the blessed base in an online comparison.

An online learner's `w` keeps learning on the learning share as before, but what the rest of the
traffic sees is the base until `w` has beaten it with confidence (in the service: the learner
process publishes the decision as the revision's `served` flag, `services.learner.process`, and the
API serves it, `services.learner.serving`; here also the benchmark's `Gated`). On a share `share` of the learning requests the shown list is instead the
team-draft interleaving (`services.experiments.interleaving.team_draft`; Radlinski et al., CIKM
2008) of the base's and `w`'s top-k, and a click credits the team that placed the item
(`team_credit`); the learner does not learn from these lists. A request where both rank the same
top-k is not compared (the teams would be coin flips) and goes to the learner. Over the last
`window` decided comparisons (ties left out) `w` won `x` of `n`; it is promoted (served) when

    p = P(X ≥ x | X ~ Binomial(n, 1/2)) ≤ level

(the one-sided sign test, `services.learner.dbgd.sign_test`) and at least `min_comparisons` were
decided (five straight wins already pass p ≤ 0.05: tested after every comparison, such a rule
promotes on early luck; replayed on 60 seeds a floor of 50 left the recovery after a drift as it was
and served `w` on 12.5% instead of 15.1% of the no-drift requests, benchmarks/gate_rules.py);
once served, `w` stays served until
the evidence reverses (`x ≤ n − x`: the base wins at least as many of the window's comparisons), and
then the base is served again. The hysteresis is there because just after a drift the window's
p-value hovers around `level` while `w` is already better: without it (and comparing equal top-k
lists too; level 0.1, 20 seeds) `w`
was served on only 44% of the drift runs' requests and recovered 60% ± 28% of the gap
(benchmarks/RESULTS.md).

Why: without drift PDGD's `w` drifts slightly below a good base (a bias of its pairwise objective,
benchmarks/RESULTS.md), so it should rarely win and the served ranking stays the base's; after a
preference drift `w` beats the stale base clearly and is served. When `w` ranks the same top-k as
the base there is nothing to compare (A/A: the base stays served).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from services.experiments.interleaving import team_credit, team_draft
from services.learner.base import OnlineLearner, Presentation, top_k
from services.learner.dbgd import sign_test

BASE_TEAM, LEARNED_TEAM = 0, 1


class ServingGate:
    """The running comparison of learned weights against the base, and which of the two is served."""

    def __init__(self, base: np.ndarray, *, share: float = 0.3, window: int = 250, level: float = 0.05,
                 min_comparisons: int = 1, seed: int = 0) -> None:
        if not (0 < share <= 1 and window >= 1 and 0 < level < 1 and 1 <= min_comparisons <= window):
            raise ValueError("need 0 < share <= 1, window >= 1, 0 < level < 1, 1 <= min_comparisons <= window")
        self.base = np.asarray(base, dtype=np.float64).copy()
        self.share, self.window, self.level, self.min_comparisons = share, window, level, min_comparisons
        self.outcomes: deque[int] = deque(maxlen=window)  # 1: the learned team won, 0: the base team
        self.promoted = False
        self.promotions = 0
        self._coin = np.random.default_rng([seed, 29])

    def reset(self, base: np.ndarray, promoted: bool = False) -> None:
        """A new base (or a rollback): the comparison starts again and the base is served.
        `promoted`: a restarted learner resuming weights that were served keeps serving them, and
        the hysteresis rule judges them on the new evidence."""
        self.base = np.asarray(base, dtype=np.float64).copy()
        self.outcomes.clear()
        self.promoted = promoted

    def compares(self) -> bool:
        """Whether this learning request shows the base-vs-learned comparison (a `share` coin)."""
        return bool(self._coin.random() < self.share)

    def present(self, learned: np.ndarray, features: np.ndarray, k: int, rng: np.random.Generator) -> Presentation | None:
        """The team-draft interleaving of the base's and `learned`'s top-`k` (teams `BASE_TEAM`,
        `LEARNED_TEAM`); None when both rank the same top-`k` (the teams would be coin flips: no
        evidence, and the request is better spent on learning)."""
        lists = [[str(i) for i in top_k(features @ w, k)] for w in (self.base, learned)]
        if lists[0] == lists[1]:
            return None
        merged = team_draft(lists, k, rng)
        return Presentation(tuple(int(i) for i in merged.items), merged.teams, features)

    def record(self, presentation: Presentation, clicks: np.ndarray) -> bool:
        """Credit one comparison's clicks; returns whether the learned weights are served now."""
        base, learned = team_credit(presentation.teams, [bool(c) for c in clicks], 2)
        return self.record_credit(base, learned)

    def record_credit(self, base: int, learned: int) -> bool:
        """One comparison's outcomes on the slots each team placed (a tie is not counted); returns
        whether the learned weights are served now."""
        if base != learned:
            self.outcomes.append(int(learned > base))
        wins, losses = self.evidence()
        if self.promoted:
            promoted = wins > losses
        else:
            promoted = wins + losses >= self.min_comparisons and sign_test(wins, losses) <= self.level
        self.promotions += promoted and not self.promoted
        self.promoted = promoted
        return promoted

    def evidence(self) -> tuple[int, int]:
        """The learned weights' wins and losses over the window's decided comparisons."""
        wins = sum(self.outcomes)
        return wins, len(self.outcomes) - wins

    def served(self, learned: np.ndarray) -> np.ndarray:
        """The weights the traffic outside the learning share gets: `learned` once promoted, else the base."""
        return learned if self.promoted else self.base


class Gated(OnlineLearner):
    """An online learner behind a `ServingGate`: `rank` gives the served weights' top-k; `present`
    shows the gate's comparison on its share of requests and the learner's own list otherwise."""

    def __init__(self, learner: OnlineLearner, gate: ServingGate) -> None:
        self.learner, self.gate = learner, gate
        self.comparison: Presentation | None = None  # the comparison list last presented, until it is learned from

    @property
    def weights(self) -> np.ndarray:  # type: ignore[override]
        return self.learner.weights

    @property
    def updates(self) -> int:  # type: ignore[override]
        return self.learner.updates

    def rank(self, features: np.ndarray, k: int) -> np.ndarray:
        return top_k(features @ self.gate.served(self.learner.weights), k)

    def reset(self, weights: np.ndarray) -> None:
        self.learner.reset(weights)
        self.gate.reset(weights)

    def present(self, features: np.ndarray, k: int, rng: np.random.Generator) -> Presentation:
        if self.gate.compares():
            self.comparison = self.gate.present(self.learner.weights, features, k, rng)
            if self.comparison is not None:
                return self.comparison
        return self.learner.present(features, k, rng)

    def learn(self, presentation: Presentation, clicks: np.ndarray) -> bool:
        if presentation is self.comparison:
            self.comparison = None
            self.gate.record(presentation, clicks)
            return False
        return self.learner.learn(presentation, clicks)
