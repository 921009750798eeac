"""Serving cost of an interleaved request (two DIN rankers) beside a plain request, in the same run.

Setup as `benchmarks/serving.py` (its helpers): an embedded Redis, two DIN versions trained here
(same samples, different initialisation; tower (200, 80)) and an Item2vec recall model published
to a registry, the API under `recsys serve`'s launcher with `--workers` processes, a 1,000-item
catalog and 300 users with 50-item histories, impressions logged. One interleaving experiment per
`--methods` entry (`team_draft`, `balanced`, `probabilistic`), run one after another, with
`traffic` 0.5: its users get the merge of both versions' rankings of the same 200 candidates (two
ranker calls, the merge, ranks and, probabilistic, per-ranker propensities in the impressions),
the others the plain list (one ranker call, greedy).

`--explore POLICY …` (issue 19: the serving benchmark with exploration on vs off in the same run)
runs, per policy, an A/B experiment over all users with two equal arms of the current ranker:
`greedy` (no explore policy) and `explore` (the policy with its default settings). The arms'
users alternate as the plain and interleaved users do above.

The peer in the same run is the plain request, alternated with the interleaved one
(`benchmarks/learner_serving.py`'s measurements, reused): closed loop first (alternating blocks of
50, server CPU per request and the paired difference of the blocks with a 95% t-interval), then
open loop at `--rates` with `--repeats` runs (p99 of each kind per run, their difference and ratio
with a 95% t-interval over the runs, other processes' CPU during each run: the machine is shared).

    .venv/bin/python benchmarks/experiment_serving.py --rates 200 --seconds 10 --repeats 3 --workers 2
    .venv/bin/python benchmarks/experiment_serving.py --methods --explore linucb thompson --rates 200
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.redis_server import EmbeddedRedis  # noqa: E402
from learner_serving import closed_loop_cost, cost  # noqa: E402
from serving import (  # noqa: E402
    KEY, USERS, add_cpu_arguments, console, drain, load_generator, pin, publish_recall_model, seed, start_server,
    train_and_publish,
)

TRAFFIC = 0.5


def split_users(experiment: dict[str, object], arm: str | None = None) -> tuple[list[str], list[str]]:
    """Users the experiment serves (in `arm`, if given) and the rest (the service's own sticky
    assignment)."""
    from services.experiments.assignment import assign
    from services.experiments.model import Experiment

    created = Experiment.model_validate(experiment)
    now = datetime.now(timezone.utc)
    users = [f"user{n}" for n in range(USERS)]
    inside = [u for u in users if any(arm in (None, a.arm) for a in assign([created], u, now))]
    return inside, [u for u in users if u not in inside]


def wait_until_served(base: str, user: str, check: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The user's response once 10 in a row pass `check` (every worker has read the experiment)."""
    served_in_a_row, deadline = 0, time.monotonic() + 120
    while served_in_a_row < 10:
        response = httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": 10}, timeout=30).json()
        served_in_a_row = served_in_a_row + 1 if check(response) else 0
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not served by every worker within 120 s: {response}")
    return response


def run_method(generator: concurrent.futures.Executor, base: str, pid: int, method: str, versions: list[str],
               args: argparse.Namespace) -> None:
    body = {"id": f"cost-{method.replace('_', '-')}", "kind": "interleaving", "method": method, "traffic": TRAFFIC,
            "arms": [{"name": "A", "ranker": versions[0]}, {"name": "B", "ranker": versions[1]}]}
    response = httpx.post(f"{base}/v1/experiments", json=body, headers={"X-API-Key": KEY}, timeout=30)
    response.raise_for_status()
    interleaved, plain = split_users(response.json())
    check = wait_until_served(base, interleaved[0], lambda r: r["explore"] == f"interleaving:{method}", method)
    assert len({item["team"] for item in check["items"]}) == 2, check
    assert httpx.get(f"{base}/v1/users/{plain[0]}/recommendations", timeout=30).json()["experiment"] is None
    console.rule(f"{method}: {len(interleaved)} of {USERS} users interleaved")
    drain(base)
    closed_loop_cost(base, pid, args.closed_loop, interleaved, plain)
    cost(generator, base, args.rates, args.seconds, args.repeats, interleaved, plain)
    httpx.post(f"{base}/v1/experiments/{body['id']}/stop", headers={"X-API-Key": KEY}, timeout=30).raise_for_status()


def run_policy(generator: concurrent.futures.Executor, base: str, pid: int, policy: str, args: argparse.Namespace) -> None:
    body = {"id": f"cost-{policy.replace('_', '-')}", "kind": "ab", "traffic": 1.0,
            "arms": [{"name": "greedy"}, {"name": "explore", "explore": {"policy": policy}}]}
    response = httpx.post(f"{base}/v1/experiments", json=body, headers={"X-API-Key": KEY}, timeout=30)
    response.raise_for_status()
    exploring, greedy = split_users(response.json(), "explore")
    check = wait_until_served(base, exploring[0], lambda r: str(r["explore"]).startswith(policy), policy)
    assert wait_until_served(base, greedy[0], lambda r: r["explore"] == "greedy", "greedy")["arm"].endswith(":greedy")
    console.rule(f"{policy}: {len(exploring)} of {USERS} users explored ({check['explore']})")
    drain(base)
    closed_loop_cost(base, pid, args.closed_loop, exploring, greedy, label=policy)
    cost(generator, base, args.rates, args.seconds, args.repeats, exploring, greedy, label=policy)
    httpx.post(f"{base}/v1/experiments/{body['id']}/stop", headers={"X-API-Key": KEY}, timeout=30).raise_for_status()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="*", default=["team_draft", "balanced", "probabilistic"])
    parser.add_argument("--explore", nargs="*", default=[], help="explore policies, each in an A/B experiment against greedy")
    parser.add_argument("--rates", type=int, nargs="+", default=[200])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--closed-loop", type=int, default=1000, help="requests of the closed-loop comparison")
    add_cpu_arguments(parser)
    args = parser.parse_args()
    generator, server_cpus = load_generator(args)
    with tempfile.TemporaryDirectory() as tmp, generator:
        work = Path(tmp)
        pin(set(args.client_cpus) or None)
        redis_server = EmbeddedRedis(work / "redis").start()
        api = None
        try:
            for name in ("v1", "v2"):
                (work / name).mkdir()
            versions = [train_and_publish(work / "registry", work / name) for name in ("v1", "v2")]
            publish_recall_model(work / "registry")
            env = {"RECSYS_STATE_DIR": str(work / "state"), "RECSYS_REDIS__URL": redis_server.url,
                   "RECSYS_REGISTRY_DIR": str(work / "registry"), "RECSYS_API__API_KEYS": json.dumps([KEY]),
                   "RECSYS_API__RECALL_CANDIDATES": "200", "RECSYS_API__INFERENCE_THREADS": "1",
                   "RECSYS_API__MODEL_POLL_INTERVAL_S": "0.5", "TF_CPP_MIN_LOG_LEVEL": "2"}
            api, base = start_server("services.api.app:create_app_from_env", env, ROOT, args.workers, server_cpus)
            seed(base)
            for method in args.methods:
                run_method(generator, base, api.pid, method, versions, args)
            for policy in args.explore:
                run_policy(generator, base, api.pid, policy, args)
        finally:
            if api is not None:
                api.terminate()
                api.wait(10)
            redis_server.stop()


if __name__ == "__main__":
    main()
