"""Sequential rules (SR, Ludewig & Jannach 2018; issue 20's peer and blend channel): the rule
weights against a count by hand, and the direction the item cosine cannot see."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation.baselines import ItemKNNRecommender, ItemTransitions


def _weights(rules: ItemTransitions) -> dict[tuple[str, str], float]:
    dense = rules.similarity.toarray()
    return {(h, j): float(dense[rules.position[h], rules.position[j]]) for h in rules.ids.tolist() for j in rules.ids.tolist()
            if dense[rules.position[h], rules.position[j]]}  # fmt: skip


def test_rule_weights_sum_one_over_the_distance_within_the_window() -> None:
    sequences = [["a", "b", "c"], ["a", "c"], ["c", "a", "a"], ["d"]]
    # a→b 1 (seq 1), a→c 1/2 (seq 1) + 1 (seq 2), b→c 1, c→a 1 + 1/2 (seq 3); a→a is a self-rule.
    assert _weights(ItemTransitions(sequences, window=2)) == pytest.approx({("a", "b"): 1.0, ("a", "c"): 1.5, ("b", "c"): 1.0,
                                                                            ("c", "a"): 1.5})  # fmt: skip
    assert _weights(ItemTransitions(sequences, window=1)) == pytest.approx({("a", "b"): 1.0, ("a", "c"): 1.0, ("b", "c"): 1.0,
                                                                            ("c", "a"): 1.0})  # fmt: skip
    assert ItemTransitions(sequences, window=1).ids.tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="window"):
        ItemTransitions(sequences, window=0)


def test_rules_know_which_item_comes_next_where_the_cosine_does_not() -> None:
    items, rng = 30, np.random.default_rng(0)
    # Users walk a ring forwards: i is followed by i + 1 (mod 30), never preceded by it.
    sequences = [[f"i{(start + t) % items}" for t in range(6)] for start in rng.integers(0, items, 300)]
    rules = ItemKNNRecommender(sequences, neighbours=10, recent=1, similarity=ItemTransitions(sequences, window=3))
    cosine = ItemKNNRecommender(sequences, neighbours=10, recent=1)
    assert rules.kind == "sr" and cosine.kind == "itemknn"
    histories = [[f"i{i}"] for i in range(items)]
    expected = [f"i{(i + 1) % items}" for i in range(items)]
    assert [rules.recommend(history, 1)[0] for history in histories] == expected
    cosine_hits = np.mean([cosine.recommend(history, 1)[0] == want for history, want in zip(histories, expected)])
    assert cosine_hits < 0.8  # i - 1 and i + 1 are as close to i by co-occurrence: a coin toss
