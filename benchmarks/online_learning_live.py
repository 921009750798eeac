"""Online learning through the live service: PDGD behind the serving gate against a frozen ranker, after a drift.

Everything is the real stack on one machine: the state directory of `recsys run --no-serve` (synthetic
data with planted preferences, the training DAG's DIN and recall models, batch views in its embedded
Redis), `recsys serve` (one worker) and, for the learning run, `recsys learn online` (PDGD); the
simulator (`pipelines.simulate`, the synthetic data's own population, `--drift-at` its preference
drift) drives the API over HTTP and posts its clicks back. Two runs start from copies of the same
state: **frozen** (no learner process: every user gets the base DIN) and **pdgd** (`learner.share`
of users learn on PDGD's lists, the same share is the `control` slice, the rest are *outside*: they
get `w` once the serving gate promoted it). Steps pick the same users with the same click streams in
both runs (the simulator's seeded steps), so the runs are paired by user.

Reported per run, group (online / control / outside) and phase (before / after the drift): the
expected CTR of the served lists under the simulator's truth (not the drawn clicks), and the truth
oracle's. Per group, the paired difference pdgd − frozen (per user, weighted by impressions, 95%
bootstrap interval over users) before the drift, after it, and after it split at the first step an
outside user was served a promoted `w` (their impressions' ranker version names a revision). The
`control` slice is served the base in both runs: its difference is the noise floor of two live runs
(timing changes the users' live histories). And the learner's revisions where the `served` flag changed.

    .venv/bin/python benchmarks/online_learning_live.py --state-dir /tmp/olive --requests 30000 --drift-at 3000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feature_store.event_log import EventLogReader  # noqa: E402
from feature_store.redis_server import EmbeddedRedis, free_port  # noqa: E402
from feature_store.settings import Settings  # noqa: E402
from models.online_revisions import RevisionStore  # noqa: E402
from pipelines.datasets.synthetic import load_truth  # noqa: E402
from pipelines.datasets.synthetic import truth_path as synthetic_truth_path  # noqa: E402
from pipelines.simulate.population import PopulationParams  # noqa: E402
from pipelines.simulate.runner import RunParams  # noqa: E402
from pipelines.simulate.session import SimulationSpec, simulate  # noqa: E402
from services.learner.serving import learner_arm  # noqa: E402
from serving import wait_ready  # noqa: E402

console = Console(width=160)
KEY = "live-key"
RECSYS = [sys.executable, "-c", "from services.cli import main; main()"]


def prepare(state: Path, events: int, seed: int) -> None:
    """`recsys run --no-serve` on synthetic data without the recall blend, once per state directory."""
    if (state / "registry").is_dir():
        return
    console.print(f"preparing {state}: recsys run --no-serve --synth-events {events} --synth-seed {seed}")
    # Without the recall blend: its own order would win validation and be served instead of the
    # ranker, and the learner serves nobody then (docs/online_learning.md).
    env = {**os.environ, "RECSYS_STATE_DIR": str(state), "TF_CPP_MIN_LOG_LEVEL": "2", "RECSYS_TRAINING__BLEND": "false"}
    env.pop("RECSYS_REDIS__URL", None)
    subprocess.run([*RECSYS, "run", "--no-serve", "--synth-events", str(events), "--synth-seed", str(seed)],
                   env=env, cwd=ROOT, check=True)


def service_env(state: Path, redis_url: str, args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ, "RECSYS_STATE_DIR": str(state), "RECSYS_REDIS__URL": redis_url, "TF_CPP_MIN_LOG_LEVEL": "2",
        "RECSYS_API__API_KEYS": json.dumps([KEY]), "RECSYS_EVENT_LOG__ROLL_MAX_AGE_S": "1",
        "RECSYS_ATTRIBUTION__WINDOW_S": str(args.window_s), "RECSYS_LEARNER__SHARE": str(args.share),
        "RECSYS_LEARNER__ALGORITHM": "pdgd", "RECSYS_LEARNER__GATE_SHARE": str(args.gate_share),
        "RECSYS_LEARNER__GATE_WINDOW": str(args.gate_window), "RECSYS_LEARNER__GATE_LEVEL": str(args.gate_level),
        "RECSYS_LEARNER__GATE_MIN_COMPARISONS": str(args.gate_min_comparisons),
    }


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


def one_run(method: str, prepared: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Copy the prepared state, serve it (and learn, for `pdgd`), simulate, collect."""
    state = work / method
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(prepared, state, ignore=shutil.ignore_patterns("*.pid", "logs"))
    server = EmbeddedRedis(state / "redis").start()
    api = learner = None
    try:
        env = service_env(state, server.url, args)
        port = free_port()
        logs = state / "logs"
        logs.mkdir(exist_ok=True)
        api = subprocess.Popen([*RECSYS, "serve", "--port", str(port), "--log-level", "warning"], env=env, cwd=ROOT,
                               stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, api)
        if method == "pdgd":
            learner = subprocess.Popen([*RECSYS, "learn", "online", "--interval-s", "0.5", "--report-every-s", "30"],
                                       env=env, cwd=ROOT, stdout=(logs / "learner.log").open("wb"), stderr=subprocess.STDOUT)
        truth = load_truth(synthetic_truth_path(Settings(state_dir=state)))
        drift_at = None if args.drift_at >= args.requests else args.drift_at
        spec = SimulationSpec(PopulationParams.of_synthetic(truth.params, drift_at=drift_at),
                              RunParams(requests=args.requests, seconds=args.seconds, k=10, concurrency=args.concurrency,
                                        put_arrivals=False), load=False)  # fmt: skip
        started = time.monotonic()
        report = simulate(base, spec, state, api_key=KEY)
        console.print(f"{method}: {report.result.summary.requests:,} requests in {time.monotonic() - started:.0f} s, "
                      f"{report.result.summary.errors} errors")
        revisions = RevisionStore(redis.Redis.from_url(server.url), "recsys").history() if method == "pdgd" else []
    finally:
        stop(learner)
        stop(api)
        server.stop()
    rankers = ranker_versions(Settings(state_dir=state).event_log_dir)  # the API's shutdown drained its impressions
    return {"served": report.result.served, "revisions": revisions, "rankers": rankers}


def ranker_versions(log_dir: Path) -> dict[str, str]:
    """request id -> the ranker version its impressions name (`<base>@<revision>` when a promoted w served it)."""
    out: dict[str, str] = {}
    for event in EventLogReader(log_dir).read():
        context = event.context
        if event.type == "impression" and context is not None and context.request_id and context.model_versions:
            out.setdefault(context.request_id, context.model_versions.get("ranker", ""))
    return out


def group_of(user: str, share: float) -> str:
    return learner_arm(user, share) or "outside"


def ctr_table(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for method, run in runs.items():
        sums: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for record in run["served"]:
            key = (group_of(record.user_id, args.share), "after" if record.step >= args.drift_at else "before")
            sums[key][0] += record.expected_clicks
            sums[key][1] += record.oracle_clicks
            sums[key][2] += len(record.items)
        rows[method] = {f"{g}/{p}": {"ctr": e / n, "oracle_ctr": o / n, "impressions": n} for (g, p), (e, o, n) in sums.items()}
    return rows


def paired(runs: dict[str, dict[str, Any]], args: argparse.Namespace, group: str, first: int, last: int) -> dict[str, float]:
    """pdgd − frozen expected CTR of `group`'s users over steps [first, last), per user then weighted
    by their impressions, with a 95% bootstrap interval over users."""
    per_user: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for method, run in runs.items():
        for record in run["served"]:
            if first <= record.step < last and group_of(record.user_id, args.share) == group:
                per_user[record.user_id][method][0] += record.expected_clicks
                per_user[record.user_id][method][1] += len(record.items)
    users = [u for u, m in per_user.items() if m["frozen"][1] and m["pdgd"][1]]
    diff = np.array([per_user[u]["pdgd"][0] / per_user[u]["pdgd"][1] - per_user[u]["frozen"][0] / per_user[u]["frozen"][1]
                     for u in users])
    weight = np.array([per_user[u]["frozen"][1] for u in users])
    rng = np.random.default_rng(0)
    boot = [np.average(diff[s], weights=weight[s]) for s in (rng.integers(len(users), size=len(users)) for _ in range(2000))]
    return {"users": len(users), "diff": float(np.average(diff, weights=weight)),
            "low": float(np.percentile(boot, 2.5)), "high": float(np.percentile(boot, 97.5))}


def served_by_w(run: dict[str, Any], args: argparse.Namespace) -> list[int]:
    """The steps of outside users served by a promoted `w` (their ranker version names a revision)."""
    return [r.step for r in run["served"]
            if group_of(r.user_id, args.share) == "outside" and "@" in run["rankers"].get(r.request_id, "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, required=True, help="prepared by `recsys run --no-serve` (done here if empty)")
    parser.add_argument("--synth-events", type=int, default=100_000)
    parser.add_argument("--synth-seed", type=int, default=0, help="the synthetic population (a new --state-dir per seed)")
    parser.add_argument("--work", type=Path, default=None, help="where the runs' copies go (default: <state-dir>-runs)")
    parser.add_argument("--requests", type=int, default=12_000)
    parser.add_argument("--seconds", type=float, default=1800.0)
    parser.add_argument("--drift-at", type=int, default=3_000, help="at or past --requests: no drift")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--gate-share", type=float, default=0.3)
    parser.add_argument("--gate-window", type=int, default=250)
    parser.add_argument("--gate-level", type=float, default=0.05)
    parser.add_argument("--gate-min-comparisons", type=int, default=50)
    parser.add_argument("--window-s", type=float, default=5.0, help="attribution window (the learner waits it out)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    prepare(args.state_dir, args.synth_events, args.synth_seed)
    work = args.work or args.state_dir.with_name(args.state_dir.name + "-runs")
    runs = {method: one_run(method, args.state_dir, work, args) for method in ("frozen", "pdgd")}

    ctr = ctr_table(runs, args)
    table = Table(title="expected CTR under the truth (oracle CTR), by group and phase")
    table.add_column("group / phase")
    for method in runs:
        table.add_column(method, justify="right")
    for key in sorted({k for rows in ctr.values() for k in rows}):
        table.add_row(key, *(f"{ctr[m][key]['ctr']:.4f} ({ctr[m][key]['oracle_ctr']:.4f}), {ctr[m][key]['impressions']:,.0f} imp."
                             if key in ctr[m] else "" for m in runs))
    console.print(table)
    by_w = served_by_w(runs["pdgd"], args)
    promoted_at = min(by_w, default=args.requests)
    outside_after = [r for r in runs["pdgd"]["served"] if r.step >= promoted_at and group_of(r.user_id, args.share) == "outside"]
    periods = {"before the drift": (0, args.drift_at), "after the drift": (args.drift_at, args.requests),
               "after the drift, before w was first served": (args.drift_at, max(args.drift_at, promoted_at)),
               "from w's first serving on": (promoted_at, args.requests)}
    differences = {f"{group}, {period}": paired(runs, args, group, *bounds)
                   for period, bounds in periods.items() for group in ("outside", "online", "control")
                   if bounds[1] > bounds[0]}
    for name, result in differences.items():
        if result["users"]:
            console.print(f"{name} ({result['users']} users, paired): pdgd − frozen = "
                          f"{result['diff']:+.4f} [{result['low']:+.4f}, {result['high']:+.4f}]")
    revisions = list(reversed(runs["pdgd"]["revisions"]))
    changes = [(r.created, r.served, r.reason) for before, r in zip([None, *revisions], revisions)
               if r.served != (before.served if before is not None else False)]
    console.print(f"revisions {len(revisions)}; served flag changes {len(changes)}: "
                  + "; ".join(f"{created[11:19]} served={served}: {reason}" for created, served, reason in changes[:6]))
    share = len(by_w) / len(outside_after) if outside_after else 0.0
    console.print(f"outside users' requests served by a promoted w: first at step {promoted_at:,} (drift at "
                  f"{args.drift_at:,}); {share:.1%} of their requests from then on")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "ctr": ctr,
                                        "differences": differences, "served_changes": changes,
                                        "first_served_step": promoted_at, "served_share_from_then": share}, indent=2))


if __name__ == "__main__":
    main()
