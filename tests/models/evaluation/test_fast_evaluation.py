"""The evaluation's batched paths (issue 20: evaluation time) give what a straightforward
computation gives: ranker training rows against a row-by-row loop over a planted log with tied
timestamps, the batched reranker against one ranker call per user, and the ItemKNN grid's shared
cosines against a fresh fit per grid point."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse

from models.evaluation import ItemKNNRecommender, PopularityRecommender, leave_last_one_out
from models.evaluation.baselines import ItemCosine
from models.evaluation.end_to_end import (
    POPULARITY_WINDOWS, CandidateFeatures, RerankRecommender, SampleConfig, write_training_samples,
)  # fmt: skip
from models.evaluation.offline_pipeline import EvaluationConfig
from models.evaluation.protocol import ListScorer, full_ranks, protocol_split, ranks_and_lists, top_lists, tune
from models.evaluation.protocol_run import ProtocolConfig, grid, run_protocol
from models.ranking.dataset import decode_batch
from models.retrieval.multichannel import ItemCFChannel, MultiChannelRecall, PopularChannel
from tests.models.test_evaluation_findings import _tied_interactions
from tests.models.test_protocol import _chains


def _expected_rows(split, recall, categories, config: SampleConfig) -> list[dict]:  # type: ignore[no-untyped-def]
    """Ranker rows computed one at a time from the definitions (docs/evaluation.md), drawing
    negatives in the same order from the same seed."""
    rng = np.random.default_rng(config.seed)
    events = [(item, ts) for user, items in split.train.items() for item, ts in zip(items, split.train_ts[user])]
    universe = sorted({item for item, _ in events})
    rows = []
    for user in sorted(u for u, items in split.train.items() if len(items) >= 2):
        sequence, seen = split.train[user], set(split.train[user])
        first = 1 if config.positions_per_user is None else max(1, len(sequence) - 1 - config.positions_per_user)
        for t in range(first, len(sequence)):
            history = sequence[:t]
            recalled = [c.item_id for c in recall.recall(history, config.recall_depth) if c.item_id not in seen]
            picks = rng.choice(len(recalled), size=min(config.recall_negatives, len(recalled)), replace=False) if recalled else []
            items = [sequence[t]] + [recalled[i] for i in picks]
            drawn = rng.choice(len(universe), size=config.random_negatives * 3, replace=False)
            items += [i for i in (universe[j] for j in drawn) if i not in seen][: config.random_negatives]
            at = split.train_ts[user][t - 1]
            share = Counter(categories.get(i, "") for i in history)
            for n, item in enumerate(items):
                row = {"user_id": user, "item_id": item, "label": int(n == 0), "ts": at,
                       "hist_item_ids": list(history)[-config.max_seq_len :],
                       "user_positive_count": float(len(history)),
                       "user_category_affinity": share[categories.get(item, "")] / len(history)}  # fmt: skip
                for name, window in POPULARITY_WINDOWS.items():
                    row[name] = float(sum(1 for i, ts in events if i == item and ts < at and (window is None or ts > at - window)))
                rows.append(row)
    return rows


def test_ranker_rows_equal_a_row_by_row_computation(tmp_path: Path) -> None:
    interactions = _tied_interactions(users=30, length=7)
    split = leave_last_one_out(interactions)
    sequences = split.train_sequences()
    categories = {f"i{i}": f"c{i % 4}" for i in range(25)}  # some items without a category
    recall = MultiChannelRecall([ItemCFChannel(ItemKNNRecommender(sequences)), PopularChannel(PopularityRecommender(sequences).top)])
    dense = (*POPULARITY_WINDOWS, "user_positive_count", "user_category_affinity")
    config = SampleConfig(recall_depth=12, max_seq_len=4, dense_features=dense, seed=5)
    path = tmp_path / "samples.parquet"
    write_training_samples(split, recall, CandidateFeatures(split, categories, 4, dense), config, path)
    written = pq.read_table(path).to_pylist()
    expected = _expected_rows(split, recall, categories, config)
    assert len(written) == len(expected) > 100
    for got, want in zip(written, expected):
        assert got["ts"].timestamp() == want.pop("ts")
        stored = {name: float(np.float32(v)) if name in dense else v for name, v in want.items()}  # float32 columns
        assert {name: got[name] for name in want} == stored
    # The plant exercises what the definitions guard: windows that hold some positives, not all.
    assert any(0 < row["item_pop_7d"] < row["item_popularity"] for row in written)


def test_batched_reranking_equals_one_ranker_call_per_user() -> None:
    split = protocol_split(_chains(users=60, items=20))
    pipeline = EvaluationConfig(recall_models=(), rankers=("din",), ranker_epochs=1, ranker_embedding_dim=4,
                                samples=SampleConfig(positions_per_user=2, recall_depth=20, max_seq_len=4))  # fmt: skip
    config = ProtocolConfig(peers=("ItemKNN",), knn_grid=grid(neighbours=[5], recent=[1]), pipeline=pipeline, bootstrap_rounds=20)
    result = run_protocol(split, {}, config)
    users = sorted(split.test.test)
    histories = [split.test.train[u] for u in users]
    for name in ("recall → din", "blend → din"):
        scorer = result.models[name].model
        assert isinstance(scorer, ListScorer) and isinstance(scorer.model, RerankRecommender)
        rerank = scorer.model
        batched = rerank.recommend_users(users, histories, 20)
        for user, history, got in zip(users, histories, batched):
            candidates = [c.item_id for c in rerank.recall.recall(history, rerank.depth)]
            at = rerank.features.as_of(user, len(history))
            rows = rerank.features.rows(user, history, at, candidates, [0] * len(candidates), ["recall"] * len(candidates), "test")
            batch = decode_batch(pa.RecordBatch.from_pydict(rows, schema=rerank.schema), rerank.spec, "candidates")
            batch.pop("label", None)
            alone = np.asarray(rerank.score(batch), dtype=np.float64)
            assert got == [candidates[i] for i in np.argsort(-alone, kind="stable")[:20]], (name, user)
        own = scorer.batch_user_scores(users[:5], histories[:5])
        assert all(np.array_equal(a, scorer.user_scores(u, h)) for a, u, h in zip(own, users, histories))


def test_item_knn_grid_shares_one_cosine_fit() -> None:
    sequences = [[f"i{(u * 3 + k * (u % 5 + 1)) % 17}" for k in range(6)] for u in range(40)]
    cosine = ItemCosine(sequences)
    binary = np.zeros((len(sequences), len(cosine.ids)))
    for u, sequence in enumerate(sequences):
        binary[u, [cosine.position[i] for i in sequence]] = 1.0
    unit = binary / np.linalg.norm(binary, axis=0)
    dense = unit.T @ unit
    np.fill_diagonal(dense, 0.0)
    assert np.allclose(cosine.similarity.toarray(), dense)
    for neighbours, recent in [(3, 1), (3, None), (8, 2)]:
        shared = ItemKNNRecommender(sequences, neighbours, recent, similarity=cosine)
        fresh = ItemKNNRecommender(sequences, neighbours, recent)
        assert (shared.similarity != fresh.similarity).nnz == 0 and shared.recent == recent
        assert all(np.diff(shared.similarity.indptr) <= neighbours)
    assert sparse.issparse(cosine.similarity)
    # Neighbour lists come from one sort per row, in any order of requests and lengths.
    model = ItemKNNRecommender(sequences, 8)
    for item, k in [("i3", 2), ("i3", 8), ("i5", 5), ("i3", 1), ("i5", 20)]:
        start, end = model.similarity.indptr[cosine.position[item]], model.similarity.indptr[cosine.position[item] + 1]
        row = model.similarity.data[start:end]
        want = sorted(row, reverse=True)[:k]
        assert [score for _, score in model.neighbours(item, k)] == want


def test_one_pass_gives_the_ranks_and_top_lists_of_two() -> None:
    split = protocol_split(_chains(users=60, items=20))
    model = ItemKNNRecommender(split.training_sequences(), 5, 1)  # many tied scores: the draws matter
    ranks, lists = ranks_and_lists(model, split.test, split.items, seed=4)
    assert np.array_equal(ranks, full_ranks(model, split.test, split.items, seed=4))
    assert lists == top_lists(model, split.test, split.items, 10, seed=4)
    tuned = tune("ItemKNN", lambda **p: ItemKNNRecommender(split.training_sequences(), **p), [{"neighbours": 5, "recent": 1}], split, 4)
    assert tuned.test_lists == lists


def test_top_lists_never_list_a_history_item_when_fewer_than_k_are_unseen() -> None:
    split = protocol_split(_chains(users=30, items=12, length=10))  # 8 training items of 12: 4 unseen
    model = PopularityRecommender(split.training_sequences())
    for k in (10, len(split.items)):  # both sorting paths: partial (k < items) and full
        for user, top in zip(sorted(split.test.test), top_lists(model, split.test, split.items, k)):
            unseen = set(split.items) - set(split.test.train[user])
            assert set(top) == unseen and len(top) == len(unseen)
