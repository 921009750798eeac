"""The quality gate on real recall artifacts, scored on the newest slice of a planted-cluster log
(users browse one cluster): the DAG's embeddings step is blessed over a blessed model trained on
shuffled items; against it, shuffled items, NaN vectors and an empty index are rejected. With no
baseline (a first run) the floors alone decide: the planted model passes them, a model with random
vectors is rejected. The floors' chance level equals an exhaustive enumeration of random rankings."""

from __future__ import annotations

import itertools
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from feature_store.settings import GateSettings, Settings
from models.embeddings.item_embeddings import ItemEmbeddings
from models.embeddings.skipgram import SkipGramConfig
from models.embeddings.training import EmbeddingTrainingConfig
from models.evaluation import LeaveLastOut
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact
from pipelines.training import gate, recall, steps
from pipelines.training.executor import StepContext
from pipelines.training.holdout import holdout_cutoff, newest_slice_split, read_positives
from tests.models.planted_clusters import CLUSTERS, PER_CLUSTER, planted_sequences
from tests.pipelines.training.conftest import fresh_registry, planted_click_log

pytestmark = pytest.mark.slow

LENGTH = 12


def _publish(settings: Settings, artifact: RecallArtifact) -> str:
    from models.retrieval.artifact import publish_recall

    manifest = {"params": {}, "data_window": {}, "metrics": {}}
    return publish_recall(ModelRegistry(settings.model_registry_dir), artifact, manifest, set_current=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, str]]:
    root = tmp_path_factory.mktemp("gate-recall")
    settings = Settings(state_dir=root / "state")
    settings = settings.model_copy(update={"training": settings.training.model_copy(update={
        "embedding_models": ["item2vec"], "embedding_dim": 16, "embedding_epochs": 3})})  # fmt: skip
    planted_click_log(settings, users=300, length=LENGTH, step=timedelta(days=1))
    good = steps.embeddings(StepContext(settings, "t", {})).outputs
    positives = read_positives(settings)
    cutoff = holdout_cutoff(settings, positives)
    assert good["holdout_from"] == cutoff.isoformat()
    rng = np.random.default_rng(5)
    shuffled = [[f"i{rng.integers(CLUSTERS * PER_CLUSTER)}" for _ in items]
                for items in planted_sequences(users=300, length=LENGTH, seed=1)]  # fmt: skip
    config = EmbeddingTrainingConfig(SkipGramConfig(dim=16, epochs=3), models=("item2vec",))
    artifact = recall.train_recall(shuffled, config).artifact
    versions = {"good": good["recall_version"], "shuffled": _publish(settings, artifact)}
    good_artifact = RecallArtifact.load(ModelRegistry(settings.model_registry_dir).get("recall", versions["good"]).path, ["item2vec"])
    vectors = good_artifact.embeddings["item2vec"].vectors.copy()
    vectors[::7] = np.nan  # the index was built from the finite vectors: only the sanity check sees this
    nan = ItemEmbeddings(good_artifact.embeddings["item2vec"].ids, vectors)
    versions["nan"] = _publish(settings, RecallArtifact({"item2vec": nan}, good_artifact.indexes, good_artifact.popular))
    empty = ItemEmbeddings(np.array([], dtype=str), np.zeros((0, 16), np.float32))
    random = ItemEmbeddings(nan.ids, np.random.default_rng(11).normal(size=vectors.shape).astype(np.float32))
    versions["random"] = _publish(settings, RecallArtifact.build({"item2vec": random}, recall.PopularityRecommender(shuffled)))
    versions["empty"] = _publish(settings, RecallArtifact.build({"item2vec": empty}, recall.PopularityRecommender(shuffled)))
    return settings.model_copy(update={"registry_dir": None}), versions | {"holdout_from": good["holdout_from"]}


def _gate(settings: Settings, candidate: str, holdout_from: str) -> dict:
    context = StepContext(settings, "gate-test", {"recall_version": candidate, "holdout_from": holdout_from})
    context.outputs |= steps.evaluate(context).outputs
    return steps.decide(context).metrics["recall"]


def test_planted_recall_is_blessed_over_a_blessed_shuffled_one(trained: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, registry = fresh_registry(trained[0], tmp_path)
    versions = trained[1]
    registry.bless("recall", versions["shuffled"], {"planted": "baseline"})
    decision = _gate(settings, versions["good"], versions["holdout_from"])
    ndcg = next(c for c in decision["checks"] if c["metric"] == "NDCG@10")
    assert decision["baseline"] == versions["shuffled"] and decision["blessed"], decision
    assert ndcg["candidate"] > 2 * ndcg["baseline"] > 0, ndcg
    assert registry.blessed("recall").version == versions["good"]


@pytest.mark.parametrize("bad", ["shuffled", "nan", "empty"])
def test_shuffled_nan_or_empty_recall_is_rejected(trained: tuple[Settings, dict[str, str]], tmp_path: Path, bad: str) -> None:
    settings, registry = fresh_registry(trained[0], tmp_path)
    versions = trained[1]
    registry.bless("recall", versions["good"], {"planted": "baseline"})
    decision = _gate(settings, versions[bad], versions["holdout_from"])
    assert decision["baseline"] == versions["good"] and not decision["blessed"], decision
    assert registry.blessing("recall", versions[bad]) is None
    expected = {"shuffled": None, "nan": "non-finite vectors", "empty": "empty index"}[bad]
    assert (expected in " ".join(decision["problems"])) if expected else not all(c["passed"] for c in decision["checks"])


def test_with_no_baseline_the_floors_bless_the_planted_model_and_reject_random_vectors(
    trained: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, registry = fresh_registry(trained[0], tmp_path)
    versions = trained[1]
    good = _gate(settings, versions["good"], versions["holdout_from"])
    assert good["baseline"] is None and good["blessed"], good
    settings, registry = fresh_registry(trained[0], tmp_path / "again")
    random = _gate(settings, versions["random"], versions["holdout_from"])
    assert random["baseline"] is None and not random["problems"] and not random["blessed"], random
    split = newest_slice_split(read_positives(settings), datetime.fromisoformat(versions["holdout_from"]))
    chance = gate.chance_metrics(split)
    for check in random["checks"]:  # rejected by each floor; random vectors score about chance
        assert check["baseline"] is None and check["candidate"] < check["floor"], check
        assert 0 < check["candidate"] < 2 * chance[check["metric"]] < check["floor"], (check, chance)
    assert registry.blessing("recall", versions["random"]) is None


def test_chance_level_equals_the_mean_over_every_random_ranking() -> None:
    """The catalog is what the histories hold (a..e); u1 saw a (held-out b), u2 saw a, c (held-out
    e), u3 saw b, d, e (held-out z, outside the catalog: no ranking of the catalog can hit it)."""
    split = LeaveLastOut({"u1": ["a"], "u2": ["a", "c", "a"], "u3": ["b", "d", "e"]}, {"u1": "b", "u2": "e", "u3": "z"})
    catalog = "abcde"
    expected = {"HR@2": 0.0, "NDCG@2": 0.0, "HR@50": 0.0}
    for user, held_out in split.test.items():
        left = [item for item in catalog if item not in split.train[user]]
        rankings = list(itertools.permutations(left))
        for ranking in rankings:
            rank = ranking.index(held_out) + 1 if held_out in ranking else math.inf
            expected["HR@2"] += (rank <= 2) / len(rankings) / 3
            expected["NDCG@2"] += (1 / math.log2(rank + 1) if rank <= 2 else 0.0) / len(rankings) / 3
            expected["HR@50"] += (rank <= 50) / len(rankings) / 3
    assert gate.chance_metrics(split, tuple(expected)) == pytest.approx(expected)


def test_a_window_too_small_to_tell_a_model_from_chance_rejects_the_candidate(
    trained: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, registry = fresh_registry(trained[0], tmp_path)
    users = len(newest_slice_split(read_positives(settings), datetime.fromisoformat(trained[1]["holdout_from"])).test)
    strict = settings.training.gate.model_copy(update={"recall_min_chance_hits": users + 1.0})  # > users x chance, as chance <= 1
    settings = settings.model_copy(update={"training": settings.training.model_copy(update={"gate": strict})})
    decision = _gate(settings, trained[1]["good"], trained[1]["holdout_from"])
    assert not decision["blessed"] and all(check["passed"] for check in decision["checks"]), decision
    assert decision["problems"] and decision["problems"][0].startswith("held-out window too small"), decision
    # Held-out items outside the catalog (chance 0) or a handful of users: nothing to judge on.
    assert gate.window_problems(3, {"HR@50": 0.0}, strict) and gate.window_problems(3, {"HR@50": 0.5}, GateSettings())
    assert gate.window_problems(4, {"HR@50": 0.5}, GateSettings()) == []  # 2 expected random hits: the default minimum
