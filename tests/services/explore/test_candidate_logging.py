"""The ranked candidates of a sampled request ride on its first impression (the input of
`recsys experiments ope`): truncated to the top n, only on slot 0, for a share of requests decided
by the request id (a retry decides the same), never for a degraded answer; a context whose
candidates and scores disagree is a validation error; an old event without them still reads."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from feature_store.schemas import Event, EventContext
from services.recommend.impressions import ServedList, candidates_sampled
from services.recommend.types import Recommendation, RecommendationRequest, RecommendationResult

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
RANKED = tuple(f"i{n}" for n in range(12))
SCORES = tuple(1.0 - n / 12 for n in range(12))


def _result(degraded: bool = False) -> RecommendationResult:
    items = [Recommendation(item, 0.5, ["popular"], "", 0.8 if slot else 0.9) for slot, item in enumerate(("i0", "i7", "i2"))]
    return RecommendationResult(items, {"ranker": "r1"}, degraded=degraded, candidates=len(RANKED),
                                explore="epsilon_greedy(epsilon=0.2)", ranked=(RANKED, SCORES))


def test_the_first_impression_carries_the_top_n_candidates() -> None:
    events = ServedList.of(RecommendationRequest("u1", k=3), _result(), "req-1", NOW, 1.0, 5).events()
    first, rest = events[0].context, [e.context for e in events[1:]]
    assert first.candidates == list(RANKED[:5]) and first.candidate_scores == list(SCORES[:5])
    assert first.candidate_count == 12 and first.position == 0
    assert all(c.candidates is None and c.candidate_scores is None and c.candidate_count is None for c in rest)
    assert Event.model_validate_json(events[0].to_json_line()) == events[0]  # round-trips through the log


def test_no_candidates_when_off_or_degraded() -> None:
    for served in (ServedList.of(RecommendationRequest("u1", k=3), _result(), "req-1", NOW),
                   ServedList.of(RecommendationRequest("u1", k=3), _result(degraded=True), "req-1", NOW, 1.0, 5)):
        assert all(e.context.candidates is None for e in served.events())


def test_the_sampled_share_is_decided_by_the_request_id() -> None:
    ids = [f"req-{n}" for n in range(4000)]
    sampled = [candidates_sampled(i, 0.25) for i in ids]
    assert sampled == [candidates_sampled(i, 0.25) for i in ids]  # a retry decides the same
    assert 0.22 < sum(sampled) / len(ids) < 0.28  # binomial sd 0.007: ±4 sd
    assert not any(candidates_sampled(i, 0.0) for i in ids) and all(candidates_sampled(i, 1.0) for i in ids)
    smaller = [candidates_sampled(i, 0.1) for i in ids]
    assert all(s <= b for s, b in zip(smaller, sampled))  # nested: raising the share keeps the sampled ones


def test_candidates_must_match_their_scores() -> None:
    with pytest.raises(ValidationError, match="same length"):
        EventContext(candidates=["a", "b"], candidate_scores=[1.0], candidate_count=2)
    with pytest.raises(ValidationError, match="candidate_count"):
        EventContext(candidates=["a", "b"], candidate_scores=[1.0, 0.5], candidate_count=1)
    old = '{"event_id": "e", "user_id": "u", "item_id": "i", "type": "impression", "ts": "2026-01-01T00:00:00Z", "context": {"request_id": "r", "position": 0}}'
    assert Event.model_validate_json(old).context.candidates is None
