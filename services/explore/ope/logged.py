"""Off-policy evaluation from the served logs: logged requests → decisions → IPS, SNIPS and DR.

A logged request (`pipelines.spark.ope_input`) is the ranked candidates its first impression
carried (the first `explore.log_candidates_top_n` of `candidate_count`, and at least as many as
its slots) and its shown slots with policy label, propensity and attributed click. Its `Decision`:

- the ranked list: the logged candidates, then any shown item beyond them, then anonymous
  placeholders up to `candidate_count` (scored as the last logged candidate; made when read, the
  decision keeps their count: `replay.padded`). ε-greedy's placement depends only on the pool
  size, so the logging side stays exact under truncation. A request that logged fewer candidates
  than it showed slots (logged before the impression logger kept the slate's top k) is skipped
  and counted (`TOP_K_UNLOGGED`): the ranker's items of its later slots are unknown, so an
  explored item there cannot be told from a greedy one (replayed, it failed the propensity check
  when it explored and passed when it did not, and the estimate kept the unexplored requests only);
- the logging policy from the impressions' label (`serving_policy`): greedy, `greedy (stats
  unavailable)` or ε-greedy. A request logged by UCB1, Thompson or LinUCB is skipped: their
  placements depend on statistics the log does not carry. Each shown slot's logged propensity is
  checked against the policy's placement; a request where they differ is skipped and counted, and
  so is one with an impression without a position (a client's own, which the schema allows);
- support: a request logged by greedy (deterministic) shows only its own slate, so it can
  evaluate only a target that shows those items; for any other it is skipped and counted
  (`replay.supported`): its clicks on the items the target would show instead were never
  observed, and counting it would bias every estimate low (a log of half greedy requests put
  an ε-greedy target's CTR at 0.051 against its true 0.079);
- the target's statistics (UCB1, Thompson) are read once at evaluation time through `stats`, not
  as they were at each request: an approximation of a target that would have learned along. Such a
  target chooses among the logged candidates only (the unlogged tail has no statistics to read):
  exact when `candidate_count` ≤ `explore.log_candidates_top_n`, else a restricted target.
  LinUCB targets are refused (their per-request context is not logged).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.explore.epsilon_greedy import EpsilonGreedy
from services.explore.greedy import Greedy
from services.explore.ope.estimators import Estimate, estimate
from services.explore.ope.replay import Decision, padded, reward_model, slate_logs, supported
from services.explore.policy import ItemCounts, Policy, Ranked, Slate, Stats
from services.explore.stage import UNAVAILABLE

EXPLORE_LABEL = ";explore="
PROPENSITY_TOLERANCE = 1e-6
NO_SUPPORT = "logged by a deterministic policy that never shows items the target would show"
TOP_K_UNLOGGED = ("fewer candidates logged than slots shown (explore.log_candidates_top_n below k, logged before "
                  "the slate's candidates were always kept): the ranker's items of the later slots are unknown")


class OpeError(ValueError):
    """The logs cannot be evaluated for this target (no usable request, an unsupported target)."""


@dataclass(frozen=True)
class OpeResult:
    """The estimates, the requests used per logging policy label and the requests skipped per reason."""

    estimates: dict[str, Estimate]
    requests: int
    logging: dict[str, int]
    skipped: dict[str, int]


def logging_policy(served_by: str | None) -> Policy | None:
    """The policy of an impression's `policy` label, or None when OPE cannot replay it."""
    label = (served_by or "").partition(EXPLORE_LABEL)[2]
    if label in ("greedy", UNAVAILABLE):
        return Greedy()
    if label.startswith("epsilon_greedy(epsilon=") and label.endswith(")"):
        try:
            return EpsilonGreedy(float(label[len("epsilon_greedy(epsilon="):-1]))
        except ValueError:
            return None
    return None


def decision(row: Mapping[str, Any], stats: Callable[[Sequence[str]], Stats] | None = None) -> tuple[Decision | None, str]:
    """The decision of one logged request, or None with why it is skipped; else its logging label."""
    if any(slot["position"] is None for slot in row["slots"]):
        # A client may log what it showed without a slot: which slot it was (and so the slot a
        # click credited to it belongs to) is unknown.
        return None, "an impression without a position"
    slots = sorted(row["slots"], key=lambda slot: slot["position"])
    if [slot["position"] for slot in slots] != list(range(len(slots))):
        return None, "incomplete slate (an impression is missing)"
    label = slots[0]["policy"]
    logged_by = logging_policy(label)
    if logged_by is None:
        return None, f"logged by {label!r}: its placement depends on statistics the log does not carry"
    shown = [slot["item_id"] for slot in slots]
    logged_ids = tuple(row["candidates"])
    if len(logged_ids) < min(len(shown), int(row["candidate_count"])):
        return None, TOP_K_UNLOGGED
    scores = np.asarray(row["candidate_scores"], dtype=float)
    known, positions = _known(Ranked(logged_ids, scores), shown)
    count = int(row["candidate_count"])
    ranked = padded(known, count)
    k = len(shown)
    placement = logged_by.placement(ranked, positions, k, np.random.default_rng(0))
    expected = placement[np.arange(k), np.arange(k)]
    logged = np.array([slot["propensity"] if slot["propensity"] is not None else np.nan for slot in slots])
    if not np.allclose(expected, logged, rtol=0, atol=PROPENSITY_TOLERANCE):
        return None, "logged propensities differ from the logging policy's placement"
    slate = Slate(tuple(shown), tuple(logged.tolist()), tuple(positions))
    clicks = np.array([int(slot["click"] or 0) for slot in slots])
    if stats is None:
        return Decision(known, None, slate, clicks, logged_by=logged_by, candidate_count=count), label
    target_ranked = Ranked(logged_ids, scores)
    return Decision(known, stats(target_ranked.item_ids), slate, clicks, logged_by=logged_by,
                    target_ranked=target_ranked, candidate_count=count), label


def _known(logged: Ranked, shown: Sequence[str]) -> tuple[Ranked, list[int]]:
    """The logged candidates, then any shown item beyond them (scored as the lowest logged), and
    each shown item's index among them."""
    index = {item: n for n, item in enumerate(logged.item_ids)}
    beyond = [item for item in dict.fromkeys(shown) if item not in index]
    index.update((item, len(logged) + n) for n, item in enumerate(beyond))
    positions = [index[item] for item in shown]
    if not beyond:
        return logged, positions
    floor = float(logged.scores.min()) if len(logged) else 0.0
    return Ranked(logged.item_ids + tuple(beyond), np.concatenate([logged.scores, np.full(len(beyond), floor)])), positions


def check_target(target: Policy) -> None:
    """OpeError for a target the logs cannot evaluate (LinUCB: its per-request context is not logged)."""
    if target.needs is not None and target.needs is not ItemCounts:
        raise OpeError(f"{target.name}: off-policy evaluation needs each request's context, which is not logged")


def evaluate(rows: Iterable[Mapping[str, Any]], target: Policy, stats: Callable[[Sequence[str]], Stats] | None = None,
             bootstrap: int = 1000, seed: int = 0, samples: int = 16) -> OpeResult:
    """IPS, SNIPS and DR CTR-per-slot estimates of `target` from logged requests (module docstring).

    `stats` reads the target's statistics of candidate ids (UCB1 and Thompson: `BanditStats.counts`)."""
    check_target(target)
    if target.needs is ItemCounts and stats is None:
        raise OpeError(f"{target.name} needs the feedback counts: pass `stats`")
    decisions: list[Decision] = []
    logging: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    draws = np.random.default_rng(seed)  # a randomised target's placement, for the support check
    for row in rows:
        made, why = decision(row, stats if target.needs is ItemCounts else None)
        if made is not None and not supported(made, target, draws):
            made, why = None, NO_SUPPORT
        if made is None:
            skipped[why] += 1
        else:
            decisions.append(made)
            logging[why] += 1
    if not decisions:
        reasons = "; ".join(f"{n} {why}" for why, n in skipped.items()) or "no request logged its candidates"
        raise OpeError(f"no usable logged request ({reasons}): set explore.log_candidates_share > 0 and run "
                       "`recsys batch compact` and `recsys batch attribution`")
    rng = np.random.default_rng(seed)
    logs = slate_logs(decisions, None, target, reward_model(decisions), rng, samples)
    return OpeResult(estimate(logs, bootstrap, seed), len(decisions), dict(logging), dict(skipped))
