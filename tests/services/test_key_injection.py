"""Ids are data, not key syntax: a user id spelling another user's key cannot touch that user."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient

from feature_store.definitions import Entity

VICTIM = "victimX"
ATTACKERS = [f"{VICTIM}:recent_items", f"{VICTIM}:recent_categories", "{victimX}", "victimX%3Arecent_items"]


def click(event_id: str, user: str, item: str, seconds_ago: int) -> dict[str, Any]:
    ts = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return {"event_id": event_id, "user_id": user, "item_id": item, "type": "click", "ts": ts.isoformat()}


def test_a_user_id_spelling_another_users_key_cannot_touch_that_users_features(client: TestClient) -> None:
    first = client.post("/v1/events", json=[click("v1", VICTIM, "i1", 50), click("v2", VICTIM, "i2", 40)])
    assert first.json()["accepted"] == 2 and not first.json()["degraded"]
    # Attackers first, then the victim's own events in the same batch: all must apply, each to its own user.
    batch = [click(f"a{k}", attacker, f"evil{k}", 30) for k, attacker in enumerate(ATTACKERS)]
    batch += [click("v3", VICTIM, "i3", 20)]
    second = client.post("/v1/events", json=batch).json()
    assert (second["accepted"], second["degraded"]) == (len(ATTACKERS) + 1, False)

    features = client.app.state.service.store.features  # type: ignore[attr-defined]
    users = [VICTIM, *ATTACKERS]
    got = features.get_features(Entity.USER, users, ["recent_items", "event_count", "recent_categories"])
    assert got["recent_items"][0] == ["i3", "i2", "i1"]
    assert got["event_count"].tolist() == [3, 1, 1, 1, 1]
    assert [got["recent_items"][k] for k in range(1, len(users))] == [[f"evil{k}"] for k in range(len(ATTACKERS))]
    recommendations = client.get(f"/v1/users/{VICTIM}/recommendations").json()
    assert not recommendations["degraded"]
