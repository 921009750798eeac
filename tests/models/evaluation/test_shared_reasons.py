"""The reasons count's shared call (issue 20: evaluation time): one blend `reasons` call per user
for the union of the lists shown gives every item of every list the reason its own call gives,
and the call is made once per history."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender
from models.evaluation.shared_reasons import SharedReasons
from models.retrieval.blend import BlendedRecall
from models.retrieval.scored_channels import ItemKNNScores
from tests.models.evaluation.test_blend_reasons import HISTORY, SEQUENCES


class _Counting(BlendedRecall):
    """The real blend, counting its `reasons_many` calls (`reasons` is one for one history)."""

    calls = 0

    def reasons_many(self, histories: Sequence[Sequence[str]], items: Sequence[Sequence[str]], recent: int | None = None,
                     batch: int = 256) -> list[list[str | None]]:  # fmt: skip
        type(self).calls += 1
        return super().reasons_many(histories, items, recent, batch)


def test_one_call_for_the_union_gives_each_list_its_own_reasons() -> None:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=None)
    items = sorted({i for s in SEQUENCES for i in s})
    blend = _Counting([ItemKNNScores(knn), ItemKNNScores(knn, 1)], np.array([1.0, 2.0]), items, "zscore")
    histories = [HISTORY, ["a", "b"], ["c", "d", "a"]]
    first = [["x", "y", "z"], ["x", "c"], ["y", "b", "x"]]
    second = [["z", "r", "x", "y"], ["y", "x"], ["q", "z"]]
    expected = [[blend.reasons(h, own, 3) for h, own in zip(histories, lists)] for lists in (first, second)]
    assert any(why is not None for lists in expected for row in lists for why in row)
    assert len({why for row in expected[0] for why in row if why}) > 1  # items name different reasons
    shared = SharedReasons(recent=3)
    for lists in (first, second):
        for history, own in zip(histories, lists):
            shared.want(blend, history, own)
    _Counting.calls = 0
    got = [[shared.reasons(blend, h, own) for h, own in zip(histories, lists)] for lists in (first, second)]
    assert got == expected
    assert _Counting.calls == len(histories)
    assert shared.reasons(blend, histories[1], ["z"]) == blend.reasons(histories[1], ["z"], 3)  # unregistered: asked


def test_fill_finds_every_history_in_one_call_with_each_items_own_reason() -> None:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=None)
    items = sorted({i for s in SEQUENCES for i in s})
    blend = _Counting([ItemKNNScores(knn), ItemKNNScores(knn, 1)], np.array([1.0, 2.0]), items, "zscore")
    histories = [HISTORY, ["a", "b"], ["c", "d", "a"], HISTORY]  # a history asked twice is found once
    lists = [["x", "y", "z"], ["x", "c"], ["y", "b", "x"], ["r", "x"]]
    expected = [blend.reasons(h, own) for h, own in zip(histories, lists)]
    assert len({why for row in expected for why in row if why}) > 1
    shared = SharedReasons()
    for history, own in zip(histories, lists):
        shared.want(blend, history, own)
    _Counting.calls = 0
    shared.fill(blend, histories)
    assert [shared.reasons(blend, h, own) for h, own in zip(histories, lists)] == expected
    assert _Counting.calls == 1
