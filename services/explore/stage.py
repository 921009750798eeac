"""The explore stage of a request: read what the policy needs, let it choose, or serve greedy.

When the statistics cannot be read (Redis down or slow), the stage serves the ranker's top k with
propensity 1 and labels it `greedy (stats unavailable)`, a label the response and the impressions
carry, so that an off-policy estimator never mistakes those slots for explored ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from services.explore.greedy import Greedy
from services.explore.policy import Deferred, ItemCounts, LinearStats, Policy, Ranked, Slate, Stats
from services.explore.randomness import RequestGenerators, fresh_generator
from services.explore.stats import BanditStats, StatsUnavailable

log = logging.getLogger(__name__)

UNAVAILABLE = "greedy (stats unavailable)"


@dataclass(frozen=True)
class Explored:
    """The shown slate and the label of what chose it (a policy label or `UNAVAILABLE`); `pending`
    computes the slate's propensities when the policy left them for later (Thompson: the impression
    writer calls it, off the request path; `Policy.choose_deferred`)."""

    slate: Slate
    policy: str
    pending: Deferred | None = None

    @property
    def propensities(self) -> tuple[float | None, ...]:
        """Per slot, the propensity, or None while `pending` has not computed it."""
        return (None,) * len(self.slate.item_ids) if self.pending is not None else self.slate.propensities


class ExploreStage:
    """One policy and the reads it needs; `rng` makes each request's generator from its id
    (`services.explore.randomness`; fresh entropy by default)."""

    def __init__(self, policy: Policy, stats: BanditStats | None = None, rng: RequestGenerators = fresh_generator) -> None:
        if policy.needs is not None and stats is None:
            raise ValueError(f"policy {policy.name} needs statistics; pass a BanditStats")
        self.policy = policy
        self.stats = stats
        self.rng = rng

    def run(self, ranked: Ranked, k: int, history: Sequence[str] = (), user_id: str | None = None,
            request_id: str = "") -> Explored:
        """The shown slate for `user_id` (whose LinUCB context is saved for the stream job, when
        given); Thompson's propensities pending (`Explored.pending`)."""
        if not len(ranked):
            return Explored(Slate((), (), ()), self.policy.label)
        rng = self.rng(user_id or "", request_id)
        try:
            stats = self._read(ranked, history, user_id)
        except StatsUnavailable as exc:
            log.warning("explore: %s; serving greedy", exc)
            return Explored(Greedy().choose(ranked, k, rng), UNAVAILABLE)
        slate, pending = self.policy.choose_deferred(ranked, k, rng, stats)
        return Explored(slate, self.policy.label, pending)

    def close(self) -> None:
        if self.stats is not None:
            self.stats.close()

    def _read(self, ranked: Ranked, history: Sequence[str], user_id: str | None) -> Stats:
        if self.stats is None:
            return None
        if self.policy.needs is ItemCounts:
            return self.stats.counts(ranked.item_ids)
        if self.policy.needs is LinearStats:
            return self.stats.linear(ranked.item_ids, history, user_id)
        return None
