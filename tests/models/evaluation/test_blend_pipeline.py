"""The protocol run's blended pipeline (issue 20 item 4): the tuned peer itself is the blend's
channel, the blend is scored under full ranking, and the pipeline row is the order that wins on
validation among recall, recall → DIN, blend and blend → DIN."""

from __future__ import annotations

import numpy as np

from models.evaluation.baselines import ItemKNNRecommender, ItemTransitions
from models.evaluation.end_to_end import SampleConfig
from models.evaluation.metrics import rank_metrics
from models.evaluation.offline_pipeline import EvaluationConfig
from models.evaluation.protocol import full_ranks, protocol_split
from models.evaluation.protocol_run import PIPELINE, ProtocolConfig, grid, run_protocol
from models.retrieval.blend import BlendedRecall
from models.retrieval.reason_selection import SelectedBlendScores, fit_reason_penalty
from models.retrieval.scored_channels import ItemKNNScores
from tests.models.test_protocol import _chains


def test_blend_uses_the_tuned_peer_and_the_pipeline_serves_the_validation_winner() -> None:
    split = protocol_split(_chains(users=60, items=20))
    pipeline = EvaluationConfig(recall_models=(), rankers=("din",), ranker_epochs=1, ranker_embedding_dim=4,
                                samples=SampleConfig(positions_per_user=2, recall_depth=20, max_seq_len=4))  # fmt: skip
    config = ProtocolConfig(peers=("ItemKNN", "SR"), knn_grid=grid(neighbours=[5], recent=[1, None]),
                            sr_grid=grid(window=[1, 3], neighbours=[5], recent=[1, 2]), pipeline=pipeline, bootstrap_rounds=20)  # fmt: skip
    result = run_protocol(split, {}, config)
    scored = result.models["blend"].model
    assert isinstance(scored, SelectedBlendScores) and isinstance(scored.model, BlendedRecall)
    blend = scored.model
    tuned, rules = result.models["ItemKNN"].model, result.models["SR"].model
    assert all(isinstance(c, ItemKNNScores) and c.model in (tuned, rules) for c in blend.channels)
    assert blend.channels[0].model is tuned and blend.channels[0].recent == tuned.recent  # the tuned window, then others
    sr_channels = [c for c in blend.channels if c.model is rules]  # type: ignore[attr-defined]
    assert sr_channels[0].recent == rules.recent and [c.name for c in sr_channels][0] == "sr"
    # SR's choice is the grid point with the best validation NDCG@10, recomputed here.
    window = result.models["SR"].params["window"]
    again = ItemKNNRecommender(split.training_sequences(), 5, rules.recent, ItemTransitions(split.training_sequences(), window))
    assert np.allclose(rank_metrics(full_ranks(again, split.validation, split.items))["NDCG@10"], result.models["SR"].validation["NDCG@10"])
    assert max(score for _, score in result.models["SR"].grid) == float(result.models["SR"].validation["NDCG@10"].mean())
    # The reason selection's penalty is the one validation chooses; the blend is ranked in the
    # order it serves (full ranking computed again outside the run).
    users = sorted(split.validation.test)
    chosen_penalty = fit_reason_penalty(blend, [split.validation.train[u] for u in users], [split.validation.test[u] for u in users], None)
    assert blend.reason_penalty == chosen_penalty.penalty == result.models["blend"].params["reason_penalty"]
    again = rank_metrics(full_ranks(SelectedBlendScores(blend, None), split.test, split.items))["NDCG@10"]
    assert np.allclose(again, result.models["blend"].test["NDCG@10"])
    orders = ("recall only", "recall → din", "blend", "blend → din")
    validation = {name: float(result.models[name].validation["NDCG@10"].mean()) for name in orders}
    chosen = result.models[PIPELINE]
    assert chosen.params["order"] == max(validation, key=validation.get)  # type: ignore[arg-type]
    assert np.array_equal(chosen.test["NDCG@10"], result.models[chosen.params["order"]].test["NDCG@10"])
