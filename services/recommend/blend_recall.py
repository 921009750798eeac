"""Serving the recall artifact's learned blend (`models.retrieval.blend`, docs/evaluation.md "The
blended pipeline"): the recall stage scores the user's live history with the same `BlendedRecall`
that `recsys evaluate` ranks with, the rank stage keeps the blend's order unless the artifact's
validation choice (`models.retrieval.order_choice`) says the current ranker beats it (the blend's
order being its top items re-ordered so that fewer share a reason, `BlendedRecall.shown_keys`),
and the explain stage names each shown blended item's reason (`BlendedRecall.reasons`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from models.registry import ModelVersion
from models.retrieval.blend import BlendedRecall
from models.retrieval.order_choice import OrderChoice
from services.recommend.types import Candidate, RankOutput, UserContext

#: The source tag of every blended candidate, and the `ranker` a response names when the blend's
#: own order was served (so the impressions' policy reads `ranker=blend-order;…`).
BLEND_SOURCE = "blend"
BLEND_ORDER = "blend-order"


@dataclass(frozen=True)
class BlendServing:
    """A loaded blend, its order choice (None: an artifact fitted without a ranker to compare) and
    how many of the last history items `explain` tries as reasons (None: all, `api.reason_recent`)."""

    recall: BlendedRecall
    order: OrderChoice | None
    reason_recent: int | None = None

    def candidates(self, history: Sequence[str], k: int, exclude: Collection[str]) -> list[Candidate] | None:
        """The blend's top `k` unseen items for `history` (oldest first) with their blended scores,
        without reasons (`explain`); None when the blend knows none of the history (a new user: the
        channel merge serves them)."""
        if not any(self.recall.knows(item) for item in history):
            return None
        return [Candidate(c.item_id, c.score, {BLEND_SOURCE, *c.channels}) for c in self.recall.recall(history, k, exclude)]

    def shown_keys(self, history: Sequence[str], candidates: Sequence[Candidate]) -> np.ndarray:
        """The keys of the blend's own order over `candidates` (the blend's first, best first, then
        the serving channels' below them): its leading blended candidates re-ordered as
        `BlendedRecall.shown_keys` says, the others after them in their order. The reasons that
        choice computed are kept on the candidates (`because`) for `explain`."""
        scores = np.array([c.recall_score for c in candidates], dtype=np.float64)
        blended = next((n for n, c in enumerate(candidates) if BLEND_SOURCE not in c.sources), len(candidates))
        keys, reasons = self.recall.shown_keys(history, [c.item_id for c in candidates[:blended]], scores[:blended],
                                               self.reason_recent)  # fmt: skip
        for candidate, why in zip(candidates, reasons):
            candidate.because = why
        lowest = keys.min() if blended else np.inf
        return np.concatenate([keys, np.minimum(scores[blended:], lowest)])

    def explain(self, history: Sequence[str], shown: Sequence[Candidate]) -> None:
        """Set `because` of each shown blended candidate to the history item (`history` oldest
        first), among its last `reason_recent`, whose removal lowers its blended score the most:
        computed for the shown items only (those `shown_keys` did not already explain), since it
        re-scores the history once per item tried."""
        blended = [c for c in shown if BLEND_SOURCE in c.sources and c.because is None]
        if blended:
            for candidate, why in zip(blended, self.recall.reasons(history, [c.item_id for c in blended], self.reason_recent)):
                candidate.because = why

    def serves_ranker(self, ranker_version: str | None) -> bool:
        """True only when validation chose the ranker, and it is this ranker version."""
        return self.order is not None and self.order.serves_ranker(ranker_version)


class BlendOrderRanker:
    """Serves the blend's own order (`BlendServing.shown_keys`: the blended score, or for the
    blend's top items the score less the reason selection's penalty, as evaluated offline)."""

    name = BLEND_ORDER

    def __init__(self, blend: BlendServing) -> None:
        self.blend = blend

    def rank(self, user: UserContext, candidates: Sequence[Candidate]) -> RankOutput:
        return RankOutput(scores=self.blend.shown_keys(user.history[::-1], candidates))


def load_blend(version: ModelVersion, reason_recent: int = 0) -> BlendServing | None:
    """The recall version's blend, or None for an artifact without one (served as before);
    `reason_recent` as `api.reason_recent` (0: every history item)."""
    from models.retrieval.artifact import RecallArtifact

    found = RecallArtifact.load_blend(version.path)
    return None if found is None else BlendServing(*found, reason_recent or None)
