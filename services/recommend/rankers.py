"""Rankers the pipeline can always use; trained rankers plug in through the same `Ranker` interface."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.recommend.types import Candidate, RankOutput, UserContext

NON_PERSONAL_SOURCES = frozenset({"popular", "trending"})


class RecallScoreRanker:
    """No trained ranker: personalised channels first, then popularity.

    score = recall_score / max(recall_score) + `personal_weight` if any channel that proposed the
    item used the user's own behaviour (category neighbours, embeddings), else + 0.
    """

    name = "recall_score"

    def __init__(self, personal_weight: float = 1.0) -> None:
        self.personal_weight = personal_weight

    def rank(self, user: UserContext, candidates: Sequence[Candidate]) -> RankOutput:
        raw = np.array([c.recall_score for c in candidates], dtype=np.float32)
        top = float(raw.max()) if len(raw) else 0.0
        normalised = raw / top if top > 0 else raw
        personal = np.array([bool(c.sources - NON_PERSONAL_SOURCES) for c in candidates], dtype=np.float32)
        return RankOutput(scores=normalised + self.personal_weight * personal)
