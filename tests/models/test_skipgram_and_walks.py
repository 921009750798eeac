"""Skip-gram trainer, Item2vec, DeepWalk and Node2vec on data with planted clusters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.embeddings.pairs import keep_probabilities, skipgram_pairs, unigram_table
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.embeddings.walks import ItemGraph, RandomWalker
from planted_clusters import CLUSTERS, planted_graph, planted_sequences, same_cluster_precision

CHANCE = 1 / CLUSTERS
FAST = SkipGramConfig(dim=16, window=3, negatives=5, epochs=3, batch_size=512)


def test_pairs_stay_inside_sequences_and_window() -> None:
    tokens = np.array([0, 1, 2, 3, 4, 5], dtype=np.int32)
    sequence_of = np.array([0, 0, 0, 1, 1, 1])
    targets, contexts = skipgram_pairs(tokens, sequence_of, 1, np.ones(6), np.random.default_rng(0), shrink_window=False)
    assert sorted(zip(targets.tolist(), contexts.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3), (4, 5), (5, 4)]


def test_subsampling_and_unigram_table_follow_word2vec() -> None:
    counts = np.array([10_000, 100, 1])
    keep = keep_probabilities(counts, 1e-3)
    assert keep[0] < 0.05 and keep[2] == 1.0
    table = unigram_table(counts, 0.75, size=100_000)
    share = np.bincount(table, minlength=3) / len(table)
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(share, expected, atol=1e-3)


@pytest.mark.parametrize("optimizer, learning_rate", [("adagrad", None), ("sgd", 0.1)])
def test_item2vec_recovers_planted_clusters(optimizer: str, learning_rate: float | None) -> None:
    trainer = SkipGramTrainer(replace(FAST, optimizer=optimizer, learning_rate=learning_rate))
    embeddings = trainer.fit(planted_sequences())
    assert same_cluster_precision(embeddings.ids, embeddings.vectors) > 5 * CHANCE
    assert trainer.stats.pairs > 0 and trainer.stats.loss_per_epoch[-1] < trainer.stats.loss_per_epoch[0]


def test_deepwalk_recovers_planted_clusters() -> None:
    graph = ItemGraph.from_edges(*planted_graph())
    walks = RandomWalker(graph, seed=1).item_walks(walks_per_node=5, walk_length=20)
    embeddings = SkipGramTrainer(FAST).fit(walks)
    assert same_cluster_precision(embeddings.ids, embeddings.vectors) > 5 * CHANCE


def test_deepwalk_follows_edge_weights() -> None:
    graph = ItemGraph.from_edges(["a", "a", "b", "c"], ["b", "c", "a", "a"], [9.0, 1.0, 1.0, 1.0])
    walks = RandomWalker(graph, seed=0).walks(walks_per_node=4000, walk_length=2)
    from_a = walks[walks[:, 0] == 0, 1]
    assert np.mean(from_a == 1) == pytest.approx(0.9, abs=0.02)


def _local_share(graph: ItemGraph, walks: np.ndarray) -> float:
    """Share of steps whose next node is the previous one or linked to it (BFS-like moves)."""
    previous, following = walks[:, :-2].ravel(), walks[:, 2:].ravel()
    valid = following >= 0
    previous, following = previous[valid], following[valid]
    return float(np.mean((previous == following) | graph.has_edge(following, previous)))


def test_node2vec_q_switches_between_bfs_and_dfs_like_walks() -> None:
    rng = np.random.default_rng(0)
    src, dst = [], []
    for a in range(300):
        for b in rng.choice(300, 8, replace=False):
            if a != b:
                src += [f"n{a}", f"n{b}"]
                dst += [f"n{b}", f"n{a}"]
    graph = ItemGraph.from_edges(src, dst, [1.0] * len(src))
    local = {q: _local_share(graph, RandomWalker(graph, p=1.0, q=q, seed=2).walks(5, 20)) for q in (0.1, 1.0, 10.0)}
    distinct = {q: np.mean([len(set(w)) for w in RandomWalker(graph, p=1.0, q=q, seed=2).walks(5, 20)]) for q in (0.1, 10.0)}
    assert local[10.0] > 2 * local[1.0] > 2 * local[0.1] * 1.5
    assert distinct[0.1] > distinct[10.0]


def test_node2vec_low_p_returns_often() -> None:
    graph = ItemGraph.from_edges(*planted_graph())
    walks = RandomWalker(graph, p=0.05, q=1.0, seed=3).walks(2, 10)
    walks_default = RandomWalker(graph, seed=3).walks(2, 10)
    returns = np.mean(walks[:, 2:] == walks[:, :-2])
    assert returns > 3 * np.mean(walks_default[:, 2:] == walks_default[:, :-2])


def test_bad_inputs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="window"):
        SkipGramConfig(window=0)
    with pytest.raises(ValueError, match="optimizer must be adagrad or sgd, got 'adam'"):
        SkipGramConfig(optimizer="adam")
    with pytest.raises(ValueError, match="min_learning_rate <= learning_rate"):
        SkipGramConfig(optimizer="sgd", min_learning_rate=0.05)
    with pytest.raises(ValueError, match="two or more known items"):
        SkipGramTrainer(FAST).fit([["a"], ["b"]])
    with pytest.raises(ValueError, match=r"edge 1 \(b -> c\) has invalid weight"):
        ItemGraph.from_edges(["a", "b"], ["b", "c"], [1.0, -2.0])
    with pytest.raises(ValueError, match="positive"):
        RandomWalker(ItemGraph.from_edges(["a"], ["b"], [1.0]), q=0)


def test_learning_rate_defaults_follow_the_optimizer() -> None:
    assert SkipGramConfig().to_dict()["learning_rate"] == 0.5
    assert SkipGramConfig(optimizer="sgd").to_dict()["learning_rate"] == 0.025  # gensim's alpha
    assert SkipGramConfig(optimizer="sgd", learning_rate=0.1).initial_learning_rate == 0.1
