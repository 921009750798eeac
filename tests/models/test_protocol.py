"""The field's protocol: the split, full ranking with masking and random tie-breaks, the metrics
from ranks, tuning on validation, and the ALS and GRU4Rec peers on planted data."""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
import pytest

from models.evaluation import ItemKNNRecommender, PopularityRecommender
from models.evaluation.metrics import rank_metrics
from models.evaluation.peers import ImplicitALS
from models.retrieval.sequential import GRU4Rec
from models.evaluation.protocol import ListScorer, full_ranks, protocol_split, top_lists, tune
from models.evaluation.split import LeaveLastOut


def test_split_keeps_users_with_five_and_holds_out_last_two_by_time() -> None:
    rows = [("u1", f"i{n}", float(10 - n)) for n in range(6)] + [("u2", f"j{n}", float(n)) for n in range(4)]
    split = protocol_split(rows[::-1])
    assert list(split.validation.train) == ["u1"]  # u2 has only 4 interactions
    assert split.validation.train["u1"] == ["i5", "i4", "i3", "i2"] and split.validation.test["u1"] == "i1"
    assert split.test.train["u1"] == ["i5", "i4", "i3", "i2", "i1"] and split.test.test["u1"] == "i0"
    assert split.items == tuple(sorted(f"i{n}" for n in range(6)))
    assert split.training_sequences() == [["i5", "i4", "i3", "i2"]]


class _Fixed:
    def __init__(self, scores: dict[str, float]) -> None:
        self.ids = np.array(list(scores))
        self.values = np.array(list(scores.values()), dtype=np.float64)

    def scores(self, history: object) -> np.ndarray:
        return self.values.copy()


def test_full_ranking_masks_history_and_breaks_ties_at_random() -> None:
    items = ["a", "b", "c", "d", "e", "f", "g"]
    # "a" (history) and "b" beat the target "t"-like item "c"; "d", "e" tie with it; "f" is
    # unknown to the model (-inf) and "g" scores lower.
    model = _Fixed({"a": 9.0, "b": 5.0, "c": 3.0, "d": 3.0, "e": 3.0, "g": 1.0})
    split = LeaveLastOut({"u": ["a"]}, {"u": "c"})
    ranks = [full_ranks(model, split, items, seed)[0] for seed in range(600)]
    assert set(ranks) == {2.0, 3.0, 4.0}  # b ahead; a masked; c anywhere among its 3 ties
    assert abs(np.mean(ranks) - 3.0) < 0.1
    # A target the model does not know ties with every other unknown item at the bottom.
    unknown = LeaveLastOut({"u": ["a"]}, {"u": "f"})
    assert full_ranks(model, unknown, items + ["h"], 0)[0] in (7.0, 8.0)
    assert full_ranks(model, LeaveLastOut({"u": ["c"]}, {"u": "c"}), items)[0] == math.inf


def test_metrics_from_ranks() -> None:
    values = rank_metrics(np.array([1.0, 3.0, 60.0, math.inf]), (10, 50))
    assert values["HR@10"].tolist() == [1.0, 1.0, 0.0, 0.0] and values["HR@50"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert np.allclose(values["NDCG@10"], [1.0, 0.5, 0.0, 0.0]) and np.allclose(values["MRR"], [1.0, 1 / 3, 1 / 60, 0.0])


def _chains(users: int = 80, items: int = 30, length: int = 8, seed: int = 0) -> list[tuple[str, str, float]]:
    """Each user walks a cycle of items one step at a time: the next item follows the last."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        start = int(rng.integers(items))
        rows += [(f"u{u}", f"i{(start + t) % items}", float(t)) for t in range(length)]
    return rows


def test_tuning_chooses_on_validation_and_reports_that_model_on_test() -> None:
    split = protocol_split(_chains())
    sequences = split.training_sequences()
    grid = [{"neighbours": 5, "recent": None}, {"neighbours": 5, "recent": 1}]
    tuned = tune("ItemKNN", lambda **p: ItemKNNRecommender(sequences, **p), grid, split)
    scores = {str(p): s for p, s in tuned.grid}
    # On chains only the last item predicts the next one: the last-1 window wins on validation.
    assert tuned.params == {"neighbours": 5, "recent": 1} and scores[str(grid[1])] > scores[str(grid[0])]
    assert tuned.test["HR@10"].mean() > 0.9
    pop = tune("Pop", lambda: PopularityRecommender(sequences), [{}], split)
    assert pop.test["NDCG@10"].mean() < tuned.test["NDCG@10"].mean()


def test_als_fold_in_solves_the_weighted_least_squares_of_hu_koren_volinsky() -> None:
    split = protocol_split(_chains(users=60, items=20))
    als = ImplicitALS(split.training_sequences(), factors=8, regularization=0.1, alpha=5.0, iterations=5)
    history = ["i3", "i4", "i5"]
    preference = np.isin(als.ids, history).astype(np.float64)
    confidence = 1.0 + 5.0 * preference
    # Independent solution: min Σ_i c_i (p_i - yᵢᵀx)² + λ‖x‖² as one stacked least-squares problem.
    weights = np.sqrt(confidence)[:, None]
    system = np.vstack([weights * als.factors, math.sqrt(0.1) * np.eye(8)])
    target = np.concatenate([np.sqrt(confidence) * preference, np.zeros(8)])
    user = np.linalg.lstsq(system, target, rcond=None)[0]
    assert np.allclose(als.scores(history), als.factors @ user, atol=1e-6)


def test_als_trains_with_the_confidence_its_fold_in_solves_with() -> None:
    """HKV's c = 1 + α for an interaction; `implicit` weighs a stored value r by its `alpha` (c = alpha·r),
    so the same model is implicit's alpha = 1 + α on the 0/1 matrix: the item factors must be its."""
    from implicit.cpu.als import AlternatingLeastSquares

    sequences = protocol_split(_chains(users=60, items=20)).training_sequences()
    als = ImplicitALS(sequences, factors=8, regularization=0.1, alpha=1.0, iterations=5, seed=3)
    rows = [u for u, sequence in enumerate(sequences) for _ in dict.fromkeys(sequence)]
    columns = [als.position[item] for sequence in sequences for item in dict.fromkeys(sequence)]
    interactions = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, columns)), shape=(len(sequences), len(als.ids)))
    reference = AlternatingLeastSquares(factors=8, regularization=0.1, alpha=2.0, iterations=5, random_state=3)
    reference.fit(interactions, show_progress=False)
    assert np.allclose(als.factors, reference.item_factors, atol=1e-4)


def test_gru4rec_learns_what_follows_and_list_models_rank_fully() -> None:
    split = protocol_split(_chains(users=120, items=20, length=10))
    gru = GRU4Rec(split.training_sequences(), dim=16, dropout=0.0, learning_rate=1e-2, batch_size=16).fit(8)
    hits = rank_metrics(full_ranks(gru, split.test, split.items))["HR@10"].mean()
    assert hits > 0.8  # chance is about 10 / 20 (history masked): the GRU reads the order
    knn = ItemKNNRecommender(split.training_sequences(), recent=1)
    ranks = full_ranks(ListScorer(knn, split.items, depth=2), split.test, split.items)
    for user, rank in zip(sorted(split.test.test), ranks):
        listed = knn.recommend(split.test.train[user], 2)
        target = split.test.test[user]
        # A listed target keeps its list position; an unlisted one ties with every other
        # unlisted, unmasked item below the list.
        assert rank == listed.index(target) + 1 if target in listed else rank > len(listed)


def test_protocol_needs_three_interactions_per_user() -> None:
    with pytest.raises(ValueError, match="min_interactions"):
        protocol_split([], min_interactions=2)


def test_recsys_evaluate_field_protocol_reports_tuned_peers_and_the_pipeline(tmp_path, settings) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from services.cli import app

    path = tmp_path / "chains.txt"
    by_user: dict[str, list[str]] = {}
    for user, item, _ in _chains(users=60, items=20):
        by_user.setdefault(user, []).append(item)
    path.write_text("".join(f"{user} {' '.join(items)}\n" for user, items in by_user.items()))
    state = ["--state-dir", str(settings.state_dir)]
    runner = CliRunner()
    assert runner.invoke(app, ["data", "import", str(path), "--format", "sequences", *state]).exit_code == 0
    result = runner.invoke(app, ["evaluate", "--protocol", "field", "--peers", "Pop,ItemKNN", "--recall-models", "",
                                 "--rankers", "", "--bootstrap-rounds", "20", *state])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "60 users with >= 5 interactions, 20 items" in result.output
    for name in ("Pop", "ItemKNN", "recall only", "pipeline", "MRR"):
        assert name in result.output
    bad = runner.invoke(app, ["evaluate", "--protocol", "nope", *state])
    assert bad.exit_code != 0 and "unknown protocol 'nope'" in bad.output
    bad_peer = runner.invoke(app, ["evaluate", "--protocol", "field", "--peers", "SVD", *state])
    assert bad_peer.exit_code != 0 and "unknown peers ['SVD']" in bad_peer.output


def test_top_lists_follow_the_scores_without_history() -> None:
    model = _Fixed({"a": 9.0, "b": 5.0, "c": 3.0, "d": 1.0})
    split = LeaveLastOut({"u": ["a"], "v": ["d"]}, {"u": "c", "v": "c"})
    assert top_lists(model, split, ["a", "b", "c", "d", "e"], k=3) == [["b", "c", "d"], ["a", "b", "c"]]


def test_pipeline_serves_the_order_that_wins_on_validation() -> None:
    from models.evaluation.end_to_end import SampleConfig
    from models.evaluation.offline_pipeline import EvaluationConfig
    from models.evaluation.protocol_run import PIPELINE, ProtocolConfig, run_protocol

    split = protocol_split(_chains(users=60, items=20))
    pipeline = EvaluationConfig(recall_models=(), rankers=("din",), ranker_epochs=1, ranker_embedding_dim=4,
                                samples=SampleConfig(positions_per_user=2, recall_depth=20, max_seq_len=4))  # fmt: skip
    result = run_protocol(split, {}, ProtocolConfig(peers=(), pipeline=pipeline, bootstrap_rounds=20))
    validation = {name: result.models[name].validation["NDCG@10"].mean() for name in ("recall only", "recall → din")}
    chosen = result.models[PIPELINE]
    assert chosen.params["order"] == max(validation, key=validation.get)  # type: ignore[arg-type]
    assert np.array_equal(chosen.test["NDCG@10"], result.models[chosen.params["order"]].test["NDCG@10"])
