"""`recsys experiments ope` end to end: the live API serves ε-greedy lists and logs its candidates,
the simulator clicks them, Spark compacts and attributes the log, and the command's estimates of
greedy match greedy's true CTR on the same requests, computed from the simulator's truth: the
expected clicks of each request's logged top k (what greedy would have shown) for its user and step.
Each estimate must lie within 3 bootstrap standard errors of that truth (the CI's half width is
1.96 of them).

The logged candidates are truncated (top 8 of more), so explored items beyond them exercise the
reconstruction of the pool; a request whose logged propensities did not match the replayed
ε-greedy placement would be skipped, so every served request must be used.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from feature_store.event_log import EventLogReader
from feature_store.settings import ExploreSettings, Settings
from pipelines.simulate.click_model import load_truth
from pipelines.simulate.population import PopulationParams
from pipelines.simulate.runner import RunParams
from pipelines.simulate.session import SimulationSpec, simulate
from pipelines.spark.ope_input import iterate, logged_requests
from pipelines.spark.session import build_session
from services.api.app import create_app
from services.cli import app as cli
from tests.services.conftest import EventFactory, live_server, put_items

POPULATION = PopulationParams(users=40, items=40, categories=4, seed=12)
K, REQUESTS, EPSILON, TOP_N = 4, 600, 0.3, 8
ESTIMATE = re.compile(r"^(IPS|SNIPS|DR): CTR per slot (\S+) \[(\S+), (\S+)\]$", re.MULTILINE)


@pytest.fixture
def spark_session(api_settings: Settings) -> Iterator[object]:
    """One local session the batch and ope commands share (a command keeps a session it did not start)."""
    session = build_session(api_settings.model_copy(update={"spark": api_settings.spark.model_copy(update={
        "master": "local[2]", "shuffle_partitions": 4})}), "recsys-tests-ope",
        {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    yield session
    session.stop()


def _invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_ope_of_greedy_from_epsilon_greedy_logs_covers_its_true_ctr(api_settings: Settings, spark_session: object) -> None:
    explore = ExploreSettings(policy="epsilon_greedy", epsilon=EPSILON, seed=3, log_candidates_share=1.0,
                              log_candidates_top_n=TOP_N)
    settings = api_settings.model_copy(update={"explore": explore})
    spec = SimulationSpec(POPULATION, RunParams(requests=REQUESTS, seconds=600, k=K, concurrency=1), history_sessions=2)
    with live_server(create_app(settings)) as url:
        report = simulate(url, spec, settings.state_dir)
    assert (report.result.summary.requests, report.result.summary.errors) == (REQUESTS, 0)

    # The truth: greedy shows the logged top k; its expected clicks for the request's user and step.
    first_slots = {e.context.request_id: e.context for e in EventLogReader(settings.event_log_dir).read()
                   if e.type.value == "impression" and e.context.position == 0 and e.context.candidates}
    assert len(first_slots) == REQUESTS
    assert all(len(c.candidates) == min(TOP_N, c.candidate_count) for c in first_slots.values())
    assert any(c.candidate_count > TOP_N for c in first_slots.values())
    truth = load_truth(report.truth_path)  # the population under the ids the run gave it
    greedy = np.mean([truth.expected_clicks(r.user_id, first_slots[r.request_id].candidates[:K], r.step) / K
                      for r in report.result.served])
    logged = np.mean([r.expected_clicks / K for r in report.result.served])

    state = ["--state-dir", str(settings.state_dir)]
    _invoke("batch", "compact", *state)
    _invoke("batch", "attribution", *state)
    output = _invoke("experiments", "ope", "--policy", "greedy", "--bootstrap", "400", "--since", "2000-01-01", *state)
    assert f"requests: {REQUESTS}\n" in output and "skipped" not in output, output
    assert f"logging policy: ranker=popularity;explore=epsilon_greedy(epsilon={EPSILON:g}) ({REQUESTS} requests)" in output, output
    estimates = {name: tuple(map(float, values)) for name, *values in ESTIMATE.findall(output)}
    assert set(estimates) == {"IPS", "SNIPS", "DR"}, output
    for name, (value, low, high) in estimates.items():
        # Within 3 bootstrap standard errors (the 95% CI is ±1.96): a 0.3% chance per estimator of
        # a false failure, where requiring the CI itself to cover would fail one run in ~10.
        assert abs(value - greedy) <= 3 * (high - low) / (2 * 1.96), (name, estimates[name], greedy, logged, output)
    # Not the logging policy's CTR in disguise: the exploring lists were clearly worse than greedy's.
    assert logged < 0.9 * greedy, (logged, greedy)
    # --until before the run leaves no request: an error that says what to do.
    early = CliRunner().invoke(cli, ["experiments", "ope", "--policy", "greedy", "--until", "2000-01-01", *state])
    assert early.exit_code == 2 and "no usable logged request" in early.output, early.output

    # A target reading the feedback counts (UCB1) takes them from Redis at OPE time.
    ucb = CliRunner().invoke(cli, ["experiments", "ope", "--policy", "ucb1", "--bootstrap", "100", *state],
                             env={"RECSYS_REDIS__URL": settings.redis.url})
    assert ucb.exit_code == 0 and f"requests: {REQUESTS}\n" in ucb.output, ucb.output
    assert {name for name, *_ in ESTIMATE.findall(ucb.output)} == {"IPS", "SNIPS", "DR"}, ucb.output


@pytest.mark.parametrize(("args", "message"), [
    (["--policy", "softmax"], "policy: Input should be"),
    (["--policy", "epsilon_greedy", "--param", "epsilon=1.5"], "epsilon: Input should be less than or equal to 1"),
    (["--policy", "greedy", "--param", "epsilon"], "expected name=value"),
    (["--policy", "greedy", "--param", "colour=red"], "colour: Extra inputs are not permitted"),
    (["--policy", "linucb"], "linucb: off-policy evaluation needs each request's context, which is not logged"),
])  # fmt: skip
def test_ope_rejects_bad_targets_with_a_message(settings: Settings, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["experiments", "ope", *args, "--state-dir", str(settings.state_dir)])
    assert result.exit_code == 2 and message in result.output, result.output


def test_two_users_under_one_request_id_are_two_logged_requests(
    api_settings: Settings, spark_session: object, make_event: EventFactory
) -> None:
    """A page view's id sent by each widget: OPE reads each user's request with its own candidates
    and slots, not one request with both users' slots."""
    explore = ExploreSettings(policy="epsilon_greedy", epsilon=0.5, seed=5, log_candidates_share=1.0, log_candidates_top_n=TOP_N)
    settings = api_settings.model_copy(update={"explore": explore})
    with TestClient(create_app(settings)) as client:
        put_items(client, {f"i{n}": (f"Film {n}", ["Drama"]) for n in range(8)})
        events = [make_event(f"crowd{n}", f"i{index}") for index in range(8) for n in range(8 - index)]
        assert client.post("/v1/events", json=events).json()["accepted"] == len(events)
        served = {}
        for user in ("ann", "bob"):
            response = client.get(f"/v1/users/{user}/recommendations", params={"k": 3}, headers={"X-Request-ID": "page-1"})
            assert response.status_code == 200 and response.json()["request_id"] == "page-1", response.text
            served[user] = [item["item_id"] for item in response.json()["items"]]
        clicked = served["bob"][1]
        assert client.post("/v1/events", json=[make_event("bob", clicked, context={"request_id": "page-1"})]).json()["accepted"] == 1
        service = client.app.state.service  # type: ignore[attr-defined]
        assert service.impressions.flush(60.0)
        service.event_log.roll_all()

    state = ["--state-dir", str(settings.state_dir)]
    _invoke("batch", "compact", *state)
    _invoke("batch", "attribution", *state)
    rows = {row["user_id"]: row for row in iterate(logged_requests(spark_session, settings))}  # type: ignore[arg-type]
    assert set(rows) == {"ann", "bob"}
    for user, items in served.items():
        assert rows[user]["request_id"] == "page-1" and len(rows[user]["candidates"]) == 8
        assert [(s["position"], s["item_id"]) for s in rows[user]["slots"]] == list(enumerate(items))
        assert [s["click"] for s in rows[user]["slots"]] == [int(user == "bob" and i == clicked) for i in items]
