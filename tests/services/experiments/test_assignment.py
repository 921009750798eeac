"""Sticky assignment: the hash against an independent computation, shares, layer independence, and
two real API workers answering every user with the same arm."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from scipy import stats

from feature_store.redis_server import EmbeddedRedis
from services.experiments.assignment import assign
from services.experiments.model import Experiment
from tests.services.test_server import recsys_api_with_two_workers

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def experiment(experiment_id: str, layer: str = "default", offset: float = 0.0, traffic: float = 1.0,
               shares: tuple[float, float] | None = None) -> Experiment:
    arms = [{"name": "a"}, {"name": "b"}]
    if shares:
        arms = [{"name": "a", "share": shares[0]}, {"name": "b", "share": shares[1]}]
    return Experiment.model_validate({"id": experiment_id, "kind": "ab", "arms": arms, "layer": layer, "offset": offset,
                                      "traffic": traffic, "salt": experiment_id, "created_at": NOW})


def reference_arm(e: Experiment, user: str) -> str | None:
    """The documented rule, computed here from SHA-256 directly."""
    def point(salt: str) -> float:
        return int.from_bytes(hashlib.sha256(f"{salt}:{user}".encode()).digest()[:8], "big") / 2**64

    if not e.offset <= point(f"layer:{e.layer}") < e.offset + e.traffic:
        return None
    shares = e.shares()
    return e.arms[0].name if point(f"arm:{e.salt}") < shares[0] else e.arms[1].name


def test_assignment_follows_the_salted_hash_and_the_shares() -> None:
    e = experiment("x", offset=0.2, traffic=0.5, shares=(0.3, 0.7))
    users = [f"u{n}" for n in range(20_000)]
    arms = [next((a.arm for a in assign([e], u, NOW)), None) for u in users]
    assert arms == [reference_arm(e, u) for u in users]
    counts = np.array([arms.count(None), arms.count("a"), arms.count("b")])
    assert stats.chisquare(counts, np.array([0.5, 0.15, 0.35]) * len(users)).pvalue > 0.001


def test_layers_do_not_interfere() -> None:
    first, second = experiment("one", layer="ranking"), experiment("two", layer="explore")
    table = np.zeros((2, 2))
    for n in range(20_000):
        got = {a.experiment.id: a.arm for a in assign([first, second], f"u{n}", NOW)}
        table["ab".index(got["one"]), "ab".index(got["two"])] += 1
    assert stats.chi2_contingency(table).pvalue > 0.001  # the arm in one layer says nothing of the other


def test_an_experiment_outside_its_window_or_stopped_assigns_nobody() -> None:
    later = experiment("later").model_copy(update={"start": datetime(2027, 1, 1, tzinfo=timezone.utc)})
    stopped = experiment("stopped").model_copy(update={"status": "stopped"})
    assert assign([later, stopped], "u1", NOW) == []


def test_two_workers_assign_every_user_the_same_arm(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    with recsys_api_with_two_workers(redis_server.url, tmp_path / "state", RECSYS_API__API_KEYS='["k"]') as base:
        body = {"id": "sticky", "kind": "ab", "traffic": 0.6, "arms": [
            {"name": "control"}, {"name": "explorer", "explore": {"policy": "epsilon_greedy", "epsilon": 0.5}}]}
        created = httpx.post(f"{base}/v1/experiments", json=body, headers={"X-API-Key": "k"}, timeout=60)
        assert created.status_code == 201, created.text
        reference = Experiment.model_validate(created.json())
        for round_ in range(3):  # fresh connections: the kernel spreads them over both workers
            for n in range(30):
                answer = httpx.get(f"{base}/v1/users/u{n}/recommendations", timeout=60).json()
                expected = reference_arm(reference, f"u{n}")
                assert answer["arm"] == (None if expected is None else f"sticky:{expected}"), (round_, n)
