"""POST /v1/events under concurrency: the same batch from several clients is accepted exactly once."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from services.api.app import create_app
from tests.services.conftest import EventFactory, live_server

CLIENTS, ROUNDS, EVENTS_PER_ROUND = 4, 10, 50


def metric(text: str, outcome: str) -> float:
    found = re.search(rf'^recsys_events_total{{outcome="{outcome}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_batch_posted_by_several_clients_at_once_is_accepted_once(api_settings: Settings,
                                                                   make_event: EventFactory) -> None:
    batches = [[make_event(f"u{k % 7}", f"i{k % 11}") for k in range(EVENTS_PER_ROUND)] for _ in range(ROUNDS)]
    unique_ids = {event["event_id"] for batch in batches for event in batch}
    start = threading.Barrier(CLIENTS)

    def post_all(base_url: str) -> list[dict]:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            bodies = []
            for batch in batches:
                start.wait()  # every client posts the same batch at the same moment
                response = http.post("/v1/events", json=batch)
                assert response.status_code == 202, response.text
                bodies.append(response.json())
            return bodies

    with live_server(create_app(api_settings)) as base_url:
        with ThreadPoolExecutor(CLIENTS) as pool:
            bodies = [body for result in pool.map(post_all, [base_url] * CLIENTS) for body in result]
        metrics = httpx.get(f"{base_url}/metrics", timeout=60).text

    assert not any(body["degraded"] for body in bodies)
    assert sum(body["accepted"] for body in bodies) == len(unique_ids) == ROUNDS * EVENTS_PER_ROUND
    assert sum(body["duplicates"] for body in bodies) == (CLIENTS - 1) * len(unique_ids)
    assert (metric(metrics, "accepted"), metric(metrics, "duplicate")) == (len(unique_ids), (CLIENTS - 1) * len(unique_ids))
    assert {event.event_id for event in EventLogReader(api_settings.event_log_dir).read()} == unique_ids
