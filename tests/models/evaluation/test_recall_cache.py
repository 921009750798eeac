"""The recall cache of the protocol run (issue 20: evaluation time) returns exactly the candidates
the recall stage computes (ids, scores, channels, seeds), computes each history once, and leaves
every pipeline contender's validation and test ranks and top-10 lists as they were without it."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender, PopularityRecommender
from models.evaluation.protocol import protocol_split
from models.evaluation.recall_cache import CachedRecall
from models.retrieval.multichannel import ItemCFChannel, MultiChannelRecall, PopularChannel, RecallCandidate
from tests.models.test_protocol import _chains


class _Counting:
    """A real recall stage that counts the histories it is asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.asked = inner, 0

    def recall(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[RecallCandidate]:
        self.asked += 1
        return self.inner.recall(history, k, exclude)


def test_cached_candidates_equal_the_recall_stages_and_each_history_is_computed_once() -> None:
    split = protocol_split(_chains(users=40, items=25, length=7))
    sequences = split.training_sequences()
    popular = PopularityRecommender(sequences)
    stage = MultiChannelRecall([ItemCFChannel(ItemKNNRecommender(sequences)), PopularChannel(popular.top)])
    counting = _Counting(stage)
    cached = CachedRecall(counting)
    histories = [split.test.train[u] for u in sorted(split.test.test)]
    distinct = len({tuple(h) for h in histories})
    expected = [stage.recall(h, 12) for h in histories]
    assert any(c.because is not None for found in expected for c in found)  # seeds are carried
    assert any(len(c.channels) > 1 for found in expected for c in found)  # and multi-channel tags
    first = cached.recall_many(histories[:15], 12) + cached.recall_many(histories[15:], 12)
    again = cached.recall_many(histories[::-1], 12)[::-1]  # all from the cache
    assert first == expected and again == expected
    assert [cached.recall(h, 12) for h in histories] == expected
    assert cached.recommend(histories[0], 12) == [c.item_id for c in expected[0]]
    assert counting.asked == distinct
    first[0][0].channels.add("changed")  # a caller's change does not reach the cache
    assert cached.recall(histories[0], 12) == expected[0]
    assert cached.recall_many(histories[:3], 5) == [stage.recall(h, 5) for h in histories[:3]]  # k is part of the key
    seen = set(histories[0][:2])
    assert cached.recall(histories[0], 12, seen) == stage.recall(histories[0], 12, seen)
    assert CachedRecall(stage).channels is stage.channels  # other attributes are the stage's


def test_pipeline_ranks_and_lists_are_those_of_the_uncached_recall() -> None:
    from models.evaluation.end_to_end import RerankRecommender, SampleConfig
    from models.evaluation.metrics import rank_metrics
    from models.evaluation.offline_pipeline import EvaluationConfig
    from models.evaluation.protocol import ListScorer, full_ranks, ranks_and_lists
    from models.evaluation.protocol_run import ProtocolConfig, grid, run_protocol

    split = protocol_split(_chains(users=60, items=20, length=7))
    pipeline = EvaluationConfig(recall_models=(), rankers=("din",), ranker_epochs=1, ranker_embedding_dim=4,
                                samples=SampleConfig(positions_per_user=2, recall_depth=20, max_seq_len=8))  # fmt: skip
    config = ProtocolConfig(peers=("ItemKNN",), knn_grid=grid(neighbours=[5], recent=[1]), pipeline=pipeline, bootstrap_rounds=20)
    result = run_protocol(split, {}, config)
    recall_only = result.models["recall only"].model
    assert isinstance(recall_only.model, CachedRecall)
    assert result.models["recall → din"].model.model.recall is recall_only.model  # one cache for both
    assert isinstance(result.models["blend → din"].model.model.recall, CachedRecall)
    for name in ("recall only", "recall → din", "blend → din"):
        tuned = result.models[name]
        model = tuned.model.model
        uncached: Any = (RerankRecommender(model.recall.inner, model.features, model.spec, model.score, model.depth)
                         if isinstance(model, RerankRecommender) else model.inner)  # fmt: skip
        scorer = ListScorer(uncached, split.items, tuned.model.depth)
        validation = rank_metrics(full_ranks(scorer, split.validation, split.items, config.seed))
        ranks, lists = ranks_and_lists(scorer, split.test, split.items, config.seed)
        assert lists == tuned.test_lists, name
        for metric, values in rank_metrics(ranks).items():
            assert np.array_equal(values, tuned.test[metric]), (name, metric)
            assert np.array_equal(validation[metric], tuned.validation[metric]), (name, metric)
