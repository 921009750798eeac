"""Interleaving: one shown list merged from several rankers' lists, and click credit per ranker.

Pure functions over item-id lists (best first); randomness comes from the caller's generator.

- **Team-draft** (Radlinski, Kurup & Joachims, "How does clickthrough data reflect retrieval
  quality?", CIKM 2008), generalised to m ≥ 2 rankers as **team-draft multileaving** (Schuth et
  al., "Multileaved comparisons for fast online evaluation", CIKM 2014): in each round the rankers
  pick in a random order; a ranker picks its highest-ranked item not yet shown, and that item is
  its team's. For two rankers this is exactly Radlinski's rule (the team with fewer picks goes
  next, a coin decides ties). A click credits the clicked item's team.
- **Balanced** (Joachims, "Optimizing search engines using clickthrough data", KDD 2002;
  "Evaluating retrieval performance using clickthrough data", 2003): two pointers walk A and B,
  the one further behind (a coin decides who leads on ties) adds its next item unless shown
  already. Credit (`balanced_credit`): with `l` the lowest clicked position and `k` the smallest
  depth whose top-k of A or of B holds the shown item at `l`, each ranker is credited the clicks
  on items in its own top-k.
- **Probabilistic** (Hofmann, Whiteson & de Rijke, "A probabilistic method for inferring
  preferences from clicks", CIKM 2011): each ranker becomes a softmax over its ranks,
  `P_j(d) ∝ 1 / r_j(d)^τ`; per slot a ranker is chosen uniformly, draws an item from its softmax
  over the items not yet shown (every ranker's distribution is renormalised after each draw) and
  the item is its team's. The placement's propensity is the exact probability of that item in
  that slot given the slots above: `Σ_j (1/m) · P_j(d | remaining)`. Items one ranker does not
  list get rank `len(list) + 1` there, so every ranker can draw every item.

Duplicates: an item listed by several rankers is shown once; in team-draft and probabilistic it
belongs to the team that placed it, as in the papers.
"""

from __future__ import annotations

from collections.abc import Sequence
import numpy as np

from feature_store.settings import MAX_TAU
from services.recommend.types import Merged


def team_draft(rankings: Sequence[Sequence[str]], k: int, rng: np.random.Generator) -> Merged:
    """Team-draft interleaving (two rankers) and multileaving (more), `k` slots at most.

    A placement's propensity is its exact probability given the slots above: the rankers still to
    pick in the round (and not exhausted) are equally likely to go next, so it is the share of
    them whose highest-ranked new item is the one placed.
    """
    _check(rankings, k)
    shown: list[str] = []
    teams: list[int] = []
    propensities: list[float] = []
    taken: set[str] = set()
    cursors = [0] * len(rankings)
    while len(shown) < k:
        order = [int(team) for team in rng.permutation(len(rankings))]
        round_start = len(shown)
        for turn, team in enumerate(order):
            if len(shown) >= k:
                break
            item = _peek_new(rankings[team], cursors, team, taken)
            if item is None:
                continue
            waiting = [_peek_new(rankings[t], cursors, t, taken) for t in order[turn:]]
            waiting = [w for w in waiting if w is not None]
            shown.append(item)
            teams.append(team)
            propensities.append(waiting.count(item) / len(waiting))
            taken.add(item)
        if len(shown) == round_start:  # every ranker is exhausted
            break
    return Merged(tuple(shown), tuple(teams), tuple(propensities))


def balanced(a: Sequence[str], b: Sequence[str], k: int, rng: np.random.Generator) -> Merged:
    """Balanced interleaving of two lists; the team of a slot is the ranker whose pointer added it
    (credit uses `balanced_credit`, not the teams). The coin makes one of two lists; a slot's
    propensity given the slots above is 1/2 where the other list shares those slots but not this
    one, else 1."""
    _check([a, b], k)
    a_first = bool(rng.integers(2))
    items, teams = _balanced_list(a, b, k, a_first)
    other, _ = _balanced_list(a, b, k, not a_first)
    propensities = tuple(0.5 if other[:s] == items[:s] and other[s:s + 1] != items[s:s + 1] else 1.0
                         for s in range(len(items)))
    return Merged(items, teams, propensities)


def _balanced_list(a: Sequence[str], b: Sequence[str], k: int, a_first: bool) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Two pointers walk A and B, the one further behind (A on ties if `a_first`) adds its next
    item unless shown already."""
    ka = kb = 0
    shown: list[str] = []
    teams: list[int] = []
    taken: set[str] = set()
    while len(shown) < k and (ka < len(a) or kb < len(b)):
        use_a = kb >= len(b) or (ka < len(a) and (ka < kb or (ka == kb and a_first)))
        item, team = (a[ka], 0) if use_a else (b[kb], 1)
        if use_a:
            ka += 1
        else:
            kb += 1
        if item not in taken:
            shown.append(item)
            teams.append(team)
            taken.add(item)
    return tuple(shown), tuple(teams)


def balanced_credit(a: Sequence[str], b: Sequence[str], shown: Sequence[str], clicked: Sequence[int]) -> tuple[int, int]:
    """Clicks credited to (A, B) by Joachims' rule (see the module docstring); (0, 0) without clicks.
    `clicked`: the clicked slots of `shown`."""
    rank_a = {item: rank for rank, item in enumerate(a)}
    rank_b = {item: rank for rank, item in enumerate(b)}
    slots = sorted(clicked)
    return balanced_credit_from_ranks([rank_a.get(shown[s]) for s in slots], [rank_b.get(shown[s]) for s in slots])


def balanced_credit_from_ranks(ranks_a: Sequence[int | None], ranks_b: Sequence[int | None]) -> tuple[int, int]:
    """Joachims' credit from the clicked items' 0-based ranks in A and in B (None: not in that
    list), in shown order, as impressions log them: with `d` the depth at which A or B first holds
    the lowest clicked item, A gets the clicks ranked above `d` in A, B those ranked above `d` in B."""
    if not ranks_a:
        return 0, 0
    depth = min(r for r in (ranks_a[-1], ranks_b[-1]) if r is not None) + 1
    return (sum(r is not None and r < depth for r in ranks_a), sum(r is not None and r < depth for r in ranks_b))


def softmax_log_weights(ranking: Sequence[str], universe: Sequence[str], tau: float) -> np.ndarray:
    """`log P(d) = −τ log r(d)` up to a constant, over `universe`, `r` the 1-based rank in `ranking`
    (unlisted items: `len(ranking) + 1`). In logs because `r^−τ` underflows to 0 for every item
    past the first few at a large τ."""
    position = {item: rank for rank, item in enumerate(ranking, start=1)}
    ranks = np.array([position.get(item, len(ranking) + 1) for item in universe], dtype=np.float64)
    return -tau * np.log(ranks)


def softmax_distribution(ranking: Sequence[str], universe: Sequence[str], tau: float) -> np.ndarray:
    """`P(d) ∝ 1 / r(d)^τ` over `universe` (`softmax_log_weights`)."""
    return _normalised(softmax_log_weights(ranking, universe, tau))


def _normalised(log_weights: np.ndarray) -> np.ndarray:
    """Each row's softmax; −inf entries get probability 0."""
    shifted = np.exp(log_weights - log_weights.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def probabilistic(
    rankings: Sequence[Sequence[str]], k: int, rng: np.random.Generator, tau: float = 3.0
) -> Merged:
    """Probabilistic interleaving (m ≥ 2 rankers) with exact per-slot propensities."""
    _check(rankings, k)
    if not 0 < tau <= MAX_TAU:
        raise ValueError(f"tau must be in (0, {MAX_TAU:g}] (got {tau})")
    universe = list(dict.fromkeys(item for ranking in rankings for item in ranking))
    log_weights = np.stack([softmax_log_weights(r, universe, tau) for r in rankings])
    remaining = np.ones(len(universe), dtype=bool)
    m = len(rankings)
    shown: list[str] = []
    teams: list[int] = []
    propensities: list[float] = []
    placed: list[tuple[float, ...]] = []
    for _ in range(min(k, len(universe))):
        live = _normalised(np.where(remaining[None, :], log_weights, -np.inf))
        team = int(rng.integers(m))
        index = int(rng.choice(len(universe), p=live[team]))
        shown.append(universe[index])
        teams.append(team)
        placed.append(tuple(float(p) for p in live[:, index]))
        propensities.append(float(live[:, index].mean()))
        remaining[index] = False
    return Merged(tuple(shown), tuple(teams), tuple(propensities), tuple(placed))


def team_credit(teams: Sequence[int], clicked: Sequence[bool], rankers: int) -> np.ndarray:
    """Clicks per team: `credit[j] = Σ_slots clicked · [team = j]`."""
    credit = np.zeros(rankers, dtype=np.int64)
    for team, click in zip(teams, clicked):
        if click:
            credit[team] += 1
    return credit


def _peek_new(ranking: Sequence[str], cursors: list[int], team: int, taken: set[str]) -> str | None:
    """The ranker's highest-ranked item not shown yet, or None (its cursor skips shown items)."""
    while cursors[team] < len(ranking) and ranking[cursors[team]] in taken:
        cursors[team] += 1
    return ranking[cursors[team]] if cursors[team] < len(ranking) else None


def _check(rankings: Sequence[Sequence[str]], k: int) -> None:
    if len(rankings) < 2:
        raise ValueError("interleaving needs at least two rankings")
    if k < 1:
        raise ValueError("k must be >= 1")
