"""Online revisions served by the real API over a real DIN: the exported penultimate features
reproduce the ranker's scores, an interleaved list of W, W̃ and the base equals an independent
recomputation with the same seed, the kill switch turns it off without a restart, a revision
reaches both workers of a two-worker API within the poll interval, and PDGD's served list (its
features kept in Redis by request id) moves w by the paper's exact step from clicks on it."""

from __future__ import annotations

import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from scipy.special import expit, logit

from feature_store.attribution import Impression, Outcome
from feature_store.event_log import EventLogReader
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_server import EmbeddedRedis, free_port
from feature_store.settings import LearnerSettings, Settings
from models.online_revisions import Revision, RevisionStore
from models.ranking import samples
from models.ranking.export import load_exported
from models.ranking.inference import as_request
from models.registry import ModelRegistry
from pipelines.flink.join import AttributionJoin, KeyMaps
from services.api.app import create_app
from services.experiments.interleaving import probabilistic, team_draft
from services.learner.process import LearnerProcess, build
from services.learner.shown import ShownStore
from tests.services.conftest import EventFactory, with_api
from tests.services.experiments.conftest import ADMIN
from tests.services.experiments.test_report import create, write_impressions
from tests.services.experiments.test_several_rankers import _seed
from tests.services.test_models import published  # noqa: F401  (the module's two trained DIN versions)
from tests.services.test_server import ROOT, recsys_api_with_two_workers

pytestmark = pytest.mark.slow
SEED = 11
QUIET = {"log_impressions": "false"}


def base_head(root: Path, version: str) -> np.ndarray:
    """`[w ; b]` of a published DIN's output layer, read from its SavedModel (not through the API)."""
    saved_model, _ = load_exported(ModelRegistry(root).get("ranker", version).path)
    return _call(saved_model, ["i1"], ["c1"])["head"].numpy().astype(np.float64)


def _call(saved_model: object, items: list[str], categories: list[str]) -> dict:
    request = {samples.USER_ID: "u", samples.HIST_ITEM_IDS: ["i3", "i11"], samples.HIST_CATEGORIES: ["c3", "c3"],
               samples.ITEM_ID: items, samples.ITEM_CATEGORY: categories,
               "item_pop_7d": [1.0] * len(items), "user_event_count": [2.0] * len(items)}
    return saved_model.score_user(as_request(request))  # type: ignore[attr-defined]


def test_the_exported_penultimate_features_and_head_give_the_score(published: tuple[Path, list[str]]) -> None:  # noqa: F811
    root, versions = published
    saved_model, _ = load_exported(ModelRegistry(root).get("ranker", versions[0]).path)
    output = _call(saved_model, [f"i{n}" for n in range(30)], [f"c{n % 8}" for n in range(30)])
    hidden, head = output["hidden"].numpy(), output["head"].numpy()
    assert hidden.shape == (30, 16) and head.shape == (17,)  # the tower's (32, 16) hidden units, + bias
    np.testing.assert_allclose(expit(hidden @ head[:-1] + head[-1]), output["score"].numpy(), atol=1e-6)


def _settings(api_settings: Settings, root: Path) -> Settings:
    settings = api_settings.model_copy(update={
        "registry_dir": root, "explore": api_settings.explore.model_copy(update={"seed": SEED}),
        "learner": LearnerSettings(share=1.0, poll_interval_s=0.2)})
    return with_api(settings, model_poll_interval_s=0.2, api_keys=["admin-key"], recall_candidates=60)


def test_interleaved_list_of_w_explore_and_base_matches_a_recomputation_and_the_switch_stops_it(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    settings = _settings(api_settings, root)
    with TestClient(create_app(settings)) as client:
        _seed(client, make_event)
        fans = [make_event(f"fan{c}", f"i{n * 8 + c}") for c in (5, 6) for n in range(4)]  # two more histories
        assert client.post("/v1/events", json=fans, headers=ADMIN).json()["accepted"] == len(fans)
        # The recomputation below needs a strict order: W's scores (the learner's head on the DIN's
        # penultimate features, float64) must order the items as the DIN's own float32 scores do. They
        # agree to ~1e-6 in logit, so a user whose scores hold a closer pair (a trained model's chance)
        # gives way to the next.
        for user in ("fan", "fan5", "fan6"):
            plain = client.get(f"/v1/users/{user}/recommendations", params={"k": 100, **QUIET}).json()
            assert plain["explore"] == "greedy" and plain["experiment"] is None  # no revision yet: plain serving
            order = [item["item_id"] for item in plain["items"]]
            logits = logit(np.array([item["score"] for item in plain["items"]]))
            if len(order) == 60 and np.all(np.diff(logits) < -1e-5):
                break
        else:
            raise AssertionError("every user's scores hold a near tie")

        # Planted revision: W is the base's own layer, W̃ its negation (so W̃ ranks in reverse).
        head = base_head(root, versions[0])
        store = RevisionStore(redis.Redis.from_url(settings.redis.url), settings.redis.key_prefix)
        revision = store.publish(versions[0], head[:-1], -head[:-1], None, "planted")
        status = client.post("/v1/admin/learner", json={"enabled": True, "reason": "test"}, headers=ADMIN).json()
        assert status["revision"] == revision.id and status["base"] == versions[0] and status["enabled"]

        answer = client.get(f"/v1/users/{user}/recommendations", params={"k": 10, **QUIET}).json()
        top = [order[:20], order[::-1][:20], order[:20]]  # each team's top learner.depth
        expected = probabilistic(top, 10, np.random.default_rng([SEED, 0]), 3.0)
        assert [item["item_id"] for item in answer["items"]] == list(expected.items)
        assert [item["team"] for item in answer["items"]] == [("current", "explore", "base")[t] for t in expected.teams]
        np.testing.assert_allclose([item["propensity"] for item in answer["items"]], expected.propensities, rtol=1e-9)
        assert answer["explore"] == f"learner:{revision.id}" and answer["experiment"] == "learner"
        assert answer["arm"] == "learner:online"
        assert {"explore", "current"} <= {item["team"] for item in answer["items"]}
        longer = client.get(f"/v1/users/{user}/recommendations", params={"k": 30, **QUIET}).json()  # k > depth
        expected = probabilistic([order[:30], order[::-1][:30], order[:30]], 30, np.random.default_rng([SEED, 1]), 3.0)
        assert [item["item_id"] for item in longer["items"]] == list(expected.items) and len(expected.items) == 30

        stopped = client.post("/v1/admin/learner", json={"enabled": False, "reason": "kill"}, headers=ADMIN).json()
        assert not stopped["enabled"] and stopped["reason"] == "kill"
        after = client.get(f"/v1/users/{user}/recommendations", params={"k": 10, **QUIET}).json()
        assert after["explore"] == "greedy" and [item["item_id"] for item in after["items"]] == order[:10]
        assert client.post("/v1/admin/learner", json={"enabled": False, "reason": ""}, headers=ADMIN).status_code == 422


def test_a_revision_reaches_both_workers_within_the_poll_interval(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, published: tuple[Path, list[str]],  # noqa: F811
    tmp_path: Path,
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    store = RevisionStore(redis_client, "recsys")
    env = {"RECSYS_REGISTRY_DIR": str(root), "RECSYS_API__API_KEYS": '["k"]', "RECSYS_LEARNER__SHARE": "1",
           "RECSYS_LEARNER__POLL_INTERVAL_S": "1"}
    with recsys_api_with_two_workers(redis_server.url, tmp_path / "state", **env) as base:
        serving = _workers_serving(base, lambda s: s["base"] == versions[0], timeout_s=120)
        head = base_head(root, versions[0])
        for step in range(2):
            revision = store.publish(versions[0], head[:-1] * (1 + step), -head[:-1], None, f"step {step}")
            published_at = time.monotonic()
            serving = _workers_serving(base, lambda s: s["revision"] == revision.id, timeout_s=30)
            print(f"revision {revision.id} on both workers after {time.monotonic() - published_at:.2f} s")
        assert len(serving) == 2


def _workers_serving(base: str, condition, timeout_s: float) -> set[int]:  # type: ignore[no-untyped-def]
    """Poll `/v1/admin/learner` on fresh connections until two distinct workers meet `condition`."""
    deadline, meeting = time.monotonic() + timeout_s, set()
    while len(meeting) < 2:
        assert time.monotonic() < deadline, f"only workers {meeting} serve it after {timeout_s} s"
        status = httpx.get(f"{base}/v1/admin/learner", headers={"X-API-Key": "k"}, timeout=30).json()
        meeting = meeting | {status["worker"]} if condition(status) else meeting - {status["worker"]}
    return meeting


def _learner_started(client: TestClient, make_event: EventFactory, settings: Settings,
                     client_redis: redis.Redis, version: str) -> tuple[LearnerProcess, Revision]:
    """Seed the API's catalog and histories, build the learner and take its first step: the first
    revision is the real DIN's own output layer, read from its SavedModel."""
    _seed(client, make_event)
    process = build(settings, client_redis, seed=5)
    process.step()
    first = process.store.current(version)
    assert first is not None
    return process, first


def test_the_learner_learns_from_the_apis_interleaved_lists_and_clicks(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    settings = _settings(api_settings, root)
    settings = settings.model_copy(update={"attribution": settings.attribution.model_copy(update={"window_s": 1.0})})
    with TestClient(create_app(settings)) as client:
        process, first = _learner_started(client, make_event, settings, redis.Redis.from_url(settings.redis.url), versions[0])
        np.testing.assert_allclose(first.weights, base_head(root, versions[0])[:-1])
        assert client.post("/v1/admin/learner", json={"enabled": True, "reason": "go"}, headers=ADMIN).json()["revision"] == first.id

        answer = client.get("/v1/users/fan/recommendations", params={"k": 10}).json()
        explored = [item["item_id"] for item in answer["items"] if item["team"] == "explore"]
        assert explored and answer["arm"] == "learner:online"
        assert client.app.state.service.impressions.flush(30)  # type: ignore[attr-defined]
        clicks = [make_event("fan", item, context={"request_id": answer["request_id"]}) for item in explored]
        tick = {**make_event("someone", "i1"), "ts": (datetime.now(timezone.utc) + timedelta(seconds=5)).isoformat()}
        assert client.post("/v1/events", json=[*clicks, tick], headers=ADMIN).json()["accepted"] == len(clicks) + 1

        deadline = time.monotonic() + 60
        while process.summary.comparisons == 0:  # the event log rolls its files every 0.2 s here
            assert time.monotonic() < deadline, "the learner never saw the comparison"
            time.sleep(0.2)
            process.step()
        second = process.store.current(versions[0])
        expected = first.weights + settings.learner.eta * (first.explore_weights - first.weights)  # explore won: DRN's step
        expected *= np.linalg.norm(first.weights) / np.linalg.norm(expected)
        np.testing.assert_allclose(second.weights, expected, rtol=1e-12)
        assert second.parent == first.id
        status = client.post("/v1/admin/learner", json={"enabled": True, "reason": "go"}, headers=ADMIN).json()
        assert status["revision"] == second.id


def test_recsys_learn_online_publishes_the_bases_layer_serves_metrics_and_stops_cleanly_on_sigterm(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, published: tuple[Path, list[str]], tmp_path: Path,  # noqa: F811
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    port = free_port()
    env = {**os.environ, "RECSYS_REDIS__URL": redis_server.url, "RECSYS_STATE_DIR": str(tmp_path / "state"),
           "RECSYS_REGISTRY_DIR": str(root), "TF_CPP_MIN_LOG_LEVEL": "2", "RECSYS_LEARNER__METRICS_PORT": str(port)}
    learner = subprocess.Popen([sys.executable, "-c", "from services.cli import main; main()", "learn", "online", "--interval-s", "0.2"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    store = RevisionStore(redis_client, "recsys")
    try:
        deadline = time.monotonic() + 120
        while store.current(versions[0]) is None:
            assert learner.poll() is None and time.monotonic() < deadline, "no revision published"
            time.sleep(0.2)
        revision = store.current(versions[0])
        np.testing.assert_allclose(revision.weights, base_head(root, versions[0])[:-1])
        metrics = ""
        while "recsys_learner_revisions_total 1.0" not in metrics:  # counted just after the store's publish
            assert time.monotonic() < deadline, f"no revision counted on /metrics:\n{metrics}"
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "recsys_learner_bases_total 1.0" in metrics and "recsys_learner_rollbacks_total 0.0" in metrics
        assert f'recsys_learner_revision{{base="{versions[0]}"}} {float(revision.id[1:].split("-")[0])}' in metrics
        assert revision.id not in metrics  # no series per revision
    finally:
        learner.send_signal(signal.SIGTERM)
        output, _ = learner.communicate(timeout=60)
    assert learner.returncode == 0, output
    assert "learner stopped: base " + versions[0] in output and "'revisions': 1" in output


def _pdgd_step(clicked: int, x: np.ndarray, w: np.ndarray, logged: np.ndarray, log_total: float) -> np.ndarray:
    """Oosterhuis & de Rijke's gradient for one click on slot `clicked` of a served list, in plain
    Python: pairs with every unclicked slot above it and the one below, ρ from Plackett–Luce with
    each slot's denominator the mass of the candidates not shown above it."""
    def probability(order: list[int]) -> float:
        p, left = 1.0, math.exp(log_total)
        for slot in order:
            p *= math.exp(logged[slot]) / left
            left -= math.exp(logged[slot])
        return p

    shown, s, gradient = list(range(len(logged))), x @ w, np.zeros(len(w))
    for other in [*range(clicked), clicked + 1]:
        swapped = list(shown)
        swapped[clicked], swapped[other] = other, clicked
        rho = probability(swapped) / (probability(swapped) + probability(shown))
        p = 1 / (1 + math.exp(s[other] - s[clicked]))
        gradient += rho * p * (1 - p) * (x[clicked] - x[other])
    return gradient


def test_pdgd_serves_a_plackett_luce_list_of_w_and_learns_from_its_clicks_by_the_exact_step(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    settings = _settings(api_settings, root)
    settings = settings.model_copy(update={
        "attribution": settings.attribution.model_copy(update={"window_s": 30.0}),
        "learner": settings.learner.model_copy(update={"algorithm": "pdgd", "lr": 0.5})})
    client_redis = redis.Redis.from_url(settings.redis.url)
    shown = ShownStore(client_redis, settings.redis.key_prefix, settings.learner.shown_ttl_s)
    with TestClient(create_app(settings)) as client:
        process, first = _learner_started(client, make_event, settings, client_redis, versions[0])
        assert first.explore is None
        assert client.post("/v1/admin/learner", json={"enabled": True, "reason": "go"}, headers=ADMIN).json()["revision"] == first.id
        answer, expiring = [client.get("/v1/users/fan/recommendations", params={"k": 10}).json() for _ in range(2)]
        clicks = [make_event("fan", answer["items"][3]["item_id"], context={"request_id": answer["request_id"]}),
                  make_event("fan", expiring["items"][0]["item_id"], context={"request_id": expiring["request_id"]})]
        service = client.app.state.service  # type: ignore[attr-defined]
        service.learner.shown.flush()
        assert service.impressions.flush(30)
        assert answer["explore"] == f"learner:{first.id}" and {item["team"] for item in answer["items"]} == {"current"}
        kept = shown.read([("fan", answer["request_id"])])[("fan", answer["request_id"])]
        assert kept.items == tuple(item["item_id"] for item in answer["items"]) and kept.revision == first.id
        x, logged = kept.features, kept.scores
        head = base_head(root, versions[0])
        # The kept features are the ones W scored (the served score is σ(w · h + b)), and each slot's
        # logged propensity is Plackett–Luce's given the slots above, over every ranked candidate.
        np.testing.assert_allclose(expit(x @ first.weights + head[-1]), [i["score"] for i in answer["items"]], atol=1e-5)
        left = math.exp(kept.log_total) - np.concatenate(([0.0], np.cumsum(np.exp(logged))[:-1]))
        np.testing.assert_allclose([i["propensity"] for i in answer["items"]], np.exp(logged) / left, rtol=1e-9)

        client_redis.pexpire(shown.key("fan", expiring["request_id"]), 1)  # the second list's features expire
        deadline = time.monotonic() + 30
        while client_redis.exists(shown.key("fan", expiring["request_id"])):
            assert time.monotonic() < deadline, "the planted TTL never expired"
            time.sleep(0.01)
        tick = {**make_event("someone", "i1"), "ts": (datetime.now(timezone.utc) + timedelta(seconds=60)).isoformat()}
        assert client.post("/v1/events", json=[*clicks, tick], headers=ADMIN).json()["accepted"] == 3
        deadline = time.monotonic() + 60
        while process.summary.comparisons < 2:  # the event log rolls its files every 0.2 s here
            assert time.monotonic() < deadline, "the learner never saw both lists"
            time.sleep(0.2)
            process.step()
        second = process.store.current(versions[0])
        step = 0.5 * _pdgd_step(3, x, first.weights, logged, kept.log_total)
        assert np.linalg.norm(step) > 1e-6  # a positive combination of x_3 − x_l over the click's pairs
        np.testing.assert_allclose(second.weights, first.weights + step, rtol=1e-9)
        assert second.parent == first.id and process.summary.missing_features == 1 and process.summary.moves == 1


def _arm_of(user: str, share: float) -> str | None:
    """The learner arm a user must get, from SHA-256 directly: `online` below `share` of the
    `learner` hash, `control` in the next slice of the same size."""
    point = int.from_bytes(hashlib.sha256(f"learner:{user}".encode()).digest()[:8], "big") / 2**64
    return "online" if point < share else "control" if point < 2 * share else None


def _attribute_logged_events(settings: Settings, expected_impressions: int, expected_clicks: int) -> None:
    """Once the event log holds the API's `expected_impressions` and the `expected_clicks` with a
    request id, the stream job's join (`AttributionJoin`, without Flink) over the API's event log, written to
    the attribution store the A/B report reads (what `recsys stream attribution` does)."""
    reader, deadline = EventLogReader(settings.event_log_dir), time.monotonic() + 60
    while True:  # the event log rolls its files every 0.2 s here: wait for the impressions and the clicks
        events = list(reader.read())
        impressions = sum(e.type == "impression" and e.context is not None and e.context.experiment == "learner" for e in events)
        if impressions >= expected_impressions and sum(e.type == "click" and e.context is not None and e.context.request_id is not None for e in events) >= expected_clicks:
            break
        assert time.monotonic() < deadline, "the API's impressions and the posted clicks never reached the event log"
        time.sleep(0.2)
    join, states = AttributionJoin(int(settings.attribution.window_s * 1000), 0), defaultdict(KeyMaps.in_memory)
    for event in sorted(events, key=lambda e: e.type != "impression"):  # impressions first: clicks credit at once
        if event.type == "impression":
            join.impression(Impression.of(event), states[(event.user_id, event.item_id)])
        elif event.type == "click":
            join.outcome(Outcome.of(event), states[(event.user_id, event.item_id)])
    attribution = RedisOnlineStore.from_settings(settings).attribution()
    attribution.record_many(join.drain())
    attribution.close()


def test_the_learning_share_and_its_control_are_arms_of_the_learner_experiment_whose_guardrail_rolls_back(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    """A planted bad revision (w = −base) served to the `online` arm, clicks from a planted click model
    (the base's top 10 for a new user clicked at 50%, other items at 5%): the real A/B report of
    experiment `learner` counts both arms from the learner's own impressions, its guardrail stops
    `online`, and the learner rolls back to the base once, with the reason."""
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    share = 0.3
    settings = _settings(api_settings, root)
    settings = settings.model_copy(update={"learner": settings.learner.model_copy(update={"share": share})})
    users = [f"new{n}" for n in range(200)]
    by_arm = {arm: [u for u in users if _arm_of(u, share) == arm][:20] for arm in ("online", "control", None)}
    assert all(len(chosen) == 20 for chosen in by_arm.values())
    client_redis = redis.Redis.from_url(settings.redis.url)
    with TestClient(create_app(settings)) as client:
        _seed(client, make_event)
        plain = client.get(f"/v1/users/{by_arm[None][0]}/recommendations", params={"k": 10, **QUIET}).json()
        liked = {item["item_id"] for item in plain["items"]}  # a new user's plain top 10 (no history: the same for all)
        head = base_head(root, versions[0])
        RevisionStore(client_redis, settings.redis.key_prefix).publish(versions[0], -head[:-1], None, None, "planted bad")
        process = build(settings, client_redis, seed=5)
        process.step()  # resumes from the bad revision (w = −base), with an explore head
        bad = process.revision
        assert bad is not None and np.allclose(bad.weights, -head[:-1])
        create(client, {"id": "learner", "kind": "ab", "guardrail": {"max_ctr_drop": 0.1, "p_value": 0.01},
                        "arms": [{"name": "control"}, {"name": "online"}]})
        assert client.post("/v1/admin/learner", json={"enabled": True, "reason": "go"}, headers=ADMIN).json()["revision"] == bad.id

        rng, clicks, planted = np.random.default_rng(SEED), [], {"online": [0, 0], "control": [0, 0]}
        rows: dict[str, list] = {k: [] for k in ("event_id", "user_id", "arm", "click", "ts", "experiment")}
        for arm in ("online", "control"):
            for user in by_arm[arm]:
                answer = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
                assert (answer["experiment"], answer["arm"]) == ("learner", f"learner:{arm}")
                if arm == "online":  # the revision stays in the policy label
                    assert answer["explore"] == f"learner:{bad.id}" and {i["team"] for i in answer["items"]} >= {"current"}
                else:  # served plainly
                    assert answer["explore"] == "greedy" and [i["item_id"] for i in answer["items"]] == [i["item_id"] for i in plain["items"]]
                for item in answer["items"]:
                    planted[arm][1] += 1
                    clicked = rng.random() < (0.5 if item["item_id"] in liked else 0.05)
                    if clicked:
                        planted[arm][0] += 1
                        clicks.append(make_event(user, item["item_id"], context={"request_id": answer["request_id"]}))
                    for name, value in (("event_id", f"{user}-{item['item_id']}"), ("user_id", user),
                                        ("arm", f"learner:{arm}"), ("click", int(clicked)),
                                        ("ts", datetime.now(timezone.utc)), ("experiment", "learner")):
                        rows[name].append(value)
        # The batch layer's rows of the same impressions: the guardrail's per-user design effects.
        write_impressions(settings, rows, "learner")
        assert client.app.state.service.impressions.flush(30)  # type: ignore[attr-defined]
        assert client.post("/v1/events", json=clicks, headers=ADMIN).json()["accepted"] == len(clicks)
        _attribute_logged_events(settings, 400, len(clicks))

        report = client.get("/v1/experiments/learner/report").json()
        counted = {arm["name"]: [arm["clicks"], arm["impressions"]] for arm in report["arms"]}
        assert counted == planted, (counted, planted)
        assert planted["online"][0] < 0.6 * planted["control"][0]  # the click model favours control
        assert report["arms"][1]["stopped"].startswith("guardrail")
        process.step()
        rolled = process.store.current(versions[0])
        np.testing.assert_allclose(rolled.weights, head[:-1])  # the base's own layer
        assert rolled.reason.startswith("rollback: experiment 'learner' stopped arm 'online' (guardrail: CTR")
        process.step()
        assert process.summary.guardrail_rollbacks == 1 and process.store.current(versions[0]).id == rolled.id



def test_a_promoted_revision_serves_users_outside_the_arms_and_pdgds_gate_share_shows_the_team_draft_of_w_and_the_base(
    api_settings: Settings, published: tuple[Path, list[str]], make_event: EventFactory  # noqa: F811
) -> None:
    """PDGD with sharpness 2 and the whole learning share on the gate's comparison. A new user's
    plain list (no history: the same for every new user) is the base's order. A revision `w` = −2 ×
    the base's layer ranks in reverse: while it is not `served` a user outside the arms gets the
    plain list; once it is, that user gets the reversed list (`w` / sharpness: the base's scores
    negated inside σ, recomputed here from the plain scores), logged as ranker `<base>@<revision>`
    with no experiment. An `online` user gets the team-draft of the two top 10s under the learner's
    first seeded generator. A learner started then resumes serving `w`, and a click on a `current`
    slot of that list reaches it as a gate comparison `w` won."""
    root, versions = published
    ModelRegistry(root).set_current("ranker", versions[0])
    share = 0.3
    settings = _settings(api_settings, root)
    settings = settings.model_copy(update={
        "attribution": settings.attribution.model_copy(update={"window_s": 1.0}),
        "learner": settings.learner.model_copy(update={"share": share, "algorithm": "pdgd", "sharpness": 2.0,
                                                        "gate_share": 1.0, "gate_window": 10})})
    users = [f"new{n}" for n in range(100)]
    outside = next(u for u in users if _arm_of(u, share) is None)
    online = next(u for u in users if _arm_of(u, share) == "online")
    client_redis = redis.Redis.from_url(settings.redis.url)
    store = RevisionStore(client_redis, settings.redis.key_prefix)
    with TestClient(create_app(settings)) as client:
        _seed(client, make_event)
        plain = client.get(f"/v1/users/{outside}/recommendations", params={"k": 100, **QUIET}).json()
        order = [item["item_id"] for item in plain["items"]]
        scores = np.array([item["score"] for item in plain["items"]])
        # The team-draft below needs both top 10s strict: `w`'s scores (float64, from the DIN's
        # penultimate features) agree with the DIN's own float32 scores to ~1e-6 in logit.
        assert len(order) >= 22 and all(np.all(np.diff(logit(scores[ends])) < -1e-5) for ends in (slice(0, 11), slice(-11, None)))
        head = base_head(root, versions[0])

        def serve(served: bool) -> Revision:
            revision = store.publish(versions[0], -2.0 * head[:-1], None, None, "planted", served=served, algorithm="pdgd")
            status = client.post("/v1/admin/learner", json={"enabled": True, "reason": "go"}, headers=ADMIN).json()
            assert status["revision"] == revision.id and status["promoted"] == served and status["ranker_served"]
            return revision

        serve(False)
        answer = client.get(f"/v1/users/{outside}/recommendations", params={"k": 10, **QUIET}).json()
        assert [item["item_id"] for item in answer["items"]] == order[:10] and answer["model_versions"]["ranker"] == versions[0]

        promoted = serve(True)
        answer = client.get(f"/v1/users/{outside}/recommendations", params={"k": 100, **QUIET}).json()
        assert answer["experiment"] is None and answer["explore"] == "greedy"
        assert answer["model_versions"]["ranker"] == f"{versions[0]}@{promoted.id}"
        # w / 2 is minus the base's layer: σ(2b − logit), the plain order reversed (near ties either way)
        reversed_score = dict(zip(order, expit(2 * head[-1] - logit(scores))))
        shown = [item["item_id"] for item in answer["items"]]
        assert sorted(shown) == sorted(order) and shown[:5] == order[::-1][:5]
        expected = np.array([reversed_score[i] for i in shown])
        assert np.all(np.diff(expected) <= 1e-6)
        np.testing.assert_allclose([item["score"] for item in answer["items"]], expected, atol=1e-5)

        compared = client.get(f"/v1/users/{online}/recommendations", params={"k": 10}).json()
        rng = np.random.default_rng([SEED, 0])  # the learner's first generator: its first learning request
        rng.random()  # the gate's coin (share 1.0)
        expected = team_draft([order[::-1][:10], order[:10]], 10, rng)
        assert [item["item_id"] for item in compared["items"]] == list(expected.items)
        assert [item["team"] for item in compared["items"]] == [("current", "base")[t] for t in expected.teams]
        np.testing.assert_allclose([item["propensity"] for item in compared["items"]], expected.propensities)
        assert compared["arm"] == "learner:online" and compared["explore"] == f"learner:{promoted.id}"

        process = build(settings, client_redis, seed=5)
        process.step()
        resumed = process.store.current(versions[0])
        assert resumed.parent == promoted.id and resumed.served  # a restarted learner keeps serving w
        assert client.app.state.service.impressions.flush(30)  # type: ignore[attr-defined]
        won = next(item["item_id"] for item in compared["items"] if item["team"] == "current")
        click = make_event(online, won, context={"request_id": compared["request_id"]})
        tick = {**make_event("someone", "i1"), "ts": (datetime.now(timezone.utc) + timedelta(seconds=5)).isoformat()}
        assert client.post("/v1/events", json=[click, tick], headers=ADMIN).json()["accepted"] == 2
        deadline = time.monotonic() + 60
        while process.summary.gate_comparisons == 0:  # the event log rolls its files every 0.2 s here
            assert time.monotonic() < deadline, "the learner never saw the gate's comparison"
            time.sleep(0.2)
            process.step()
        assert process.gate.evidence() == (1, 0) and process.summary.comparisons == 0 and process.gate.promoted
