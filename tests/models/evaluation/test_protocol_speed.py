"""The protocol's faster paths (issue 20: evaluation time) compute what the straightforward ones
did: the top-k lists by partial sort against a full lexicographic sort with the same draws, ALS's
batched fold-in against one least-squares solve per history, and GRU4Rec's training step (the
softmax on real steps only, each batch trimmed to its longest row) against Keras's own step on
the padded rows with the masked loss it used before."""

from __future__ import annotations

import math

import numpy as np

from models.evaluation.peers import ImplicitALS
from models.evaluation.protocol import protocol_split, top_lists
from models.evaluation.split import LeaveLastOut
from models.retrieval.sequential import GRU4Rec
from tests.models.test_protocol import _chains


class _Planted:
    """Integer scores (many ties), some items unknown to the model (scored -inf by the protocol)."""

    def __init__(self, items: list[str], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.ids = np.array(items[: len(items) - 5])
        self.table = rng.integers(0, 4, size=(40, len(self.ids))).astype(np.float64)

    def scores(self, history: list[str]) -> np.ndarray:
        return self.table[int(history[0][1:])].copy()


def _full_sort_lists(model: _Planted, split: LeaveLastOut, items: list[str], k: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    index = {item: i for i, item in enumerate(items)}
    out = []
    for user in sorted(split.test):
        full = np.full(len(items), -np.inf)
        full[[index[i] for i in model.ids]] = model.scores(split.train[user])
        key = np.where(np.isneginf(full), 1e300, -full)
        key[[index[i] for i in split.train[user] if i in index]] = np.inf
        out.append([items[i] for i in np.lexsort((rng.random(len(items)), key))[:k] if np.isfinite(key[i])])  # history never listed
    return out


def test_top_lists_by_partial_sort_equal_a_full_sort_with_the_same_draws() -> None:
    items = [f"i{n}" for n in range(30)]
    split = LeaveLastOut({f"u{u:02d}": [f"h{u}", f"i{u % 30}"] for u in range(40)}, {f"u{u:02d}": "i0" for u in range(40)})
    model = _Planted(items, seed=3)
    for k in (1, 10, 26, 30, 40):  # k = 26: the top reaches the unknown items; 30, 40: every item
        want = _full_sort_lists(model, split, items, k, seed=7)
        assert top_lists(model, split, items, k, seed=7) == want
    assert any(len(set(model.scores(split.train[u])[:10])) < 10 for u in split.test)  # ties the draws decide


def test_als_batched_fold_in_equals_one_least_squares_solve_per_history() -> None:
    split = protocol_split(_chains(users=60, items=20))
    als = ImplicitALS(split.training_sequences(), factors=8, regularization=0.1, alpha=5.0, iterations=5)
    histories = [["i3", "i4", "i5"], ["i7"], ["unknown"], [], ["i1", "i1", "i9", "i12", "i2"]]
    got = als.batch_scores(histories)
    assert got.shape == (len(histories), len(als.ids))
    for history, row in zip(histories, got):
        preference = np.isin(als.ids, history).astype(np.float64)
        weights = np.sqrt(1.0 + 5.0 * preference)[:, None]
        system = np.vstack([weights * als.factors, math.sqrt(0.1) * np.eye(8)])
        user = np.linalg.lstsq(system, np.concatenate([weights[:, 0] * preference, np.zeros(8)]), rcond=None)[0]
        assert np.allclose(row, als.factors @ user, atol=1e-6)
        assert np.allclose(row, als.scores(history), rtol=0, atol=1e-12)
    assert not got[2].any() and not got[3].any()  # nothing known: every score 0


def test_gru4rec_step_on_real_steps_equals_keras_step_on_padded_rows() -> None:
    import keras

    sequences = [[f"i{(u + t * (u % 3 + 1)) % 15}" for t in range(2 + u % 6)] for u in range(24)]
    ours = GRU4Rec(sequences, dim=8, max_len=10, dropout=0.0, learning_rate=1e-2, batch_size=24, seed=1)
    theirs = GRU4Rec(sequences, dim=8, max_len=10, dropout=0.0, learning_rate=1e-2, batch_size=24, seed=1)
    theirs.model.set_weights(ours.model.get_weights())
    # Before: Keras's fit on the rows padded to the window, padding ignored by the loss.
    theirs.model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    encoded = [theirs._encode(s) for s in sequences]
    inputs, targets = theirs._padded([e[:-1] for e in encoded], 10), theirs._padded([e[1:] for e in encoded], 10)
    assert (inputs[:, :3] == 0).all()  # the longest row has 6 steps: the trimmed batch drops padding columns
    theirs.model.fit(inputs, targets, batch_size=24, epochs=1, shuffle=False, verbose=0)
    ours.fit(1)  # one batch holds every row: the shuffle changes no sum
    for mine, keras_weights in zip(ours.model.get_weights(), theirs.model.get_weights()):
        assert np.allclose(mine, keras_weights, atol=1e-5)
    assert not np.allclose(ours.model.get_weights()[0], GRU4Rec(sequences, dim=8, max_len=10, dropout=0.0, seed=1).model.get_weights()[0])


def test_reranking_drops_history_padding_without_changing_a_score() -> None:
    import pyarrow as pa

    from models.evaluation.end_to_end import RerankRecommender, SampleConfig
    from models.evaluation.offline_pipeline import EvaluationConfig
    from models.evaluation.protocol import ListScorer
    from models.evaluation.protocol_run import ProtocolConfig, grid, run_protocol
    from models.ranking.dataset import decode_batch

    split = protocol_split(_chains(users=60, items=20, length=7))
    pipeline = EvaluationConfig(recall_models=(), rankers=("din",), ranker_epochs=1, ranker_embedding_dim=4,
                                samples=SampleConfig(positions_per_user=2, recall_depth=20, max_seq_len=30))  # fmt: skip
    config = ProtocolConfig(peers=("ItemKNN",), knn_grid=grid(neighbours=[5], recent=[1]), pipeline=pipeline, bootstrap_rounds=20)
    scorer = run_protocol(split, {}, config).models["recall → din"].model
    assert isinstance(scorer, ListScorer) and isinstance(scorer.model, RerankRecommender)
    rerank = scorer.model
    users = sorted(split.test.test)[:12]
    histories = [split.test.train[u] for u in users]  # 6 items each: 24 of 30 positions are padding
    candidates = [[c.item_id for c in rerank.recall.recall(h, rerank.depth)] for h in histories]
    ats = [rerank.features.as_of(u, len(h)) for u, h in zip(users, histories)]
    trimmed = rerank._scores(users, histories, ats, candidates)
    padded = []
    for user, history, at, items in zip(users, histories, ats, candidates):
        rows = rerank.features.rows(user, history, at, items, [0] * len(items), ["recall"] * len(items), "test")
        batch = decode_batch(pa.RecordBatch.from_pydict(rows, schema=rerank.schema), rerank.spec, "candidates")
        assert batch["hist_item_ids"].shape[1] == 30
        batch.pop("label", None)
        padded.append(np.asarray(rerank.score(batch), dtype=np.float64))
    assert np.allclose(trimmed, np.concatenate(padded), rtol=0, atol=1e-6)
    assert len(set(np.round(trimmed, 6))) > 10  # the ranker tells candidates apart
