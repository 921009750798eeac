"""Each team's click credit per attributed impression, by the interleaving method's rule.

Input: one experiment's attributed impressions as columns (`Logged`); output: a matrix of credit,
one row per impression and one column per team (arm, in the experiment's order), whose sums per
unit (user) feed `analysis.unit_outcomes` and `analysis.credit_difference`.

- **team** (team-draft, Radlinski et al., CIKM 2008): a click credits the team of its slot.
- **balanced** (Joachims, KDD 2002 / 2003): per request (a user's request id: two users may send
  the same one), `interleaving.balanced_credit_from_ranks`
  over the clicked slots' logged `ranks`; the request's credit sits on its lowest clicked row.
  A request whose clicked slot carries no ranks (a row logged without them), or whose lowest
  clicked item neither team ranked, gets none.
- **marginalised** (probabilistic interleaving; Hofmann, Whiteson & de Rijke, "Fidelity,
  soundness, and efficiency of interleaved comparison methods", TOIS 2013, and "Reusing historical
  interaction data for faster online learning to rank", WSDM 2013): the expected count credit over
  every team assignment that could have produced the shown list. Given the list, the items left
  before each slot are fixed, so the assignment's posterior factorises over slots: team `j` placed
  slot `s` with probability `q_js = P_j(d_s | above) / Σ_i P_i(d_s | above)` (the logged
  `ranker_propensities`), and `E[c_j | list, clicks] = Σ_clicked q_js`. A row logged without them
  is credited to its observed team, which has the same expectation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.experiments.interleaving import balanced_credit_from_ranks
from services.experiments.model import Method

RULES = {Method.TEAM_DRAFT: "team", Method.BALANCED: "balanced", Method.PROBABILISTIC: "marginalised"}


@dataclass(frozen=True)
class Logged:
    """An experiment's attributed impressions, one entry per row (None where not logged)."""

    users: Sequence[str]
    teams: Sequence[str | None]
    clicks: Sequence[int]
    requests: Sequence[str | None]
    positions: Sequence[int | None]
    ranks: Sequence[dict[str, int] | None]
    ranker_propensities: Sequence[dict[str, float] | None]


def credit(method: Method, logged: Logged, names: Sequence[str]) -> np.ndarray:
    """Credit per row and team (`names`) under `method`'s rule (`RULES`; see the module docstring)."""
    if method == Method.BALANCED:
        return balanced_rows(logged, names)
    if method == Method.PROBABILISTIC:
        return marginalised_rows(logged, names)
    return team_rows(logged, names)


def team_rows(logged: Logged, names: Sequence[str]) -> np.ndarray:
    """`credit[row, j] = click · [team = j]`."""
    column = {name: j for j, name in enumerate(names)}
    out = np.zeros((len(logged.clicks), len(names)))
    for row, (team, click) in enumerate(zip(logged.teams, logged.clicks)):
        if click and team in column:
            out[row, column[team]] = 1.0
    return out


def marginalised_rows(logged: Logged, names: Sequence[str]) -> np.ndarray:
    """`credit[row, j] = click · q_j` with `q_j = P_j / Σ_i P_i` from the row's ranker propensities;
    the observed team's credit for a row without them."""
    out = team_rows(logged, names)
    for row, (click, placed) in enumerate(zip(logged.clicks, logged.ranker_propensities)):
        if click and placed:
            p = np.array([placed.get(name, 0.0) for name in names])
            if p.sum() > 0:
                out[row] = p / p.sum()
    return out


def balanced_rows(logged: Logged, names: Sequence[str]) -> np.ndarray:
    """Joachims' credit of each request on its lowest clicked row (two teams)."""
    first, second = names
    clicked: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)  # (user, request) -> [(position, row)]
    for row, (user, request, position, click) in enumerate(zip(logged.users, logged.requests, logged.positions, logged.clicks)):
        if click and request is not None and position is not None:
            clicked[(user, request)].append((position, row))
    out = np.zeros((len(logged.clicks), 2))
    for slots in clicked.values():
        slots.sort()
        ranks = [logged.ranks[row] for _, row in slots]
        if any(r is None for r in ranks) or not {first, second} & set(ranks[-1]):  # type: ignore[arg-type]
            continue
        out[slots[-1][1]] = balanced_credit_from_ranks([r.get(first) for r in ranks],  # type: ignore[union-attr]
                                                       [r.get(second) for r in ranks])  # type: ignore[union-attr]
    return out
