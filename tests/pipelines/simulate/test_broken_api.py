"""The simulator against a broken API. A list with one item repeated is an error of the API, not
served traffic, since the click model and the oracle's bound (regret >= 0) assume distinct items;
an answer of another shape than the API's is one error of its request, and the run goes on; what
must abort the run stops every worker at once; the CLI reports all of it without a traceback.
The peer here is a deliberately broken HTTP server, not our API."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population
from pipelines.simulate.runner import RunParams, run_simulation
from pipelines.simulate.tenant import TenantLoadError
from services.cli import app as cli
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


def _good(n: int, k: int) -> dict[str, Any]:
    return {"request_id": f"r{n}", "items": [{"item_id": f"{POPULATION.prefix}i{j}", "position": j} for j in range(k)]}


def _counts(body: list[dict[str, Any]]) -> dict[str, Any]:
    return {"accepted": len(body), "duplicates": 0, "rejected": []}


def _peer(
    recommend: Callable[[int, int], Any] = _good, answer_events: Callable[[list[dict[str, Any]]], Any] = _counts
) -> tuple[FastAPI, Iterator[int]]:
    """A peer answering GET number `n` (0-based) with `recommend(n, k)` and POST /v1/events with
    `answer_events(body)`; the returned counter tells how many GETs it answered."""
    app, gets = FastAPI(), itertools.count()

    @app.get("/v1/users/{user_id}/recommendations")
    def recommendations(user_id: str, k: int = 10) -> JSONResponse:
        return JSONResponse(recommend(next(gets), k))

    @app.post("/v1/events")
    def events(body: list[dict[str, Any]]) -> JSONResponse:
        return JSONResponse(answer_events(body), status_code=202)

    return app, gets


MALFORMED = {
    "items null": {"request_id": "r", "items": None},
    "items as bare strings": {"request_id": "r", "items": [f"{POPULATION.prefix}i0", f"{POPULATION.prefix}i1"]},
    "a JSON list": [{"item_id": f"{POPULATION.prefix}i0", "position": 0}],
    "a null position": {"request_id": "r", "items": [{"item_id": f"{POPULATION.prefix}i0", "position": None}]},
    "an item id that is no string": {"request_id": "r", "items": [{"item_id": 3, "position": 0}]},
    "no request id": {"items": [{"item_id": f"{POPULATION.prefix}i0", "position": 0}]},
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_list_is_one_error_and_the_run_goes_on(body: Any) -> None:
    truth = GroundTruth(make_population(POPULATION), PositionBasedModel(0.7))
    app, _ = _peer(lambda n, k: body if n % 4 == 3 else _good(n, k))
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        result = run_simulation(client, truth, RunParams(requests=20, seconds=60, k=5, concurrency=2))
    assert (result.summary.requests, result.summary.errors) == (15, 5), result.summary.error_samples
    assert all("unexpected" in sample for sample in result.summary.error_samples), result.summary.error_samples
    assert all(len(record.items) == 5 for record in result.served)


def test_a_post_answer_without_its_counts_is_an_error_of_its_request() -> None:
    truth = GroundTruth(make_population(POPULATION), PositionBasedModel(0.7))
    app, _ = _peer(answer_events=lambda body: {"ok": True})
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        summary = run_simulation(client, truth, RunParams(requests=20, seconds=60, k=5, concurrency=2)).summary
    # Steps with clicks posted them and got no counts back; steps without clicks posted nothing.
    assert summary.errors > 0 and summary.requests + summary.errors == 20 and summary.clicks == 0
    assert summary.events.posted == summary.events.accepted == 0
    assert all("POST /v1/events answered an unexpected body" in sample for sample in summary.error_samples)


def _stop_at_the_third_progress(phase: str, done: int, total: int) -> None:
    if done == 3:
        raise RuntimeError("stopped by the progress callback")


def test_a_run_that_must_abort_stops_every_worker() -> None:
    """A refused arrival and an exception in a worker (here its progress callback) end the run at
    once, not when the other workers reach the request limit."""
    truth = GroundTruth(make_population(replace(POPULATION, new_items_at=6, new_items=3)), PositionBasedModel(0.7))
    app, gets = _peer()

    @app.put("/v1/items/{item_id}")
    def refuse(item_id: str) -> JSONResponse:
        return JSONResponse({"detail": "catalog is read-only"}, status_code=503)

    params = RunParams(requests=400, seconds=120, k=5, concurrency=4)
    with live_server(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        with pytest.raises(TenantLoadError, match="PUT item .* answered 503"):
            run_simulation(client, truth, params)
        refused = next(gets)
        with pytest.raises(RuntimeError, match="progress callback"):
            run_simulation(client, GroundTruth(make_population(POPULATION), truth.model), params,
                           on_progress=_stop_at_the_third_progress)  # fmt: skip
        interrupted = next(gets) - refused - 1
    # Steps 0-5; the 3rd step plus what the other workers had in flight or were about to take: a few,
    # where the other workers used to run on to all 400.
    assert refused == 6 and interrupted <= 3 + 2 * params.concurrency, (refused, interrupted)


def _tenant_peer(answer_events: Callable[[list[dict[str, Any]]], Any], broken_get_every: int = 0) -> FastAPI:
    """A peer that takes the tenant (remembering the items put) and recommends the first k of them;
    with `broken_get_every`, every such GET answers `items: null`."""
    catalog: list[str] = []

    def recommend(n: int, k: int) -> Any:
        if broken_get_every and n % broken_get_every == broken_get_every - 1:
            return {"request_id": f"r{n}", "items": None}
        return {"request_id": f"r{n}", "items": [{"item_id": item, "position": j} for j, item in enumerate(catalog[:k])]}

    app, _ = _peer(recommend, answer_events)

    @app.put("/v1/items/{item_id}")
    def put_item(item_id: str) -> dict[str, str]:
        catalog.append(item_id)
        return {"item_id": item_id}

    @app.put("/v1/users/{user_id}")
    def put_user(user_id: str) -> dict[str, str]:
        return {"user_id": user_id}

    return app


def _cli(url: str, tmp_path: Path, *extra: str) -> Result:
    args = ["simulate", "--api-url", url, "--users", "6", "--items", "20", "--categories", "4", "--requests", "12",
            "--seed", "5", "--k", "4", "--state-dir", str(tmp_path / "state"), *extra]  # fmt: skip
    return CliRunner().invoke(cli, args)


def test_the_cli_reports_a_broken_peer_in_one_line_or_in_its_summary(tmp_path: Path) -> None:
    with live_server(_tenant_peer(lambda body: {"ok": True})) as url:
        loading = _cli(url, tmp_path)
    assert loading.exit_code == 2, (loading.output, loading.exception)
    assert "error: POST /v1/events answered an unexpected body" in loading.output and "Traceback" not in loading.output

    with live_server(_tenant_peer(_counts, broken_get_every=4)) as url:
        running = _cli(url, tmp_path, "--out", str(tmp_path / "out.json"))
    assert running.exit_code == 0, (running.output, running.exception)
    summary = json.loads((tmp_path / "out.json").read_text())["summary"]
    assert (summary["requests"], summary["errors"]) == (9, 3)
    assert "GET recommendations answered an unexpected body" in running.output  # the error samples

    (tmp_path / "a-directory").mkdir()
    with live_server(_tenant_peer(_counts)) as url:
        unwritable = _cli(url, tmp_path, "--out", str(tmp_path / "a-directory"))
    assert unwritable.exit_code == 2 and "error:" in unwritable.output and "Traceback" not in unwritable.output
