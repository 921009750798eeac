"""The simulator against the real API (uvicorn on a real Redis): what it reports is what the service
received, and the truth it reports is the truth it saved."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from pipelines.simulate.population import PopulationParams
from pipelines.simulate.runner import RunParams
from pipelines.simulate.click_model import load_truth
from pipelines.simulate.session import SimulationSpec, service_population, simulate
from services.api.app import create_app
from services.cli import app as cli
from tests.services.conftest import live_server

POPULATION = PopulationParams(users=30, items=60, categories=6, seed=4, drift_at=100, new_items_at=50, new_items=8)


def _expected_by_hand(
    truth_file: Path, prefix: str, user_id: str, items: list[str], step: int
) -> tuple[float, float]:
    """(expected clicks of `items`, oracle's for the same length) straight from the saved arrays;
    `prefix`: the population's ids'."""
    with np.load(truth_file) as data:
        eta = json.loads(str(data["click_model"]))["eta"]
        users = data["drifted_vectors"] if step >= POPULATION.drift_at else data["user_vectors"]
        u = users[int(user_id.removeprefix(f"{prefix}u"))]
        logits = data["item_vectors"] @ u + data["item_bias"]
        attractive = np.where(data["item_arrival"] <= step, 1 / (1 + np.exp(-logits)), 0.0)
    examination = (1.0 + np.arange(len(items))) ** -eta
    served = np.array([attractive[int(item.removeprefix(f"{prefix}i"))] for item in items])
    return float(examination @ served), float(examination @ np.sort(attractive)[::-1][: len(items)])


def test_a_simulation_against_the_live_api(api_settings: Settings) -> None:
    spec = SimulationSpec(POPULATION, RunParams(requests=200, seconds=600, k=5, concurrency=2), history_sessions=2)
    prefix = service_population(spec).prefix
    assert re.fullmatch(r"sim4-[0-9a-f]{6}-", prefix)
    with live_server(create_app(api_settings)) as url:
        before = httpx.get(f"{url}/v1/items/{prefix}i60")
        report = simulate(url, spec, api_settings.state_dir)
        after = httpx.get(f"{url}/v1/items/{prefix}i60")
        loaded = httpx.get(f"{url}/v1/items/{prefix}i0").json()
    assert before.status_code == 404 and after.status_code == 200  # the new items arrived mid-run
    assert loaded["categories"][0].startswith(f"{prefix}c") and report.truth_path.name == f"{prefix}truth.npz"
    summary, served = report.result.summary, report.result.served
    assert (summary.requests, summary.errors) == (200, 0) and [r.step for r in served] == list(range(200))
    assert summary.impressions == sum(len(r.items) for r in served) and all(len(r.items) == 5 for r in served)

    # Every click the simulator counts reached the event log once, attributed to its request and slot.
    logged = list(EventLogReader(api_settings.event_log_dir).read())
    clicks = {(e.context.request_id, e.context.position, e.item_id) for e in logged if e.type.value == "click"
              and not e.event_id.startswith(f"{prefix}warm")}  # fmt: skip
    served_clicks = {(r.request_id, position, r.items[position]) for r in served for position in r.clicked}
    assert summary.clicks == len(served_clicks) == summary.events.accepted == len(clicks) > 0
    assert clicks == served_clicks and summary.events.duplicates == 0
    assert report.tenant is not None and report.tenant.history.accepted == sum(e.event_id.startswith(f"{prefix}warm") for e in logged)

    # Expected and oracle clicks recomputed from the saved truth file; the oracle is never beaten.
    by_hand = [_expected_by_hand(report.truth_path, prefix, r.user_id, r.items, r.step) for r in served]
    np.testing.assert_allclose([r.expected_clicks for r in served], [e for e, _ in by_hand], rtol=1e-9)
    np.testing.assert_allclose([r.oracle_clicks for r in served], [o for _, o in by_hand], rtol=1e-9)
    assert all(r.expected_clicks <= r.oracle_clicks + 1e-12 for r in served)
    assert summary.expected_ctr <= summary.oracle_ctr and summary.regret >= 0
    assert summary.expected_clicks == pytest.approx(sum(r.expected_clicks for r in served), rel=1e-12)  # summed in completion order

    # The drift moved the truth at step 100: later lists scored with the old vectors would differ.
    undrifted = [_expected_by_hand(report.truth_path, prefix, r.user_id, r.items, 0)[0] for r in served if r.step >= 100]
    drifted = [r.expected_clicks for r in served if r.step >= 100]
    assert not np.allclose(undrifted, drifted)


def test_populations_of_one_seed_keep_their_own_ids_and_truth(api_settings: Settings) -> None:
    """Another population or eta under the same seed gets its own ids (its whole history is accepted)
    and truth file; the same population and eta again finds its own ids (its history is all duplicates)."""
    first = SimulationSpec(PopulationParams(users=8, items=20, categories=4, seed=9), RunParams(requests=5, seconds=60, k=4))
    bigger = replace(first, population=replace(first.population, users=12, items=30, categories=3))
    flatter = replace(first, eta=0.5)
    with live_server(create_app(api_settings)) as url:
        reports = [simulate(url, spec, api_settings.state_dir) for spec in (first, bigger, flatter, first)]
    histories = [report.tenant.history for report in reports if report.tenant is not None]
    assert len(histories) == 4 and all(report.result.summary.errors == 0 for report in reports)
    for history in histories[:3]:
        assert history.posted == history.accepted > 0 and (history.duplicates, history.rejected) == (0, 0), history
    rerun = histories[3]
    assert rerun.posted == rerun.duplicates == histories[0].posted and rerun.accepted == 0, rerun
    paths = [report.truth_path for report in reports]
    assert len(set(paths[:3])) == 3 and paths[3] == paths[0] and all(path.is_file() for path in paths)
    truths = [load_truth(path) for path in paths[:3]]
    assert [(truth.population.params.users, truth.model.eta) for truth in truths] == [(8, 1.0), (12, 1.0), (8, 0.5)]


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
        truth = Path(document["truth_path"])
        assert truth.parent == tmp_path / "sim" / "simulate" and truth.is_file()
        assert (match := re.fullmatch(r"(sim9-[0-9a-f]{6}-)truth\.npz", truth.name)), truth.name
        prefix = match.group(1)
        assert document["spec"]["population"]["id_prefix"] == prefix
        assert httpx.get(f"{url}/v1/users/{prefix}u7").json()["attributes"]["segment"].startswith(f"{prefix}c")


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


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "-1"], "Invalid value for '--seed'"),
    (["--new-items", "5"], "new_items > 0 needs new_items_at"),
])  # fmt: skip
def test_the_cli_names_what_is_wrong_with_a_bad_option(tmp_path: Path, args: list[str], message: str) -> None:
    """Refused before any request: the (unreachable) API is never called."""
    result = CliRunner().invoke(cli, ["simulate", "--api-url", "http://127.0.0.1:9", "--users", "5", "--items", "20",
                                      "--state-dir", str(tmp_path), *args])  # fmt: skip
    assert result.exit_code == 2 and message in result.output, result.output
