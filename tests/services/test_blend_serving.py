"""Serving the recall artifact's learned blend (issue 20): a real API over a real Redis serves the
blend's top k for the user's live history (checked against a blend computed by hand in the test),
keeps the blend's order when validation found the ranker worse, and ranks with the (real, trained)
DIN only when validation found it better; each shown blended item's reason is the leave-one-out
reason computed by hand."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings, TrainingSettings
from models.embeddings.skipgram import SkipGramConfig, SkipGramTrainer
from models.evaluation.baselines import PopularityRecommender
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact, publish_recall
from models.retrieval.blend import BlendedRecall
from models.evaluation.protocol import top_lists
from models.evaluation.split import LeaveLastOut
from models.retrieval.order_choice import BLEND, RANKER, choose_order
from models.retrieval.reason_selection import SelectedBlendScores
from pipelines.training.blend import fit_serving_blend, validation_split
from services.api.app import create_app
from services.recommend.blend_recall import BLEND_ORDER
from tests.models.evaluation.test_blend_reasons import leave_one_out_reasons
from tests.models.ranking.conftest import ITEMS, category_of
from tests.services.conftest import EventFactory, with_api
from tests.services.test_models import _train_and_publish

pytestmark = pytest.mark.slow
KEY = {"X-API-Key": "k"}
CATEGORIES = 8
SELECTED, SELECTED_PENALTY, SELECTED_DEPTH = "selected", 3.0, 30


def _sequences(users: int = 240, length: int = 12, seed: int = 3) -> list[list[str]]:
    """Each user browses one category of the DIN's planted catalog, with 10% noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        category = int(rng.integers(CATEGORIES))
        items = category + CATEGORIES * rng.integers(0, ITEMS // CATEGORIES, length)
        noise = rng.random(length) < 0.1
        items[noise] = rng.integers(0, ITEMS, int(noise.sum()))
        out.append([f"i{i}" for i in items])
    return out


@pytest.fixture(scope="module")
def registry_with_blend(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One DIN and three recall versions holding the same blend: validation chose the blend's order
    in one (DIN scored as an inverted oracle), the DIN in another (DIN scored as an oracle); the
    third serves the blend's order with a reason selection (penalty SELECTED_PENALTY)."""
    root = tmp_path_factory.mktemp("registry")
    registry = ModelRegistry(root)
    din = _train_and_publish(registry, tmp_path_factory.mktemp("din"), seed=7, epochs=2)
    registry.set_current("ranker", din)
    prefixes, histories, targets = validation_split(_sequences())
    config = SkipGramConfig(dim=16, window=3, negatives=5, epochs=2, batch_size=512, learning_rate=0.1)
    item2vec = SkipGramTrainer(config).fit(prefixes)
    blend = fit_serving_blend(prefixes, histories, targets, {"item2vec": item2vec}, TrainingSettings(blend_gru_epochs=2))

    def oracle(row: int, history: Any, items: list[str]) -> np.ndarray:
        return np.array([1.0 if item == targets[row] else 0.0 for item in items])

    choices = {
        BLEND: choose_order(blend, histories, targets, lambda r, h, i: -oracle(r, h, i), din),
        RANKER: choose_order(blend, histories, targets, oracle, din),
    }
    assert choices[BLEND].order == BLEND and choices[RANKER].order == RANKER
    versions = {}
    for name, choice in choices.items():
        artifact = RecallArtifact.build({"item2vec": item2vec}, PopularityRecommender(prefixes), "exact")
        artifact.blend, artifact.order = blend, choice
        versions[name] = publish_recall(registry, artifact, {"params": {}, "data_window": {}, "metrics": {}}, set_current=False)
    selected = dataclasses.replace(blend, reason_penalty=SELECTED_PENALTY, reason_depth=SELECTED_DEPTH)
    artifact = RecallArtifact.build({"item2vec": item2vec}, PopularityRecommender(prefixes), "exact")
    artifact.blend, artifact.order = selected, choices[BLEND]
    versions[SELECTED] = publish_recall(registry, artifact, {"params": {}, "data_window": {}, "metrics": {}}, set_current=False)
    return {"root": root, "din": din, "recall": versions, "blend": blend, "selected": selected}


def _raw_by_hand(blend: BlendedRecall, channel: Any, history: list[str]) -> np.ndarray:
    """The channel's raw scores over the blend's items, an item it does not know at the lowest."""
    raw = dict(zip(channel.ids.tolist(), channel.batch_scores([history])[0].astype(np.float32).tolist()))
    return np.array([raw.get(item, min(raw.values())) for item in blend.ids.tolist()], dtype=np.float32)


def _reasons_by_hand(blend: BlendedRecall, history: list[str], items: list[str]) -> list[str]:
    """'because you watched Film n' for the history item whose removal takes the most from each
    item's blended score (every channel of non-zero weight re-scored without it)."""
    raws = [lambda h, c=channel: _raw_by_hand(blend, c, h) for channel, w in zip(blend.channels, blend.weights) if w]
    weights = [float(w) for w in blend.weights if w]
    named = leave_one_out_reasons(raws, weights, history, [blend.ids.tolist().index(i) for i in items], blend.normalisation)
    assert all(h is not None for h in named)
    return [f"because you watched Film {h[1:]}" for h in named]  # type: ignore[index]


def _by_hand(blend: BlendedRecall, history: list[str], k: int) -> tuple[list[str], np.ndarray]:
    """The blend's top k computed here: each channel's raw scores over the blend's items (an item
    it does not know at the user's lowest score), z-scored or turned into 1 / (60 + rank) as the
    blend's validation chose, weighted, summed, history masked."""
    ids = list(blend.ids)
    total = np.zeros(len(ids))
    for channel, weight in zip(blend.channels, blend.weights):
        row = _raw_by_hand(blend, channel, history)
        if blend.normalisation == "zscore":
            total += weight * (row - row.mean()) / (row.std() or 1.0)
        else:
            ranks = np.empty(len(ids))
            ranks[np.argsort(-row, kind="stable")] = np.arange(1, len(ids) + 1)
            total += weight / (60.0 + ranks)
    total[[ids.index(item) for item in set(history) if item in ids]] = -np.inf
    top = np.argsort(-total, kind="stable")[:k]
    return [ids[i] for i in top], total[top]


def _serve(settings: Settings, root: Path, recall: str, make_event: EventFactory, history: list[str],
           k: int = 10, new_items: dict[str, str] | None = None) -> dict[str, Any]:
    """`new_items`: item -> category, put into the catalog after the models were trained."""
    ModelRegistry(root).set_current("recall", recall)
    with TestClient(create_app(with_api(settings.model_copy(update={"registry_dir": root}), api_keys=["k"]))) as client:
        for item in range(ITEMS):
            client.put(f"/v1/items/i{item}", json={"title": f"Film {item}", "categories": [category_of(item)]}, headers=KEY)
        for item, category in (new_items or {}).items():
            client.put(f"/v1/items/{item}", json={"title": f"New {item}", "categories": [category]}, headers=KEY)
        start = datetime.now(timezone.utc) - timedelta(minutes=1)
        events = [make_event("fan", item, ts=(start + timedelta(seconds=n)).isoformat()) for n, item in enumerate(history)]
        assert client.post("/v1/events", json=events, headers=KEY).status_code == 202
        body = client.get("/v1/users/fan/recommendations", params={"k": k}).json()
    return body


def test_served_list_is_the_blends_top_k_in_the_blends_order_when_validation_chose_it(
    api_settings: Settings, registry_with_blend: dict[str, Any], make_event: EventFactory
) -> None:
    blend = registry_with_blend["blend"]
    history = ["i3", "i11", "i19", "i27", "i5", "i35", "i43"]  # mostly category c3, one c5
    body = _serve(api_settings, registry_with_blend["root"], registry_with_blend["recall"][BLEND], make_event, history)
    expected, scores = _by_hand(blend, history, 10)
    assert [item["item_id"] for item in body["items"]] == expected, body
    assert np.allclose([item["score"] for item in body["items"]], scores, atol=1e-4)
    assert body["model_versions"]["ranker"] == BLEND_ORDER and body["fallback"] is None
    offline = blend.recall(history, 10)  # the code `recsys evaluate` ranks with
    assert [c.item_id for c in offline] == expected
    # Each reason names the history item whose removal takes the most from that item's score.
    reasons = _reasons_by_hand(blend, history, expected)
    assert [item["reason"] for item in body["items"]] == reasons
    assert len(set(reasons)) >= 2
    assert all("blend" in item["sources"] for item in body["items"])


def test_the_ranker_ranks_the_blends_candidates_when_validation_chose_it(
    api_settings: Settings, registry_with_blend: dict[str, Any], make_event: EventFactory
) -> None:
    blend = registry_with_blend["blend"]
    history = ["i3", "i11", "i19", "i27", "i5", "i35", "i43"]
    body = _serve(api_settings, registry_with_blend["root"], registry_with_blend["recall"][RANKER], make_event, history)
    assert body["model_versions"]["ranker"] == registry_with_blend["din"], body
    served = [item["item_id"] for item in body["items"]]
    recall_candidates = api_settings.api.recall_candidates
    candidates = [c.item_id for c in blend.recall(history, recall_candidates - recall_candidates // 4)]
    # DIN's order, not the blend's, over the blend's candidates and the serving channels' (no "blend" source)
    assert all(item["item_id"] in candidates or "blend" not in item["sources"] for item in body["items"]), body
    assert served != candidates[:10]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)  # DIN probabilities
    # The shown blended items are explained after DIN placed them, by the blend's rule.
    blended = [item for item in body["items"] if "blend" in item["sources"]]
    assert blended and [item["reason"] for item in blended] == _reasons_by_hand(blend, history, [i["item_id"] for i in blended])


def test_a_new_item_reaches_a_known_user_after_the_blends_candidates(
    api_settings: Settings, registry_with_blend: dict[str, Any], make_event: EventFactory
) -> None:
    """The blend knows only its training items; the serving channels fill the last quarter of the
    candidates, so an item put into the catalog after training (here: the newest of the user's
    main category) is still offered, after every blended item in the blend's order."""
    blend = registry_with_blend["blend"]
    history = ["i3", "i11", "i19", "i27", "i5", "i35", "i43"]
    settings = api_settings.model_copy(update={"api": api_settings.api.model_copy(update={"recall_candidates": 20})})
    body = _serve(settings, registry_with_blend["root"], registry_with_blend["recall"][BLEND], make_event, history,
                  k=20, new_items={"fresh": "c3"})
    served = [item["item_id"] for item in body["items"]]
    expected, _ = _by_hand(blend, history, 15)
    assert served[:15] == expected and body["model_versions"]["ranker"] == BLEND_ORDER, body
    assert "fresh" not in blend.ids and "fresh" in served[15:], body
    assert "category" in body["items"][served.index("fresh")]["sources"]
    assert all("blend" not in item["sources"] for item in body["items"][15:])


def test_the_served_blend_order_is_the_reason_selection_evaluated_offline(
    api_settings: Settings, registry_with_blend: dict[str, Any], make_event: EventFactory
) -> None:
    """The blend's top SELECTED_DEPTH, computed and explained by hand, re-ordered by hand (each
    pick the highest score − penalty × shown items of the same reason): the API serves that order,
    with those reasons and the picked values as scores, and it is the order `recsys evaluate`
    ranks with (`SelectedBlendScores`)."""
    selected = registry_with_blend["selected"]
    history = ["i3", "i11", "i19", "i27", "i5", "i35", "i43"]
    body = _serve(api_settings, registry_with_blend["root"], registry_with_blend["recall"][SELECTED], make_event, history)
    top, scores = _by_hand(selected, history, SELECTED_DEPTH)
    raws = [lambda h, c=channel: _raw_by_hand(selected, c, h) for channel, w in zip(selected.channels, selected.weights) if w]
    reasons = leave_one_out_reasons(raws, [float(w) for w in selected.weights if w], history,
                                    [selected.ids.tolist().index(i) for i in top], selected.normalisation)  # fmt: skip
    chosen: list[int] = []
    picked: list[float] = []
    while len(chosen) < 10:
        values = {i: scores[i] - SELECTED_PENALTY * sum(reasons[c] == reasons[i] for c in chosen)
                  for i in range(len(top)) if i not in chosen}  # fmt: skip
        best = max(values, key=lambda i: (values[i], -i))
        chosen.append(best)
        picked.append(values[best])
    assert [item["item_id"] for item in body["items"]] == [top[i] for i in chosen], body
    assert np.allclose([item["score"] for item in body["items"]], picked, atol=1e-4)
    assert body["model_versions"]["ranker"] == BLEND_ORDER
    assert [item["reason"] for item in body["items"]] == [f"because you watched Film {reasons[i][1:]}" for i in chosen]  # type: ignore[index]
    assert chosen != list(range(10))  # the selection moved items: not the blend's own top 10
    scorer = SelectedBlendScores(selected, Settings().api.reason_recent or None)
    split = LeaveLastOut({"fan": history}, {"fan": top[chosen[0]]})
    assert top_lists(scorer, split, tuple(selected.ids.tolist()), 10)[0] == [top[i] for i in chosen]
