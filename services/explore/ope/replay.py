"""Slate logs for a target policy from logged decisions whose inputs are known.

A `Decision` is one logged request: the ranked candidates, the statistics the policies read, the
slate the logging policy showed and the clicks. For a target policy this gives
`estimators.SlateLogs`: exposure ratios from both policies' placement marginals
(`Policy.placement`) and the examination θ of the reward model, and the direct-method term D_i,
the model's expected clicks of the target's slate (averaged over `samples` slates drawn from a
randomised target; one for a deterministic one). Everything is per request at that request's own
slot count k_i, the length of the slate it showed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast, overload

import numpy as np

from services.explore.ope.estimators import SlateLogs
from services.explore.ope.reward_model import PositionBasedRewards
from services.explore.policy import LinearStats, Policy, Ranked, Slate, Stats

SUPPORT_TOLERANCE = 1e-9
UNLOGGED = "\x00unlogged-"  # placeholder ids: never a valid item id (control character)


@dataclass(frozen=True)
class Decision:
    """One logged request; `stats` for the count policies, `linear` for LinUCB (the request's context),
    `logged_by` the policy that served it (None: the one `slate_logs` is given), `target_ranked` the
    candidates the target chooses from when they are not all of `ranked` (`stats` aligned with them)."""

    ranked: Ranked
    stats: Stats
    slate: Slate
    clicks: np.ndarray
    linear: Stats = None
    logged_by: Policy | None = None
    target_ranked: Ranked | None = None
    candidate_count: int = 0  # how many were ranked, when more than `ranked` holds (a truncated log)

    def stats_for(self, policy: Policy) -> Stats:
        return self.linear if policy.needs is LinearStats else self.stats

    def candidates(self) -> Ranked:
        """Every ranked candidate: `ranked`, then placeholders up to `candidate_count` (`padded`)."""
        return padded(self.ranked, self.candidate_count)


def padded(known: Ranked, count: int) -> Ranked:
    """`known`, then anonymous placeholders up to `count` candidates, scored as its lowest score.
    ε-greedy's and greedy's placements need only the pool's size, not its items; the placeholder ids
    are made when read (`PaddedIds`), so a decision keeps its count, not `count` strings (13 KiB a
    request at 200 candidates with 50 logged, and `evaluate` keeps every request)."""
    if count <= len(known):
        return known
    scores = np.full(count, float(known.scores.min()) if len(known) else 0.0)
    scores[:len(known)] = known.scores
    return Ranked(cast(tuple[str, ...], PaddedIds(known.item_ids, count)), scores)


class PaddedIds(Sequence[str]):
    """The ids `known`, then `UNLOGGED<index>` up to `count`, the placeholders made when read."""

    def __init__(self, known: tuple[str, ...], count: int) -> None:
        self._known, self._count = known, count

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[str, ...]: ...

    def __getitem__(self, index: int | slice) -> str | tuple[str, ...]:
        if isinstance(index, slice):
            return tuple(self[n] for n in range(*index.indices(self._count)))
        n = index + self._count if index < 0 else index
        if not 0 <= n < self._count:
            raise IndexError(index)
        return self._known[n] if n < len(self._known) else f"{UNLOGGED}{n}"


def reward_model(decisions: Sequence[Decision]) -> PositionBasedRewards:
    """r̂ fit on every logged slot; randomised slots: those not holding the ranker's item for the slot."""
    items = [item for d in decisions for item in d.slate.item_ids]
    slots = np.concatenate([np.arange(len(d.slate.item_ids)) for d in decisions])
    randomised = np.concatenate([np.asarray(d.slate.positions) != np.arange(len(d.slate.positions)) for d in decisions])
    return PositionBasedRewards(items, slots, np.concatenate([d.clicks for d in decisions]).astype(float), randomised)


def slate_logs(decisions: Sequence[Decision], logging: Policy | None, target: Policy, rewards: PositionBasedRewards,
               rng: np.random.Generator, samples: int = 16) -> SlateLogs:
    """The estimators' input for `target` over `decisions` logged by `logging` (or each by its `logged_by`).

    Each request keeps its own slot count k_i, the length of its shown slate (a request asks for 1 to
    100 items, and one with fewer candidates shows fewer): both placements, the target's slates of
    the direct-method term and the request's normaliser use k_i."""
    longest = max(len(d.slate.item_ids) for d in decisions)
    theta = rewards.theta[:longest] if len(rewards.theta) >= longest else np.pad(rewards.theta, (0, longest - len(rewards.theta)), "edge")
    request, reward, weight, exam, predicted, direct, slots = [], [], [], [], [], [], []
    for n, d in enumerate(decisions):
        k, ranked = len(d.slate.item_ids), d.candidates()
        shown = list(d.slate.positions)
        logged_by = d.logged_by or logging
        assert logged_by is not None, "a decision without its logging policy"
        exposure_target = _exposure(_target_placement(d, ranked, target, k, rng), theta)
        exposure_logging = _exposure(logged_by.placement(ranked, shown, k, rng, d.stats_for(logged_by)), theta)
        with np.errstate(divide="ignore"):
            weight.append(exposure_target / exposure_logging)
        request.append(np.full(k, n))
        reward.append(d.clicks.astype(float))
        exam.append(theta[:k])
        predicted.append(theta[:k] * rewards.rho(d.slate.item_ids))
        direct.append(_direct(d, ranked, target, k, theta, rewards, rng, 1 if target.deterministic else samples))
        slots.append(k)
    counts = np.array(slots)
    return SlateLogs(np.concatenate(request), np.concatenate(reward), np.concatenate(weight), np.concatenate(exam),
                     np.concatenate(predicted), np.array(direct), counts, np.concatenate([[0.0], np.cumsum(theta)])[counts])


def _direct(d: Decision, ranked: Ranked, target: Policy, k: int, theta: np.ndarray, rewards: PositionBasedRewards,
            rng: np.random.Generator, samples: int) -> float:
    """D_i: the model's expected clicks of the target's k-slot slate, averaged over `samples` slates.
    Only the slates are drawn (`choose_deferred`): Thompson's propensity estimate, which `choose`
    computes and this term never reads, would cost ~10x the slate."""
    ranked = d.target_ranked if d.target_ranked is not None else ranked
    slates = [target.choose_deferred(ranked, k, rng, d.stats_for(target))[0].item_ids for _ in range(samples)]
    return float(np.mean([theta[:len(s)] @ rewards.rho(s) for s in slates]))


def supported(d: Decision, target: Policy, rng: np.random.Generator) -> bool:
    """Whether `d`'s logging policy could have shown every item the target may show in its slots.
    A randomised logger (ε-greedy, ε > 0) may place any candidate anywhere; a deterministic one
    (greedy) only its own slate, so the target must show those items and no other: clicks the
    target would get on an item the logger never shows are never observed, and every estimator
    would miss them (biased low) without a zero exposure to flag it."""
    logger = d.logged_by
    if logger is None or not logger.deterministic:
        return True
    k = len(d.slate.item_ids)
    return float(_target_placement(d, d.candidates(), target, k, rng).sum()) >= k - SUPPORT_TOLERANCE


def _exposure(placement: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Σ_j θ_j · P(item at j), over the slots the placement has (fewer than k with fewer candidates)."""
    return placement @ theta[:placement.shape[1]]


def _target_placement(d: Decision, ranked: Ranked, target: Policy, k: int, rng: np.random.Generator) -> np.ndarray:
    """The target's placement of the shown items; 0 for a shown item outside `target_ranked`."""
    if d.target_ranked is None:
        return target.placement(ranked, list(d.slate.positions), k, rng, d.stats_for(target))
    index = {item: n for n, item in enumerate(d.target_ranked.item_ids)}
    present = [m for m, item in enumerate(d.slate.item_ids) if item in index]
    out = np.zeros((len(d.slate.item_ids), k))
    if present:
        placed = target.placement(d.target_ranked, [index[d.slate.item_ids[m]] for m in present], k, rng, d.stats_for(target))
        out[present, :placed.shape[1]] = placed
    return out
