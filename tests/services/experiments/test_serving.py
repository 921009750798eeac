"""Serving an experiment: interleaved lists carry a team per slot, and every impression carries
the experiment, the arm and the team the response showed."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from feature_store.settings import Settings
from services.experiments.assignment import INTERLEAVED
from services.explore.stats import StatsUnavailable
from tests.services.conftest import EventFactory
from tests.services.experiments.conftest import ADMIN
from tests.services.conftest import put_items
from tests.services.test_impressions import CATALOG, K, _flush, _impressions


def _seed(client: TestClient, make_event: EventFactory) -> None:
    """A catalog and a crowd's clicks, so that every user gets a full popular list."""
    put_items(client, CATALOG, ADMIN)
    events = [make_event(f"crowd{n}", item) for index, item in enumerate(CATALOG) for n in range(8 - index)]
    assert client.post("/v1/events", json=events, headers=ADMIN).json()["accepted"] == len(events)


def test_interleaved_lists_log_experiment_arm_and_team(
    admin_client: TestClient, admin_settings: Settings, make_event: EventFactory
) -> None:
    _seed(admin_client, make_event)
    body = {"id": "il", "kind": "interleaving", "arms": [{"name": "A"}, {"name": "B"}]}
    assert admin_client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
    answers = [admin_client.get(f"/v1/users/u{n}/recommendations", params={"k": K}).json() for n in range(6)]
    for answer in answers:
        assert (answer["experiment"], answer["arm"]) == ("il", f"il:{INTERLEAVED}")
        assert answer["explore"] == "interleaving:team_draft"
        teams = [item["team"] for item in answer["items"]]
        assert sorted(teams) == ["A", "A", "B", "B"]  # team-draft: two picks each in a list of four
    metrics = admin_client.get("/metrics").text
    for stage in ("features", "rank", "explore", "explain"):  # both rankers' passes are one rank stage per request
        assert f'recsys_stage_seconds_count{{stage="{stage}"}} 6.0' in metrics, stage
    _flush(admin_client)
    logged = {(e.context.request_id, e.context.position): e.context for e in _impressions(admin_settings)}
    for answer in answers:
        for item in answer["items"]:
            context = logged[(answer["request_id"], item["position"])]
            assert (context.experiment, context.arm, context.team) == ("il", f"il:{INTERLEAVED}", item["team"])
            assert context.propensity == item["propensity"]
            rank = list(CATALOG).index(item["item_id"])  # the planted popularity order, both arms' ranker
            assert context.ranks == {"A": rank, "B": rank} and context.ranker_propensities is None


def test_a_stopped_experiment_serves_the_default(admin_client: TestClient, make_event: EventFactory) -> None:
    _seed(admin_client, make_event)
    body = {"id": "gone", "kind": "ab", "arms": [{"name": "a"}, {"name": "b"}]}
    admin_client.post("/v1/experiments", json=body, headers=ADMIN)
    assert admin_client.get("/v1/users/u1/recommendations").json()["experiment"] == "gone"
    admin_client.post("/v1/experiments/gone/stop", headers=ADMIN)
    answer = admin_client.get("/v1/users/u1/recommendations").json()
    assert answer["experiment"] is None and all(item["team"] is None for item in answer["items"])


def test_balanced_serves_the_merge_and_logs_ranks(
    admin_client: TestClient, admin_settings: Settings, make_event: EventFactory
) -> None:
    _seed(admin_client, make_event)
    body = {"id": "bal", "kind": "interleaving", "method": "balanced", "arms": [{"name": "A"}, {"name": "B"}]}
    assert admin_client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
    answers = [admin_client.get(f"/v1/users/u{n}/recommendations", params={"k": K}).json() for n in range(4)]
    popular = list(CATALOG)[:K]
    for answer in answers:
        assert answer["explore"] == "interleaving:balanced"
        # One ranking twice: either coin gives that ranking, so every slot is certain.
        assert [item["item_id"] for item in answer["items"]] == popular
        assert all(item["propensity"] == 1.0 and item["team"] in ("A", "B") for item in answer["items"])
    _flush(admin_client)
    logged = {(e.context.request_id, e.context.position): e.context for e in _impressions(admin_settings)}
    for answer in answers:
        for item in answer["items"]:
            context = logged[(answer["request_id"], item["position"])]
            assert context.ranks == {"A": item["position"], "B": item["position"]}


def test_probabilistic_logs_each_rankers_propensity(
    admin_client: TestClient, admin_settings: Settings, make_event: EventFactory
) -> None:
    _seed(admin_client, make_event)
    body = {"id": "pi", "kind": "interleaving", "method": "probabilistic", "arms": [{"name": "A"}, {"name": "B"}]}
    assert admin_client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
    answers = [admin_client.get(f"/v1/users/u{n}/recommendations", params={"k": K}).json() for n in range(4)]
    _flush(admin_client)
    logged = {(e.context.request_id, e.context.position): e.context for e in _impressions(admin_settings)}
    ranking = list(CATALOG)
    for answer in answers:
        shown: list[str] = []
        for item in answer["items"]:
            context = logged[(answer["request_id"], item["position"])]
            # One ranker for both arms: each one's softmax over the items not shown yet (tau 3).
            left = [n for n, i in enumerate(ranking) if i not in shown]
            expected = (ranking.index(item["item_id"]) + 1) ** -3.0 / sum((n + 1) ** -3.0 for n in left)
            assert context.ranker_propensities == pytest.approx({"A": expected, "B": expected})
            assert context.propensity == pytest.approx(expected)
            shown.append(item["item_id"])


def test_balanced_needs_two_arms(admin_client: TestClient) -> None:
    body = {"id": "bal3", "kind": "interleaving", "method": "balanced",
            "arms": [{"name": "A"}, {"name": "B"}, {"name": "C"}]}
    response = admin_client.post("/v1/experiments", json=body, headers=ADMIN)
    assert response.status_code == 422 and "balanced interleaving compares two arms" in response.text


def test_bad_interleaving_context_is_rejected_with_a_message(admin_client: TestClient, make_event: EventFactory) -> None:
    good = make_event("u1", "i1", "impression", context={"team": "A", "ranks": {"A": 0, "B": 3},
                                                        "ranker_propensities": {"A": 0.5, "B": 0.25}})
    bad = [
        make_event("u1", "i2", "impression", context={"ranks": {"A": -1}}),
        make_event("u1", "i3", "impression", context={"ranker_propensities": {"A": 1.5}}),
        make_event("u1", "i4", "impression", context={"ranks": {f"t{n}": n for n in range(17)}}),
    ]
    answer = admin_client.post("/v1/events", json=[good, *bad], headers=ADMIN).json()
    assert answer["accepted"] == 1
    errors = {r["index"]: r["errors"][0] for r in answer["rejected"]}
    assert errors[1]["location"] == "context.ranks.A" and "greater than or equal to 0" in errors[1]["message"]
    assert errors[2]["location"] == "context.ranker_propensities.A" and "less than or equal to 1" in errors[2]["message"]
    assert errors[3]["location"] == "context.ranks" and "at most 16" in errors[3]["message"]


def test_the_longest_valid_experiment_and_arm_names_are_logged(
    admin_client: TestClient, admin_settings: Settings, make_event: EventFactory
) -> None:
    _seed(admin_client, make_event)
    experiment, arm = "e" * 64, "a" * 64  # the longest names a definition may have
    body = {"id": experiment, "kind": "ab", "arms": [{"name": arm}, {"name": "b" * 64}]}
    assert admin_client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
    answers = [admin_client.get(f"/v1/users/u{n}/recommendations", params={"k": K}).json() for n in range(8)]
    _flush(admin_client)
    logged = {(e.context.request_id, e.context.arm) for e in _impressions(admin_settings)}
    assert {answer["arm"] for answer in answers} == {f"{experiment}:{arm}", f"{experiment}:{'b' * 64}"}
    assert logged == {(answer["request_id"], answer["arm"]) for answer in answers}


def test_a_client_cannot_label_its_list_with_an_experiment_of_the_service(
    admin_client: TestClient, admin_settings: Settings, make_event: EventFactory
) -> None:
    _seed(admin_client, make_event)
    body = {"id": "owned", "kind": "ab", "arms": [{"name": "a"}, {"name": "b"}]}
    assert admin_client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
    assigned = admin_client.get("/v1/users/u1/recommendations", params={"k": K}).json()
    assert admin_client.post("/v1/experiments/owned/stop", headers=ADMIN).status_code == 200

    def recommend(user: str, experiment: str, arm: str) -> dict:
        context = {"experiment": experiment, "arm": arm, "page": "home"}
        return admin_client.post(f"/v1/users/{user}/recommendations", json={"k": K, "context": context}).json()

    replayed = recommend("u1", "owned", assigned["arm"])  # an earlier answer's label, sent back after the stop
    forged = recommend("u2", "other", "owned:b")  # the report counts arms by their `owned:` prefix
    learner = recommend("u3", "learner", "learner:online")
    external = recommend("u4", "app-test", "app-test:blue")  # the client's own experiment: kept
    for answer in (replayed, forged, learner):
        assert (answer["experiment"], answer["arm"]) == (None, None)
    assert (external["experiment"], external["arm"]) == ("app-test", "app-test:blue")
    _flush(admin_client)
    labels = {e.context.request_id: (e.context.experiment, e.context.arm, e.context.page) for e in _impressions(admin_settings)}
    assert labels[replayed["request_id"]] == labels[forged["request_id"]] == labels[learner["request_id"]] == (None, None, "home")
    assert labels[external["request_id"]] == ("app-test", "app-test:blue", "home")


def test_an_arm_cannot_set_the_service_wide_candidate_logging(admin_client: TestClient) -> None:
    body = {"id": "cands", "kind": "ab", "arms": [{"name": "a", "explore": {"policy": "epsilon_greedy",
                                                                           "log_candidates_share": 0.5}}, {"name": "b"}]}
    response = admin_client.post("/v1/experiments", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert "arm 'a': log_candidates_share is a setting of the whole service" in response.json()["error"]["message"]


def test_a_stopped_experiments_explore_stages_are_released(admin_client: TestClient, make_event: EventFactory) -> None:
    """Each arm's explore stage holds item caches and Redis clients: a worker closes the stages of an
    experiment once it has stopped, instead of keeping them until shutdown."""
    _seed(admin_client, make_event)
    explore = {"policy": "ucb1"}
    body = {"id": "ucb", "kind": "ab", "arms": [{"name": "a", "explore": explore}, {"name": "b", "explore": explore}]}
    assert admin_client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
    assert admin_client.get("/v1/users/u1/recommendations").json()["experiment"] == "ucb"
    serving = admin_client.app.state.service.experiment_serving  # type: ignore[attr-defined]
    (stage,) = serving._stages.values()
    assert stage.stats.attribution._client is not None  # the stage read the counts through its own client
    admin_client.post("/v1/experiments/ucb/stop", headers=ADMIN)
    assert admin_client.get("/v1/users/u1/recommendations").json()["experiment"] is None
    assert serving._stages == {}
    deadline = time.monotonic() + 30
    while stage.stats.attribution._client is not None:  # closed off the request's path
        assert time.monotonic() < deadline, "the released stage was never closed"
        time.sleep(0.01)
    with pytest.raises(StatsUnavailable):  # a request still holding it is served greedy, opening nothing
        stage.stats.counts(["i0"])
    assert stage.stats.attribution._client is None
