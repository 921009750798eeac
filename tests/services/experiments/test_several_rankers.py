"""Several real DIN rankers served at once: an interleaved list follows team-draft (or balanced
interleaving, whose impressions log each ranker's rank of the shown item) over each version's own
ranking, probabilistic interleaving logs each ranker's softmax propensity of every slot, and A/B arms are served by their pinned versions while experiments start
and stop under concurrent requests without a failed one."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from models.registry import ModelRegistry
from services.api.app import create_app
from services.experiments.credit import Logged, marginalised_rows
from services.experiments.interleaving import balanced
from services.experiments.model import Experiment
from tests.models.ranking.conftest import ITEMS, category_of
from tests.services.conftest import EventFactory, live_server, with_api
from tests.services.experiments.conftest import ADMIN
from tests.services.experiments.test_assignment import reference_arm
from tests.services.test_impressions import _flush, _impressions
from tests.services.test_models import published  # noqa: F401  (the module's two trained DIN versions)

pytestmark = pytest.mark.slow
QUIET = {"log_impressions": "false"}  # the rankings must not move between the calls compared


def _settings(api_settings: Settings, root: Path) -> Settings:
    return with_api(api_settings.model_copy(update={"registry_dir": root}), model_poll_interval_s=0.2,
                    api_keys=["admin-key"])


def _seed(client: TestClient | httpx.Client, make_event: EventFactory) -> None:
    for item in range(ITEMS):
        client.put(f"/v1/items/i{item}", json={"title": f"Film {item}", "categories": [category_of(item)]}, headers=ADMIN)
    crowd = [make_event(f"crowd{n}", f"i{item}") for item in range(0, ITEMS, 3) for n in range(1 + item % 4)]
    fan = [make_event("fan", f"i{n * 8 + 3}") for n in range(4)]
    assert client.post("/v1/events", json=crowd + fan, headers=ADMIN).json()["accepted"] == len(crowd) + len(fan)


def _ranking(client: TestClient, k: int) -> list[str]:
    answer = client.get("/v1/users/fan/recommendations", params={"k": k, **QUIET}).json()
    assert answer["experiment"] is None
    return [item["item_id"] for item in answer["items"]]


def test_interleaving_two_versions_follows_team_draft_over_each_ranking(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    registry = ModelRegistry(root)
    registry.set_current("ranker", versions[0])
    with TestClient(create_app(_settings(api_settings, root))) as client:
        _seed(client, make_event)
        rankings = {versions[0]: _ranking(client, 30)}
        registry.set_current("ranker", versions[1])
        client.post("/v1/admin/models/reload", headers=ADMIN)
        rankings[versions[1]] = _ranking(client, 30)
        assert rankings[versions[0]] != rankings[versions[1]]  # two different rankers
        registry.set_current("ranker", versions[0])
        client.post("/v1/admin/models/reload", headers=ADMIN)
        body = {"id": "duel", "kind": "interleaving",
                "arms": [{"name": "old", "ranker": versions[0]}, {"name": "new", "ranker": versions[1]}]}
        assert client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
        bundle = client.app.state.service.models.bundle  # type: ignore[attr-defined]
        assert bundle.ranker_for(versions[1]) is not None and bundle.versions["ranker"] == versions[0]
        for _ in range(5):
            answer = client.get("/v1/users/fan/recommendations", params={"k": 8, **QUIET}).json()
            assert answer["model_versions"]["ranker"] == f"{versions[0]}+{versions[1]}"
            shown: list[str] = []
            for item in answer["items"]:
                own = rankings[versions[0] if item["team"] == "old" else versions[1]]
                assert item["item_id"] == next(i for i in own if i not in shown), (item, shown)
                shown.append(item["item_id"])
            assert Counter(item["team"] for item in answer["items"]) == {"old": 4, "new": 4}


def test_balanced_interleaving_of_two_versions_logs_each_rankers_rank(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    registry = ModelRegistry(root)
    registry.set_current("ranker", versions[0])
    depth = 30
    with TestClient(create_app(_settings(api_settings, root))) as client:
        _seed(client, make_event)
        old = _ranking(client, depth)
        registry.set_current("ranker", versions[1])
        client.post("/v1/admin/models/reload", headers=ADMIN)
        new = _ranking(client, depth)
        registry.set_current("ranker", versions[0])
        client.post("/v1/admin/models/reload", headers=ADMIN)
        assert old[:8] != new[:8]
        body = {"id": "bal", "kind": "interleaving", "method": "balanced",
                "arms": [{"name": "old", "ranker": versions[0]}, {"name": "new", "ranker": versions[1]}]}
        assert client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
        # Joachims' merge of the two rankings, whichever ranker the coin lets lead.
        merges = {balanced(old, new, 8, np.random.default_rng(seed)).items for seed in range(20)}
        assert len(merges) == 2
        for _ in range(4):
            answer = client.get("/v1/users/fan/recommendations", params={"k": 8, **QUIET}).json()
            assert answer["explore"] == "interleaving:balanced"
            assert tuple(item["item_id"] for item in answer["items"]) in merges
        answer = client.get("/v1/users/fan/recommendations", params={"k": 8}).json()  # this one is logged
        _flush(client)
        logged = {e.context.position: e for e in _impressions(api_settings) if e.context.request_id == answer["request_id"]}
    assert [logged[n].item_id for n in range(8)] == [item["item_id"] for item in answer["items"]]
    for n in range(8):
        item, ranks = logged[n].item_id, logged[n].context.ranks
        assert ranks is not None and ranks.keys() == {"old", "new"}  # both rankers ranked every candidate
        for team, ranking in (("old", old), ("new", new)):
            assert ranks[team] == ranking.index(item) if item in ranking else ranks[team] >= depth, (n, team)


def test_probabilistic_interleaving_of_two_versions_logs_each_rankers_softmax(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    registry = ModelRegistry(root)
    registry.set_current("ranker", versions[0])
    tau, k = 2.0, 8
    # 60 candidates: a list of k = 100 is each ranker's whole ranking of them.
    with TestClient(create_app(with_api(_settings(api_settings, root), recall_candidates=60))) as client:
        _seed(client, make_event)
        old = _ranking(client, 100)
        registry.set_current("ranker", versions[1])
        client.post("/v1/admin/models/reload", headers=ADMIN)
        new = _ranking(client, 100)
        registry.set_current("ranker", versions[0])
        client.post("/v1/admin/models/reload", headers=ADMIN)
        assert len(old) < 100 and set(old) == set(new) and old[:k] != new[:k]
        body = {"id": "prob", "kind": "interleaving", "method": "probabilistic", "tau": tau,
                "arms": [{"name": "old", "ranker": versions[0]}, {"name": "new", "ranker": versions[1]}]}
        assert client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
        answer = client.get("/v1/users/fan/recommendations", params={"k": k}).json()  # logged
        _flush(client)
        logged = {e.context.position: e for e in _impressions(api_settings) if e.context.request_id == answer["request_id"]}
    assert answer["explore"] == "interleaving:probabilistic"
    rank = {team: {item: r for r, item in enumerate(ranking, start=1)} for team, ranking in (("old", old), ("new", new))}
    shown: list[str] = []
    posteriors = []
    for n in range(k):
        item, context = logged[n].item_id, logged[n].context
        left = [i for i in old if i not in shown]
        # Each ranker's softmax over the items not shown yet: P_j(d) = r_j(d)^-tau / sum of r_j^-tau.
        expected = {team: r[item] ** -tau / sum(r[i] ** -tau for i in left) for team, r in rank.items()}
        assert context.ranker_propensities == pytest.approx(expected, rel=1e-9), n
        assert context.propensity == pytest.approx((expected["old"] + expected["new"]) / 2, rel=1e-9)
        # The report's marginalised credit of a click here: q_s = P_old / (P_old + P_new).
        clicked = Logged(["u"], [context.team], [1], [None], [n], [None], [context.ranker_propensities])
        q = expected["old"] / (expected["old"] + expected["new"])
        assert marginalised_rows(clicked, ["old", "new"]) == pytest.approx(np.array([[q, 1 - q]]), rel=1e-9)
        posteriors.append(q)
        shown.append(item)
    assert max(abs(q - 0.5) for q in posteriors) > 0.05  # two different rankers: the posteriors say who placed what


def test_ab_arms_serve_their_versions_and_start_stop_fail_no_request(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    registry = ModelRegistry(root)
    registry.set_current("ranker", versions[0])
    registry.pin("ranker", "candidate", versions[1])
    body = {"id": "swap", "kind": "ab", "arms": [{"name": "control"}, {"name": "treatment", "ranker": "candidate"}]}
    planned = Experiment.model_validate({**body, "offset": 0.0, "salt": "swap", "created_at": "2026-01-01T00:00:00Z"})
    candidates = [f"user{n}" for n in range(100)]
    users = [u for u in candidates if reference_arm(planned, u) == "control"][:2]
    users += [u for u in candidates if reference_arm(planned, u) == "treatment"][:2]
    with live_server(create_app(_settings(api_settings, root))) as base, httpx.Client(base_url=base, timeout=30) as setup:
        _seed(setup, make_event)
        served: Counter[tuple[str | None, str]] = Counter()
        failures: list[str] = []
        stop = threading.Event()

        def hammer(user: str) -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    response = client.get(f"/v1/users/{user}/recommendations", params={"k": 5, **QUIET})
                    if response.status_code != 200:
                        failures.append(f"{response.status_code}: {response.text[:200]}")
                        continue
                    answer = response.json()
                    served[(answer["arm"], answer["model_versions"]["ranker"])] += 1
                    expected[user].add((answer["arm"], answer["model_versions"]["ranker"]))

        expected: dict[str, set[tuple[str | None, str]]] = {user: set() for user in users}
        threads = [threading.Thread(target=hammer, args=(user,)) for user in users]
        for thread in threads:
            thread.start()
        created = Experiment.model_validate(setup.post("/v1/experiments", json=body, headers=ADMIN).json())
        arms = {user: reference_arm(created, user) for user in users}
        deadline = time.monotonic() + 120  # waited for, not slept on
        # Each arm until it has answered 20 (the candidate ranker loads after the experiment starts:
        # on a busy machine control alone could reach any total first).
        while min(served[(f"swap:{a}", v)] for a, v in (("control", versions[0]), ("treatment", versions[1]))) < 20 \
                and not failures and time.monotonic() < deadline:
            time.sleep(0.1)
        setup.post("/v1/experiments/swap/stop", headers=ADMIN)
        before = served[(None, versions[0])]
        while served[(None, versions[0])] < before + 20 and not failures and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    version_of = {"control": versions[0], "treatment": versions[1]}
    for user, seen in expected.items():
        assert seen <= {(None, versions[0]), (f"swap:{arms[user]}", version_of[arms[user]])}, (user, seen)
    assert served[("swap:treatment", versions[1])] > 0 and served[("swap:control", versions[0])] > 0
