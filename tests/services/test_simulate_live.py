"""The simulator against the real API (uvicorn on a real Redis): what it reports is what the service
received, and the truth it reports is the truth it saved."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from pipelines.simulate.population import PopulationParams
from pipelines.simulate.runner import RunParams
from pipelines.simulate.session import SimulationSpec, simulate
from services.api.app import create_app
from services.cli import app as cli
from tests.services.conftest import live_server

POPULATION = PopulationParams(users=30, items=60, categories=6, seed=4, drift_at=100, new_items_at=50, new_items=8)


def _expected_by_hand(truth_file: Path, user_id: str, items: list[str], step: int) -> tuple[float, float]:
    """(expected clicks of `items`, oracle's for the same length) straight from the saved arrays."""
    with np.load(truth_file) as data:
        eta = json.loads(str(data["click_model"]))["eta"]
        users = data["drifted_vectors"] if step >= POPULATION.drift_at else data["user_vectors"]
        u = users[int(user_id.removeprefix("sim4-u"))]
        logits = data["item_vectors"] @ u + data["item_bias"]
        attractive = np.where(data["item_arrival"] <= step, 1 / (1 + np.exp(-logits)), 0.0)
    examination = (1.0 + np.arange(len(items))) ** -eta
    served = np.array([attractive[int(item.removeprefix("sim4-i"))] for item in items])
    return float(examination @ served), float(examination @ np.sort(attractive)[::-1][: len(items)])


def test_a_simulation_against_the_live_api(api_settings: Settings) -> None:
    spec = SimulationSpec(POPULATION, RunParams(requests=200, seconds=600, k=5, concurrency=2), history_sessions=2)
    with live_server(create_app(api_settings)) as url:
        before = httpx.get(f"{url}/v1/items/sim4-i60")
        report = simulate(url, spec, api_settings.state_dir)
        after = httpx.get(f"{url}/v1/items/sim4-i60")
        loaded = httpx.get(f"{url}/v1/items/sim4-i0").json()
    assert before.status_code == 404 and after.status_code == 200  # the new items arrived mid-run
    assert loaded["categories"][0].startswith("sim4-c")
    summary, served = report.result.summary, report.result.served
    assert (summary.requests, summary.errors) == (200, 0) and [r.step for r in served] == list(range(200))
    assert summary.impressions == sum(len(r.items) for r in served) and all(len(r.items) == 5 for r in served)

    # Every click the simulator counts reached the event log once, attributed to its request and slot.
    logged = list(EventLogReader(api_settings.event_log_dir).read())
    clicks = {(e.context.request_id, e.context.position, e.item_id) for e in logged if e.type.value == "click"
              and not e.event_id.startswith("sim4-warm")}  # fmt: skip
    served_clicks = {(r.request_id, position, r.items[position]) for r in served for position in r.clicked}
    assert summary.clicks == len(served_clicks) == summary.events.accepted == len(clicks) > 0
    assert clicks == served_clicks and summary.events.duplicates == 0
    assert report.tenant is not None and report.tenant.history.accepted == sum(e.event_id.startswith("sim4-warm") for e in logged)

    # Expected and oracle clicks recomputed from the saved truth file; the oracle is never beaten.
    by_hand = [_expected_by_hand(report.truth_path, r.user_id, r.items, r.step) for r in served]
    np.testing.assert_allclose([r.expected_clicks for r in served], [e for e, _ in by_hand], rtol=1e-9)
    np.testing.assert_allclose([r.oracle_clicks for r in served], [o for _, o in by_hand], rtol=1e-9)
    assert all(r.expected_clicks <= r.oracle_clicks + 1e-12 for r in served)
    assert summary.expected_ctr <= summary.oracle_ctr and summary.regret >= 0
    assert summary.expected_clicks == pytest.approx(sum(r.expected_clicks for r in served), rel=1e-12)  # summed in completion order

    # The drift moved the truth at step 100: later lists scored with the old vectors would differ.
    undrifted = [_expected_by_hand(report.truth_path, r.user_id, r.items, 0)[0] for r in served if r.step >= 100]
    drifted = [r.expected_clicks for r in served if r.step >= 100]
    assert not np.allclose(undrifted, drifted)


def test_the_cli_runs_a_simulation_and_writes_its_summary(api_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    with live_server(create_app(api_settings)) as url:
        args = ["simulate", "--api-url", url, "--users", "8", "--items", "20", "--categories", "4", "--requests", "30",
                "--seed", "9", "--k", "4", "--out", str(out), "--state-dir", str(tmp_path / "sim")]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        document = json.loads(out.read_text())
        summary = document["summary"]
        assert summary["requests"] == 30 and 0 < summary["impressions"] <= 120 and summary["errors"] == 0
        assert summary["events"]["accepted"] == summary["clicks"]
        assert summary["ctr"] == summary["clicks"] / summary["impressions"]
        assert summary["expected_ctr"] <= summary["oracle_ctr"]
        assert Path(document["truth_path"]) == tmp_path / "sim" / "simulate" / "sim9-truth.npz"
        assert Path(document["truth_path"]).is_file()
        assert httpx.get(f"{url}/v1/users/sim9-u7").json()["attributes"]["segment"].startswith("sim9-c")


def test_the_cli_simulates_the_users_of_the_synthetic_data(api_settings: Settings, tmp_path: Path) -> None:
    """`--synthetic`: the population is the synthetic data's (its ids, its planted vectors), nothing is loaded."""
    from pipelines.datasets.synthetic import load_truth, truth_path

    state = ["--state-dir", str(api_settings.state_dir)]
    missing = CliRunner().invoke(cli, ["simulate", "--synthetic", "--requests", "1", *state])
    assert missing.exit_code != 0 and "no synthetic data" in missing.output and "recsys data synth" in missing.output
    synth = CliRunner().invoke(cli, ["data", "synth", "--users", "20", "--items", "40", "--categories", "4",
                                     "--events", "500", "--seed", "6", *state])  # fmt: skip
    assert synth.exit_code == 0, synth.output
    out = tmp_path / "results.json"
    with live_server(create_app(api_settings)) as url:
        result = CliRunner().invoke(cli, ["simulate", "--api-url", url, "--synthetic", "--requests", "10", "--k", "4",
                                          "--out", str(out), *state])  # fmt: skip
        assert result.exit_code == 0, result.output
        assert httpx.get(f"{url}/v1/users/sim6-u0").status_code == 404, "nothing of a simulated tenant was loaded"
    document = json.loads(out.read_text())
    assert document["tenant"] is None and document["summary"]["requests"] == 10
    planted = load_truth(truth_path(api_settings))
    with np.load(document["truth_path"]) as data:
        params = json.loads(str(data["params"]))
        assert (params["users"], params["items"], params["id_prefix"]) == (20, 40, "")
        np.testing.assert_allclose(data["item_vectors"], planted.item_factors, rtol=1e-6)
        np.testing.assert_array_equal(data["user_category"], planted.user_category)
