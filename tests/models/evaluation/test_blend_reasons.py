"""The blend's reasons (issue 20 item 5): each shown item names the history item whose removal
takes the most from its blended score, every channel's counterfactual score placed on the user's
own normalisation; checked against a leave-one-out computed here in numpy from the similarity
matrix, the embeddings and GRU4Rec's own scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from models.evaluation.baselines import ItemKNNRecommender
from models.retrieval.blend import BlendedRecall, normalise, on_scale
from models.retrieval.scored_channels import EmbeddingScores, ItemKNNScores, SequentialScores
from models.retrieval.sequential import GRU4Rec

# x co-occurs with a (3 users), c and b (2 each); y with c only; z with d only; r with q only.
SEQUENCES = [["a", "x"]] * 3 + [["c", "x"]] * 2 + [["b", "x"]] * 2 + [["c", "y"]] * 3 + [["d", "z"]] * 2 + [
    ["a", "b", "c", "d"], ["q", "r"]]  # fmt: skip
HISTORY = ["d", "a", "b", "c"]  # oldest first: c is the last item

Raw = Callable[[list[str]], np.ndarray]


def _on_users_scale(base: np.ndarray, value: float, column: int, how: str) -> float:
    """A raw score of item `column` placed on the user's scale: by z-score of `base`, or 1 / (60 +
    its rank among base's other items, a tie going to the item listed first)."""
    if how == "zscore":
        return (value - base.mean()) / (base.std() or 1.0)
    rank = 1 + sum(1 for i, b in enumerate(base) if i != column and (b > value or (b == value and i < column)))
    return 1.0 / (60.0 + rank)


def leave_one_out_reasons(raws: Sequence[Raw], weights: Sequence[float], history: list[str], columns: list[int],
                   how: str, recent: int | None = None) -> list[str | None]:  # fmt: skip
    """Per column, argmax over the history's items h (its last `recent`, None: all) of
    Σ_c w_c (scaled s_c(H)_j − scaled s_c(H − h)_j), `raws[c]` giving channel c's raw scores for a
    history (also used by the served-blend test)."""
    bases = [raw(history) for raw in raws]
    drops = {}
    for h in dict.fromkeys(history[-recent:] if recent else history):
        without = [item for item in history if item != h]
        rows = [raw(without) for raw in raws]
        drops[h] = [sum(w * (_on_users_scale(base, base[j], j, how) - _on_users_scale(base, row[j], j, how))
                        for base, row, w in zip(bases, rows, weights))
                    for j in columns]  # fmt: skip
    named: list[str | None] = []
    for n in range(len(columns)):
        best = max(drops, key=lambda h: drops[h][n])
        named.append(best if drops[best][n] > 1e-6 else None)
    return named


def _knn_raw(knn: ItemKNNRecommender, recent: int | None) -> Raw:
    sim = knn.similarity.toarray()
    return lambda history: sum((sim[knn.position[h]] for h in (history[-recent:] if recent else history)),
                               np.zeros(len(knn.ids)))  # fmt: skip


def test_the_reason_is_the_item_whose_removal_takes_most_and_not_always_the_last() -> None:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=None)
    ids = knn.ids.tolist()
    blend = BlendedRecall([ItemKNNScores(knn, 1), ItemKNNScores(knn, whole_history=True)], np.array([4.0, 1.0]), ids)
    candidates = ["x", "y", "z", "r"]
    found = blend.reasons(HISTORY, candidates)
    expected = leave_one_out_reasons([_knn_raw(knn, 1), _knn_raw(knn, None)], [4.0, 1.0], HISTORY,
                              [ids.index(item) for item in candidates], "zscore")  # fmt: skip
    assert found == expected
    # x: without c, the last-item channel reads b, as close to x, so the score rises; a (3 of x's
    # co-occurrences, read by the whole-history channel) is the one x cannot do without.
    # y leans on c alone, z on the oldest item d; r has no evidence, so no reason.
    assert found == ["a", "c", "d", None]


def test_reasons_tried_only_among_the_last_recent_items() -> None:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=None)
    ids = knn.ids.tolist()
    blend = BlendedRecall([ItemKNNScores(knn, 1), ItemKNNScores(knn, whole_history=True)], np.array([4.0, 1.0]), ids)
    candidates = ["x", "y", "z", "r"]
    found = blend.reasons(HISTORY, candidates, recent=2)
    expected = leave_one_out_reasons([_knn_raw(knn, 1), _knn_raw(knn, None)], [4.0, 1.0], HISTORY,
                                     [ids.index(item) for item in candidates], "zscore", recent=2)  # fmt: skip
    assert found == expected
    # Only b and c are tried: x's a and z's d (older) are not, so x names b (one of x's
    # co-occurrences, read by the whole-history channel) and z has nothing left to name.
    assert found == ["b", "c", None, None]


@pytest.mark.parametrize("how", ["zscore", "rrf"])
def test_reasons_match_leave_one_out_across_channels_and_windows(how: str) -> None:
    rng = np.random.default_rng(4)
    sequences = [[f"i{k}" for k in rng.choice(30, 6, replace=False)] for _ in range(80)]
    knn = ItemKNNRecommender(sequences, neighbours=8, recent=3)
    ids = knn.ids.tolist()
    vectors = rng.normal(size=(len(ids), 5)).astype(np.float32)
    embedding = EmbeddingScores("item2vec", knn.ids, vectors, recent=4)
    weights = [1.0, 2.0, 0.5]
    blend = BlendedRecall([ItemKNNScores(knn), ItemKNNScores(knn, 1), embedding], np.array(weights), ids, how)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def embedding_raw(history: list[str]) -> np.ndarray:
        return unit[[knn.position[h] for h in history[-4:]]].mean(axis=0) @ unit.T

    history = ["i1", "i2", "i3", "i1", "i4", "i5", "i6", "i7"][::-1]  # a repeated item: removal drops both
    candidates = [item for item in ids if item not in history]
    expected = leave_one_out_reasons([_knn_raw(knn, 3), _knn_raw(knn, 1), embedding_raw], weights, history,
                              [ids.index(item) for item in candidates], how)  # fmt: skip
    assert blend.reasons(history, candidates) == expected
    assert len(set(expected)) >= 3 and set(expected) - {None} <= set(history)


def test_gru4rec_reasons_come_from_its_own_scores_without_each_item() -> None:
    sequences = [[f"i{(s + t) % 12}" for t in range(6)] for s in range(40)]
    gru = GRU4Rec(sequences, dim=8, dropout=0.0, batch_size=16).fit(1)
    knn = ItemKNNRecommender(sequences, neighbours=5, recent=1)
    ids = knn.ids.tolist()
    blend = BlendedRecall([ItemKNNScores(knn, 1), SequentialScores(gru)], np.array([1.0, 2.0]), ids)
    column = {item: gru.position[item] for item in ids}

    def gru_raw(history: list[str]) -> np.ndarray:
        scores = gru.batch_scores([history])[0]
        return np.array([scores[column[item]] for item in ids], np.float64)

    history = ["i0", "i5", "i2", "i9", "i4", "i7"]
    candidates = [item for item in ids if item not in history]
    expected = leave_one_out_reasons([_knn_raw(knn, 1), gru_raw], [1.0, 2.0], history, [ids.index(i) for i in candidates], "zscore")
    assert blend.reasons(history, candidates) == expected
    assert set(expected) - {history[-1]}  # GRU4Rec's part names items other than the last one


@pytest.mark.parametrize("how", ["zscore", "rrf"])
def test_on_scale_places_the_rows_own_scores_as_normalise_does(how: str) -> None:
    base = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 0.5])  # ties: the first listed ranks ahead
    columns = np.arange(len(base))
    assert np.allclose(on_scale(base, base[None, :], columns, how)[0], normalise(base[None, :], how)[0])


def test_reasons_when_the_blend_lists_items_in_another_order_and_some_unknown_to_a_channel() -> None:
    # The blend's items: the channels' in reverse, then two the channels never saw (an unknown item
    # takes the history's lowest raw score of the channel, in every leave-one-out variant too).
    knn = ItemKNNRecommender(SEQUENCES, neighbours=10, recent=None)
    items = knn.ids.tolist()[::-1] + ["new1", "new2"]
    blend = BlendedRecall([ItemKNNScores(knn, 1), ItemKNNScores(knn, whole_history=True)], np.array([4.0, 1.0]), items)

    def in_blend_order(raw: Raw) -> Raw:
        def row(history: list[str]) -> np.ndarray:
            own = raw(history)
            return np.array([own[knn.position[item]] if item in knn.position else own.min() for item in items])

        return row

    candidates = ["x", "new1", "y", "z", "r"]
    found = blend.reasons(HISTORY, candidates)
    expected = leave_one_out_reasons([in_blend_order(_knn_raw(knn, 1)), in_blend_order(_knn_raw(knn, None))], [4.0, 1.0],
                                     HISTORY, [items.index(item) for item in candidates], "zscore")  # fmt: skip
    assert found == expected
    assert found[0] == "a" and found[2:] == ["c", "d", None]  # as in the channels' own order
