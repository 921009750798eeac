"""The reason-aware selection of the blend's shown items (issue 20 item 5, ≥ 5 distinct reasons per
list): a planted blend whose top 10 by score all owe their score to the last history item, while
lower candidates lean on older items; the selection is checked against a greedy computed here by
hand, the evaluation scorer's full ranking against that order, and λ's choice against NDCG
computed by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from models.evaluation.baselines import ItemKNNRecommender
from models.evaluation.protocol import full_ranks, top_lists
from models.evaluation.split import LeaveLastOut
from models.retrieval.blend import BlendedRecall
from models.retrieval.reason_selection import SelectedBlendScores, choose_penalty, reason_order, selection_keys
from models.retrieval.scored_channels import ItemKNNScores

# The last item a co-occurs with x0..x11 (x_k with 14 - k users: distinct scores); each older item
# b_i with its own y_i only (2 users), so y_i's score comes from the whole-history channel alone.
OLDER = ["b1", "b2", "b3", "b4"]
SEQUENCES = ([["a", f"x{k}"] for k in range(12) for _ in range(14 - k)]
             + [[b, f"y{b[1]}"] for b in OLDER for _ in range(2)] + [["a", "b1", "b2", "b3", "b4"]])  # fmt: skip
HISTORY = [*OLDER, "a"]  # oldest first


def _blend(penalty: float = 0.0, depth: int = 30) -> BlendedRecall:
    knn = ItemKNNRecommender(SEQUENCES, neighbours=20, recent=None)
    return BlendedRecall([ItemKNNScores(knn, 1), ItemKNNScores(knn, whole_history=True)], np.array([4.0, 1.0]),
                         knn.ids.tolist(), reason_penalty=penalty, reason_depth=depth)  # fmt: skip


def _greedy_by_hand(scores: Sequence[float], reasons: Sequence[str | None], penalty: float) -> list[int]:
    """Pick, one at a time, the unchosen item of the highest score − penalty × (chosen items
    sharing its reason), the first listed on a tie."""
    chosen: list[int] = []
    while len(chosen) < len(scores):
        values = {i: scores[i] - penalty * sum(reasons[c] == reasons[i] for c in chosen)
                  for i in range(len(scores)) if i not in chosen}  # fmt: skip
        chosen.append(max(values, key=lambda i: (values[i], -i)))
    return chosen


def test_planted_top_ten_shares_one_reason_and_the_selection_brings_the_older_reasons_in() -> None:
    blend = _blend()
    found = blend.recall(HISTORY, 30)
    ids, scores = [c.item_id for c in found], np.array([c.score for c in found])
    reasons = blend.reasons(HISTORY, ids)
    assert set(reasons[:10]) == {"a"} and set(ids[:10]) <= {f"x{k}" for k in range(12)}  # the planted premise
    assert {f"y{b[1]}" for b in OLDER} <= set(ids) and {reasons[ids.index(f"y{b[1]}")] for b in OLDER} == set(OLDER)
    for penalty in (0.0, 0.3, 1.0, 3.0, 100.0):
        order, picked = reason_order(scores, reasons, penalty)
        assert order.tolist() == _greedy_by_hand(scores.tolist(), reasons, penalty)
        assert np.all(np.diff(picked) <= 1e-12)  # usable as scores: never rising
    assert reason_order(scores, reasons, 0.0)[0].tolist() == list(range(len(ids)))
    top = reason_order(scores, reasons, 100.0)[0][:10]
    assert len({reasons[j] for j in top}) == 5  # a, b1..b4: every reason among the candidates


def test_keys_place_the_items_after_the_depth_below_the_selection_in_their_own_order() -> None:
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 1.0, 0.5])
    keys = selection_keys(scores, ["a", "a", "a", "b", "b"], 3.0)
    order = np.argsort(-keys, kind="stable").tolist()
    assert order == _greedy_by_hand(scores[:5].tolist(), ["a", "a", "a", "b", "b"], 3.0) + [5, 6]
    assert np.array_equal(selection_keys(scores, ["a"] * 5, 0.0), scores)


@pytest.mark.parametrize("penalty", [0.0, 0.5, 100.0])
def test_the_evaluated_full_ranking_is_the_served_selection(penalty: float) -> None:
    blend = _blend(penalty, depth=20)
    scorer = SelectedBlendScores(blend, recent=None)
    items = tuple(blend.ids.tolist())
    found = blend.recall(HISTORY, 20)
    ids, scores = [c.item_id for c in found], np.array([c.score for c in found])
    expected = [ids[i] for i in _greedy_by_hand(scores.tolist(), blend.reasons(HISTORY, ids), penalty)]
    split = LeaveLastOut({"u": HISTORY}, {"u": expected[3]}, None, None, {}, {})  # type: ignore[arg-type]
    assert top_lists(scorer, split, items, 10)[0] == expected[:10]
    assert full_ranks(scorer, split, items)[0] == 4.0
    keys, _ = blend.shown_keys(HISTORY, ids, scores)  # what the served blend order sorts by
    assert [ids[i] for i in np.argsort(-keys, kind="stable")] == expected


def test_the_choice_is_the_best_validation_ndcg_among_the_pairs_reaching_the_reasons_target() -> None:
    rng = np.random.default_rng(0)
    rows = 150
    scores = [np.sort(rng.normal(size=40))[::-1] for _ in range(rows)]
    reasons = [list(rng.choice(["h1", "h2", "h3", "h4", "h5", "h6"], 40, p=[0.7, 0.1, 0.05, 0.05, 0.05, 0.05]))
               for _ in range(rows)]  # fmt: skip
    targets = [int(t) for t in rng.integers(-1, 40, rows)]
    grid, depths = (0.0, 0.2, 0.5, 1.0, 3.0), (20, 40)

    def by_hand(depth: int, penalty: float, counted: Sequence[bool] = (True,) * rows) -> tuple[float, float]:
        gains, distinct = [], []
        for s, r, t, c in zip(scores, reasons, targets, counted):
            order = _greedy_by_hand(s[:depth].tolist(), r[:depth], penalty)
            place = order.index(t) if 0 <= t < depth else 99
            gains.append(1.0 / np.log2(place + 2) if place < 10 else 0.0)
            if c:
                distinct.append(len({r[j] for j in order[:10]}))
        return float(np.mean(gains)), float(np.mean(distinct))

    table = {(d, p): by_hand(d, p) for d in depths for p in grid}
    for target in (0.0, 3.0, 3.5, 99.0):
        choice = choose_penalty(scores, reasons, targets, grid, depths, target)
        reaching = {pair: v for pair, v in table.items() if v[1] >= target}
        best = max(reaching, key=lambda pair: reaching[pair][0]) if reaching else max(table, key=lambda pair: table[pair][::-1])
        assert (choice.depth, choice.penalty) == best
        assert all(np.isclose(ndcg, table[(d, p)][0]) and np.isclose(n, table[(d, p)][1]) for d, p, ndcg, n in choice.trace)
    assert table[(40, 3.0)][1] > table[(40, 0.0)][1]  # the penalty does spread the reasons
    # The reasons are counted over the marked users only (the target's users with >= 10 items).
    counted = [row % 3 == 0 for row in range(rows)]
    marked = {(d, p): by_hand(d, p, counted) for d in depths for p in grid}
    choice = choose_penalty(scores, reasons, targets, grid, depths, 3.5, counted)
    assert all(np.isclose(n, marked[(d, p)][1]) for d, p, _, n in choice.trace)
    reaching = {pair: v for pair, v in marked.items() if v[1] >= 3.5}
    best = max(reaching, key=lambda pair: reaching[pair][0]) if reaching else max(marked, key=lambda pair: marked[pair][::-1])
    assert (choice.depth, choice.penalty) == best


def test_a_saved_blend_keeps_its_penalty(tmp_path: pytest.TempPathFactory) -> None:
    blend = _blend(0.75, depth=25)
    blend.save(tmp_path)  # type: ignore[arg-type]
    loaded = BlendedRecall.load(tmp_path)  # type: ignore[arg-type]
    assert (loaded.reason_penalty, loaded.reason_depth) == (0.75, 25)
    assert loaded.summary()["reason_penalty"] == 0.75
