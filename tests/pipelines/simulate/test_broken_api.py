"""The simulator against an API that answers a list with one item repeated: such a list is an
error of the API, not served traffic, since the click model and the oracle's bound (regret >= 0)
assume distinct items. The peer here is a deliberately broken HTTP server, not our API."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population
from pipelines.simulate.runner import RunParams, run_simulation
from tests.services.conftest import live_server

POPULATION = PopulationParams(users=10, items=30, categories=3, seed=5)


def _broken_api(repeat: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/users/{user_id}/recommendations")
    def recommend(user_id: str, k: int = 10) -> dict:
        items = [f"{POPULATION.prefix}i0"] * k if repeat else [f"{POPULATION.prefix}i{n}" for n in range(k)]
        return {"request_id": f"r-{user_id}", "items": [{"item_id": item, "position": p} for p, item in enumerate(items)]}

    @app.post("/v1/events", status_code=202)
    def events(body: list[dict]) -> dict:
        return {"accepted": len(body), "duplicates": 0, "rejected": []}

    return app


def test_a_list_with_a_repeated_item_is_an_error_not_a_served_request() -> None:
    truth = GroundTruth(make_population(POPULATION), PositionBasedModel(0.7))
    params = RunParams(requests=20, seconds=60, k=5, concurrency=1)
    for repeat in (True, False):
        with live_server(_broken_api(repeat)) as url, httpx.Client(base_url=url, timeout=10) as client:
            result = run_simulation(client, truth, params)
        if repeat:
            assert (result.summary.requests, result.summary.errors, result.served) == (0, 20, [])
        else:
            assert (result.summary.requests, result.summary.errors) == (20, 0)
            assert all(r.expected_clicks <= r.oracle_clicks + 1e-12 for r in result.served)
