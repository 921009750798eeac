"""Loading the simulated population into a running service, as a real tenant would: over HTTP.

Items go in with `PUT /v1/items/{id}` (title, one category, `created_at`), users with
`PUT /v1/users/{id}` (their pre-drift category as `segment`), and a warm-up history with
`POST /v1/events` in batches: for each user, `sessions_per_user` slates shown by an
unpersonalised policy (items drawn without replacement with probability ∝ exp(b_i), i.e. by
popularity) and clicked by the click model at step 0. The history is posted as the impressions
(with request id and position) and the clicks, dated within the last hour so the live features
take them (they drop events older than the replay window). Event ids derive from the population's
ids, so loading the same population twice adds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import numpy as np

from pipelines.datasets import OnProgress, no_progress
from pipelines.simulate.click_model import GroundTruth
from pipelines.simulate.population import Population

WARMUP_SPAN = timedelta(hours=1)


class TenantLoadError(RuntimeError):
    """The service refused part of the tenant (the message says which call and why)."""


@dataclass
class EventTally:
    """What `POST /v1/events` answered, summed over batches."""

    posted: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0

    @classmethod
    def of_answer(cls, posted: int, body: object) -> EventTally:
        """The tally of one answer, `{"accepted": int, "duplicates": int, "rejected": [...]}`, to
        `posted` events; `ValueError` when the body has another shape (a broken peer)."""
        counts = body if isinstance(body, dict) else {}
        accepted, duplicates, rejected = counts.get("accepted"), counts.get("duplicates"), counts.get("rejected")
        # type(...) is int: a bool is an int too, and no count.
        if type(accepted) is not int or type(duplicates) is not int or not isinstance(rejected, list):
            raise ValueError(f"POST /v1/events answered an unexpected body: {str(body)[:200]}")
        return cls(posted, accepted, duplicates, len(rejected))

    def add(self, other: EventTally) -> None:
        self.posted += other.posted
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.rejected += other.rejected


@dataclass
class TenantReport:
    items: int
    users: int
    history: EventTally
    clicks: int


def load_tenant(
    client: httpx.Client,
    truth: GroundTruth,
    *,
    sessions_per_user: int = 2,
    slate: int = 10,
    batch_size: int = 500,
    now: datetime | None = None,
    on_progress: OnProgress = no_progress,
) -> TenantReport:
    """Put the step-0 catalog and the users into the service, then post the warm-up history."""
    population = truth.population
    now = now or datetime.now(timezone.utc)
    initial = np.flatnonzero(population.arrived(0)).tolist()
    put_items(client, population, initial, created_at=now - timedelta(days=1), on_progress=on_progress)
    for done, user in enumerate(range(population.params.users), start=1):
        body = {"attributes": {"segment": population.category_id(int(population.user_category[user]))}}
        _check(client.put(f"/v1/users/{population.user_id(user)}", json=body), "PUT user")
        on_progress("loading users", done, population.params.users)
    events = warmup_events(truth, sessions_per_user, slate, now)
    tally = post_events(client, events, batch_size, on_progress=on_progress, phase="posting warm-up history")
    clicks = sum(event["type"] == "click" for event in events)
    return TenantReport(len(initial), population.params.users, tally, clicks)


def put_items(
    client: httpx.Client, population: Population, items: Sequence[int], *, created_at: datetime,
    on_progress: OnProgress = no_progress,
) -> None:
    """`PUT /v1/items/{id}` for each item number, with its title and category."""
    for done, item in enumerate(items, start=1):
        body = {
            "title": f"Simulated item {item}",
            "categories": [population.category_id(int(population.item_category[item]))],
            "created_at": created_at.isoformat(),
        }
        _check(client.put(f"/v1/items/{population.item_id(item)}", json=body), "PUT item")
        on_progress("loading items", done, len(items))


def warmup_events(truth: GroundTruth, sessions_per_user: int, slate: int, now: datetime) -> list[dict[str, Any]]:
    """The warm-up history: impressions and clicks of popularity slates, oldest first.

    Deterministic in the seed: only the timestamps depend on `now`."""
    population = truth.population
    rng = np.random.default_rng([population.params.seed, 4])
    initial = np.flatnonzero(population.arrived(0))
    exposure = np.exp(population.item_bias[initial])
    exposure /= exposure.sum()
    size = min(slate, len(initial))
    sessions = population.params.users * sessions_per_user
    gap = WARMUP_SPAN / max(1, sessions)
    events: list[dict[str, Any]] = []
    for session in range(sessions):
        user_id = population.user_id(session % population.params.users)
        shown = [population.item_id(int(j)) for j in rng.choice(initial, size=size, replace=False, p=exposure)]
        clicked = truth.draw_clicks(user_id, shown, 0, rng)
        ts = now - WARMUP_SPAN + gap * session
        request = f"{population.params.prefix}warm-{session}"
        for slot, item_id in enumerate(shown):
            events.append(event_payload(f"{request}-imp-{slot}", user_id, item_id, "impression", ts, request, slot))
        for slot in np.flatnonzero(clicked).tolist():
            click_ts = ts + timedelta(seconds=1 + slot)
            events.append(event_payload(f"{request}-click-{slot}", user_id, shown[slot], "click", click_ts, request, slot))
    return events


def post_events(
    client: httpx.Client, events: Sequence[dict[str, Any]], batch_size: int, *,
    on_progress: OnProgress = no_progress, phase: str = "posting events",
) -> EventTally:
    """`POST /v1/events` in batches of `batch_size`; the service's answers summed."""
    tally = EventTally()
    for start in range(0, len(events), batch_size):
        batch = list(events[start : start + batch_size])
        response = _check(client.post("/v1/events", json=batch), "POST /v1/events")
        tally.add(EventTally.of_answer(len(batch), response.json()))
        on_progress(phase, start + len(batch), len(events))
    return tally


def event_payload(
    event_id: str, user_id: str, item_id: str, kind: str, ts: datetime, request_id: str, position: int
) -> dict[str, Any]:
    """An event as `POST /v1/events` takes it, attributed to its request and slot."""
    return {
        "event_id": event_id, "user_id": user_id, "item_id": item_id, "type": kind, "ts": ts.isoformat(),
        "context": {"request_id": request_id, "position": position},
    }  # fmt: skip


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code >= 300:
        raise TenantLoadError(f"{what} {response.request.url.path} answered {response.status_code}: {response.text[:300]}")
    return response

