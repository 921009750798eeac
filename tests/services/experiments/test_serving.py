"""Serving an experiment: interleaved lists carry a team per slot, and every impression carries
the experiment, the arm and the team the response showed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from feature_store.settings import Settings
from services.experiments.assignment import INTERLEAVED
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
    _flush(admin_client)
    logged = {(e.context.request_id, e.context.position): e.context for e in _impressions(admin_settings)}
    for answer in answers:
        for item in answer["items"]:
            context = logged[(answer["request_id"], item["position"])]
            assert (context.experiment, context.arm, context.team) == ("il", f"il:{INTERLEAVED}", item["team"])
            assert context.propensity == item["propensity"]


def test_a_stopped_experiment_serves_the_default(admin_client: TestClient, make_event: EventFactory) -> None:
    _seed(admin_client, make_event)
    body = {"id": "gone", "kind": "ab", "arms": [{"name": "a"}, {"name": "b"}]}
    admin_client.post("/v1/experiments", json=body, headers=ADMIN)
    assert admin_client.get("/v1/users/u1/recommendations").json()["experiment"] == "gone"
    admin_client.post("/v1/experiments/gone/stop", headers=ADMIN)
    answer = admin_client.get("/v1/users/u1/recommendations").json()
    assert answer["experiment"] is None and all(item["team"] is None for item in answer["items"])
