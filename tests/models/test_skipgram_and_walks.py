"""Skip-gram trainer, Item2vec, DeepWalk and Node2vec on data with planted clusters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.embeddings.pairs import keep_probabilities, skipgram_pairs, unigram_table
from models.embeddings.sgns_update import compiled_block, padded_rows
from models.embeddings.inputs import transition_graph
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.embeddings.training import EmbeddingTrainingConfig, WalkConfig, train_embeddings
from models.embeddings.vocab import encode_corpus
from models.embeddings.walks import ItemGraph, RandomWalker
from planted_clusters import CLUSTERS, planted_graph, planted_sequences, same_cluster_precision

CHANCE = 1 / CLUSTERS
FAST = SkipGramConfig(dim=16, window=3, negatives=5, epochs=3, batch_size=512)


def test_pairs_stay_inside_sequences_and_window() -> None:
    tokens = np.array([0, 1, 2, 3, 4, 5], dtype=np.int32)
    sequence_of = np.array([0, 0, 0, 1, 1, 1])
    targets, contexts = skipgram_pairs(tokens, sequence_of, 1, np.ones(6), np.random.default_rng(0), shrink_window=False)
    assert sorted(zip(targets.tolist(), contexts.tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3), (4, 5), (5, 4)]


@pytest.mark.parametrize(
    "min_count, ids, counts, tokens, sequence_of",
    [
        (1, ["a", "b", "d", "1", "2", "c"], [4, 3, 2, 1, 1, 1],
         [0, 1, 0, 1, 2, 3, 4, 0, 2, 5, 1, 0], [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3]),
        (2, ["a", "b", "d"], [3, 3, 2], [0, 1, 0, 1, 2, 2, 1, 0], [0, 0, 0, 1, 1, 2, 2, 2]),
    ],
)  # fmt: skip
def test_encoding_ranks_items_by_count_and_drops_what_makes_no_pair(
    min_count: int, ids: list[str], counts: list[int], tokens: list[int], sequence_of: list[int]
) -> None:
    """Most frequent first, ties in order of first appearance; rare items leave their sequences,
    and sequences left with fewer than two items are dropped. Counts and vocabulary come only from
    sequences that make pairs: "c" alone in ["c"] does not count, nor "a" left alone by 1 and 2."""
    sequences = [["a", "b", "a"], ["c"], ["b", "d"], [1, 2, "a"], [], ["d", "c", "b", "a"]]
    vocabulary, corpus = encode_corpus(sequences, min_count)
    assert vocabulary.ids.tolist() == ids and vocabulary.counts.tolist() == counts
    assert corpus.tokens.tolist() == tokens and corpus.sequence_of.tolist() == sequence_of


def test_items_never_in_a_pair_get_no_vector() -> None:
    """An item seen only in one-item sequences is never trained: it gets no vector (a random one
    would be indexed and served as a neighbour), in Item2vec or in the walk models."""
    singles = [f"s{j}" for j in range(10)]
    sequences = planted_sequences(users=100) + [[item] for item in singles]
    graph = ItemGraph.from_edges(*transition_graph(sequences))
    models = ("item2vec", "deepwalk", "node2vec")
    config = EmbeddingTrainingConfig(replace(FAST, epochs=1), WalkConfig(2, 10), models)
    trained = train_embeddings(sequences, graph, config)
    trained_items = {item for sequence in sequences if len(sequence) >= 2 for item in sequence}
    for name, embeddings in trained.embeddings.items():
        assert set(embeddings.ids.tolist()) == trained_items, name


def test_subsampling_and_unigram_table_follow_word2vec() -> None:
    counts = np.array([10_000, 100, 1])
    keep = keep_probabilities(counts, 1e-3)
    assert keep[0] < 0.05 and keep[2] == 1.0
    table = unigram_table(counts, 0.75, size=100_000)
    share = np.bincount(table, minlength=3) / len(table)
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(share, expected, atol=1e-3)


@pytest.mark.parametrize("optimizer, learning_rate", [("rowwise_adagrad", None), ("adagrad", None), ("sgd", 0.1)])
def test_item2vec_recovers_planted_clusters(optimizer: str, learning_rate: float | None) -> None:
    trainer = SkipGramTrainer(replace(FAST, optimizer=optimizer, learning_rate=learning_rate))
    embeddings = trainer.fit(planted_sequences())
    assert same_cluster_precision(embeddings.ids, embeddings.vectors) > 5 * CHANCE
    assert trainer.stats.pairs > 0 and trainer.stats.loss_per_epoch[-1] < trainer.stats.loss_per_epoch[0]


def test_training_is_reproducible_and_compiles_once_per_configuration() -> None:
    sequences = planted_sequences()
    first = SkipGramTrainer(FAST).fit(sequences)
    traces = compiled_block(FAST.batch_size, FAST.negatives, FAST.optimizer).experimental_get_tracing_count()
    second = SkipGramTrainer(FAST).fit(sequences)
    np.testing.assert_array_equal(first.vectors, second.vectors)
    assert compiled_block(FAST.batch_size, FAST.negatives, FAST.optimizer).experimental_get_tracing_count() == traces
    assert not np.array_equal(first.vectors, SkipGramTrainer(replace(FAST, seed=1)).fit(sequences).vectors)


def test_tables_are_padded_to_a_few_shared_sizes() -> None:
    assert [padded_rows(n) for n in (1, 9, 1000, 1024, 1025, 1432)] == [8, 16, 1024, 1024, 1152, 1536]


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
    with pytest.raises(ValueError, match="optimizer must be one of adagrad, rowwise_adagrad, sgd, got 'adam'"):
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
    assert SkipGramConfig().to_dict()["learning_rate"] == 1.0  # rowwise_adagrad
    assert SkipGramConfig(optimizer="adagrad").to_dict()["learning_rate"] == 0.5
    assert SkipGramConfig(optimizer="sgd").to_dict()["learning_rate"] == 0.025  # gensim's alpha
    assert SkipGramConfig(optimizer="sgd", learning_rate=0.1).initial_learning_rate == 0.1
