"""Slate logs for a target policy from logged decisions whose inputs are known.

A `Decision` is one logged request: the ranked candidates, the statistics the policies read, the
slate the logging policy showed and the clicks. For a target policy this gives
`estimators.SlateLogs`: exposure ratios from both policies' placement marginals
(`Policy.placement`) and the examination θ of the reward model, and the direct-method term D_i,
the model's expected clicks of the target's slate (averaged over `samples` slates drawn from a
randomised target; one for a deterministic one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.explore.ope.estimators import SlateLogs
from services.explore.ope.reward_model import PositionBasedRewards
from services.explore.policy import LinearStats, Policy, Ranked, Slate, Stats

SUPPORT_TOLERANCE = 1e-9


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

    def stats_for(self, policy: Policy) -> Stats:
        return self.linear if policy.needs is LinearStats else self.stats


def reward_model(decisions: Sequence[Decision]) -> PositionBasedRewards:
    """r̂ fit on every logged slot; randomised slots: those not holding the ranker's item for the slot."""
    items = [item for d in decisions for item in d.slate.item_ids]
    slots = np.concatenate([np.arange(len(d.slate.item_ids)) for d in decisions])
    randomised = np.concatenate([np.asarray(d.slate.positions) != np.arange(len(d.slate.positions)) for d in decisions])
    return PositionBasedRewards(items, slots, np.concatenate([d.clicks for d in decisions]).astype(float), randomised)


def slate_logs(decisions: Sequence[Decision], logging: Policy | None, target: Policy, rewards: PositionBasedRewards,
               rng: np.random.Generator, samples: int = 16) -> SlateLogs:
    """The estimators' input for `target` over `decisions` logged by `logging` (or each by its `logged_by`)."""
    k = max(len(d.slate.item_ids) for d in decisions)
    theta = rewards.theta[:k] if len(rewards.theta) >= k else np.pad(rewards.theta, (0, k - len(rewards.theta)), "edge")
    request, reward, weight, exam, predicted, direct = [], [], [], [], [], []
    for n, d in enumerate(decisions):
        slots = np.arange(len(d.slate.item_ids))
        shown = list(d.slate.positions)
        logged_by = d.logged_by or logging
        assert logged_by is not None, "a decision without its logging policy"
        exposure_target = _exposure(_target_placement(d, target, k, rng), theta)
        exposure_logging = _exposure(logged_by.placement(d.ranked, shown, k, rng, d.stats_for(logged_by)), theta)
        with np.errstate(divide="ignore"):
            weight.append(exposure_target / exposure_logging)
        request.append(np.full(len(slots), n))
        reward.append(d.clicks.astype(float))
        exam.append(theta[slots])
        predicted.append(theta[slots] * rewards.rho(d.slate.item_ids))
        slates = [target.choose(d.target_ranked or d.ranked, k, rng, d.stats_for(target)).item_ids for _ in range(1 if target.deterministic else samples)]
        direct.append(float(np.mean([theta[:len(s)] @ rewards.rho(s) for s in slates])))
    return SlateLogs(np.concatenate(request), np.concatenate(reward), np.concatenate(weight), np.concatenate(exam),
                     np.concatenate(predicted), np.array(direct), k, float(theta.sum()))


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
    return float(_target_placement(d, target, k, rng).sum()) >= k - SUPPORT_TOLERANCE


def _exposure(placement: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Σ_j θ_j · P(item at j), over the slots the placement has (fewer than k with fewer candidates)."""
    return placement @ theta[:placement.shape[1]]


def _target_placement(d: Decision, target: Policy, k: int, rng: np.random.Generator) -> np.ndarray:
    """The target's placement of the shown items; 0 for a shown item outside `target_ranked`."""
    if d.target_ranked is None:
        return target.placement(d.ranked, list(d.slate.positions), k, rng, d.stats_for(target))
    index = {item: n for n, item in enumerate(d.target_ranked.item_ids)}
    present = [m for m, item in enumerate(d.slate.item_ids) if item in index]
    out = np.zeros((len(d.slate.item_ids), k))
    if present:
        placed = target.placement(d.target_ranked, [index[d.slate.item_ids[m]] for m in present], k, rng, d.stats_for(target))
        out[present, :placed.shape[1]] = placed
    return out
