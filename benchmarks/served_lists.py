"""Served top-10 lists on MovieLens 100k through the real API (issue 20): coverage, overlap,
reasons per list and the held-out item's HR@10 / NDCG@10, with the blend's reason selection on
(the training DAG's defaults) and off (the same blend republished with `reason_penalty` 0).

1. MovieLens is imported into a scratch state dir and split by the field's protocol
   (`models.evaluation.protocol.protocol_split`); the benchmark's state dir gets the catalog and
   every event except each user's test item (its last interaction), so the training data is the
   protocol's training + validation items.
2. The training DAG runs as `make run` runs it (`pipelines.training.dag.fast` over the settings'
   defaults: batch chain, ranker, embeddings + the blend with its reason selection, gate,
   promotion), on an embedded Redis kept in the state dir.
3. The API starts as `recsys serve` starts it (`benchmarks/serving.py`'s launcher) on the published
   models. Every user's top 10 is one GET `/v1/users/{user}/recommendations?k=10` with
   `log_impressions=false` (no served list feeds a later one); the history the service knows is
   what the batch layer published from the training events (`user.history`: positives only).
4. The same recall version republished with the reason selection off (`reason_penalty` 0, order
   choice unchanged), switched by `/v1/admin/models/reload` (`benchmarks/blend_api.py`), and the
   same 943 requests again.

Figures per pass: distinct items (also over 236 users drawn at random, the issue's count of
"today": mean of 100 seeded draws), catalog coverage and mean pairwise overlap
(`benchmarks/quality.py`'s `diversity`), distinct reasons per list (the response's `reason`
strings) over users with >= 10 training items, HR@10 and NDCG@10 of the test item in the served
list (`models.evaluation.metrics.rank_metrics`) with 95% bootstrap intervals over users, and the
paired NDCG@10 ratio of selection on / off (`quality.ratio_ci`). Then, outside the API, the plain
blend of the same version over the history the service reads and over the protocol's history,
to show where the served figures part from the offline ones (`offline_passes`).

    nice -n 10 .venv/bin/python benchmarks/served_lists.py --movielens ../shared/data/ml-100k

`--state-dir DIR` keeps the trained state (event log, registry, Redis dump); a second run with
`--reuse` skips import and training and serves from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.progress import track

from blend_api import switch  # benchmarks/blend_api.py: the script's folder is on sys.path
from quality import diversity, ratio_ci
from serving import KEY, ROOT, EmbeddedRedis, console, start_server
from feature_store.catalog import Catalog
from feature_store.definitions import FEATURES, POSITIVE
from feature_store.event_log import LocalEventLog
from feature_store.settings import Settings
from models.evaluation.end_to_end import bootstrap_ci
from models.evaluation.metrics import rank_metrics
from models.evaluation.protocol import ProtocolSplit, implicit_interactions, protocol_split
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact, publish_recall
from pipelines.datasets.movielens import import_movielens
from services.cli.evaluate import read_log

MIN_HISTORY = 10  # the issue's "users with >= 10 history items"
ISSUE_USERS = 236  # the issue's "today" counted the distinct items of 236 users' lists


def held_out_state(movielens: Path, state: Path, write: bool) -> tuple[ProtocolSplit, dict[str, list[str]]]:
    """The protocol split of `movielens` and each user's training positives (the events the batch
    layer's `user.history` keeps: `POSITIVE`, oldest first); with `write`, `state` gets its catalog
    and every event but each user's test item (the last interaction)."""
    with tempfile.TemporaryDirectory(prefix="recsys-served-import-") as scratch:
        staged = Settings(state_dir=Path(scratch))
        import_movielens(movielens, staged)
        events, _ = read_log(staged)
        split = protocol_split(implicit_interactions(events))
        test = set(split.test.test.items())
        positives: dict[str, list[str]] = {}
        for event in sorted(events, key=lambda e: e.ts):
            if (event.user_id, event.item_id) not in test and POSITIVE.matches(event.type, event.value):
                positives.setdefault(event.user_id, []).append(event.item_id)
        if write:
            settings = Settings(state_dir=state)
            source, target = Catalog.from_settings(staged), Catalog.from_settings(settings)
            target.upsert_items(source.items())
            target.upsert_users(source.users())
            kept = sorted((e for e in events if (e.user_id, e.item_id) not in test), key=lambda e: e.ts)
            with LocalEventLog(settings.event_log_dir, settings.event_log) as log:
                log.append(kept)
            console.print(f"state: {len(kept):,} training events of {len(events):,} ({len(test)} test items held out)")
    return split, positives


def train(settings: Settings) -> None:
    """The training DAG with `make run`'s settings; each step's seconds as it ends."""
    from pipelines.training.dag import fast, run_training

    def progress(name: str, event: str, step: Any) -> None:
        if event == "end":
            console.print(f"  DAG {name:<12} {step.status:<10} {step.duration_s:8.1f} s")

    record = run_training(fast(settings), trigger="benchmark", progress=progress)
    total = sum(step.duration_s or 0.0 for step in record.steps)
    console.print(f"DAG run {record.run_id}: {total:.1f} s; blessed {record.step('gate').outputs['blessed']}")


def served_lists(base: str, users: list[str]) -> list[dict[str, Any]]:
    """Each user's served top 10 (items, reasons, sources, versions), one GET per user, once the
    API has loaded the catalog (the reasons' titles)."""
    while httpx.get(f"{base}/readyz", timeout=10).json().get("catalog") in ("idle", "syncing"):
        time.sleep(0.5)
    bodies = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for user in track(users, description="GET recommendations"):
            response = client.get(f"/v1/users/{user}/recommendations", params={"k": 10, "log_impressions": "false"})
            response.raise_for_status()
            bodies.append(response.json())
    return bodies


def list_figures(lists: list[list[str]], split: ProtocolSplit, users: list[str], rounds: int, seed: int) -> dict[str, Any]:
    """Coverage, overlap and the test item's HR@10 / NDCG@10 (95% bootstrap intervals) of top-10 lists."""
    ranks = np.array([items.index(split.test.test[u]) + 1.0 if split.test.test[u] in items else np.inf
                      for u, items in zip(users, lists)])  # fmt: skip
    metrics = rank_metrics(ranks, (10,))
    out: dict[str, Any] = diversity(lists, len(split.items))
    out |= {"lists": lists, "ndcg10": metrics["NDCG@10"], "hr10": metrics["HR@10"]}
    rng = np.random.default_rng(seed)
    draws = [rng.choice(len(lists), ISSUE_USERS, replace=False) for _ in range(100)]
    out["distinct_at_issue_users"] = float(np.mean([diversity([lists[i] for i in d], len(split.items))["distinct"] for d in draws]))
    for name in ("ndcg10", "hr10"):
        out[f"{name}_ci"] = bootstrap_ci(out[name], rounds, seed=seed)
    return out


def figures(bodies: list[dict[str, Any]], split: ProtocolSplit, users: list[str], rounds: int, seed: int) -> dict[str, Any]:
    """`list_figures` of one pass of served lists, with the responses' reasons per list (users with
    >= 10 training items), rankers, recall versions and sources."""
    lists = [[item["item_id"] for item in body["items"]] for body in bodies]
    reasons = [len({item["reason"] for item in body["items"]})
               for u, body in zip(users, bodies) if len(split.test.train[u]) >= MIN_HISTORY]  # fmt: skip
    out = list_figures(lists, split, users, rounds, seed)
    rankers = [b["model_versions"].get("ranker", "") for b in bodies]
    out |= {"reasons_per_list": float(np.mean(reasons)), "reason_users": len(reasons),
            "degraded": sum(bool(b["degraded"]) for b in bodies),
            "short_lists": sum(len(items) < 10 for items in lists),
            "training_items_shown": float(np.mean([item in set(split.test.train[u]) for u, items in zip(users, lists)
                                                   for item in items])),
            "blended_share": float(np.mean([("blend" in item["sources"]) for b in bodies for item in b["items"]])),
            "rankers": {r: rankers.count(r) for r in sorted(set(rankers))},
            "recall": sorted({b["model_versions"].get("recall", "") for b in bodies})}  # fmt: skip
    return out


def offline_lists(registry: ModelRegistry, version: str, histories: list[list[str]], masked: list[set[str]]) -> list[list[str]]:
    """The blend of recall `version` in its plain order (no reason selection), outside the API:
    each history's top 10 (oldest first), the `masked` items left out."""
    found = RecallArtifact.load_blend(registry.get("recall", version).path)
    assert found is not None
    blend = found[0]
    return [[c.item_id for c in blend.recall(history, 10, mask)]
            for history, mask in track(list(zip(histories, masked)), description="offline blend")]  # fmt: skip


def offline_passes(registry: ModelRegistry, version: str, split: ProtocolSplit, positives: dict[str, list[str]],
                   users: list[str], rounds: int, seed: int) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Where the served figures part from the protocol's: the plain blend offline over the history
    the service reads (its last `recent_items` positives) with every training interaction masked,
    as the seen filter masks them (`user.seen`), and over the protocol's history (every training
    interaction)."""
    recent = FEATURES.get("user", "recent_items").cap
    masked = [set(split.test.train[u]) for u in users]
    histories = {"offline plain blend, served history": ([positives.get(u, [])[-recent:] for u in users], masked),
                 "offline plain blend, protocol history": ([split.test.train[u] for u in users], masked)}
    return {name: list_figures(offline_lists(registry, version, h, m), split, users, rounds, seed)
            for name, (h, m) in histories.items()}  # fmt: skip


def without_selection(registry: ModelRegistry) -> str:
    """The current recall version republished with the blend's reason selection off."""
    current = registry.current("recall")
    assert current is not None
    artifact = RecallArtifact.load(current.path, current.manifest["models"])
    found = RecallArtifact.load_blend(current.path)
    assert found is not None, f"recall version {current.version} has no blend"
    blend, artifact.order = found
    artifact.blend = dataclasses.replace(blend, reason_penalty=0.0)
    manifest = {key: current.manifest.get(key, {}) for key in ("params", "data_window", "metrics")}
    return publish_recall(registry, artifact, manifest, set_current=False)


def _row(name: str, f: dict[str, Any]) -> None:
    reasons = f"{f['reasons_per_list']:>8.2f}" if "reasons_per_list" in f else f"{'':>8}"
    console.print(f"{name:<58} {int(f['distinct']):>6} {f['distinct_at_issue_users']:>8.1f} {f['coverage']:>9.3f} {f['overlap']:>8.3f} {reasons} "
                  f"{f['hr10'].mean():>8.4f} [{f['hr10_ci'][0]:.4f}, {f['hr10_ci'][1]:.4f}] "
                  f"{f['ndcg10'].mean():>8.4f} [{f['ndcg10_ci'][0]:.4f}, {f['ndcg10_ci'][1]:.4f}]")  # fmt: skip


def report(passes: dict[str, dict[str, Any]], offline: dict[str, dict[str, Any]], rounds: int, seed: int) -> None:
    console.print(f"\n{'lists':<58} {'items':>6} {'in 236':>8} {'coverage':>9} {'overlap':>8} {'reasons':>8} "
                  f"{'HR@10 [95% CI]':>24} {'NDCG@10 [95% CI]':>24}")  # fmt: skip
    for name, f in passes.items():
        _row(f"served, {name}", f)
        console.print(f"  rankers {f['rankers']}, recall {f['recall']}, blended items {f['blended_share']:.1%}, "
                      f"degraded {f['degraded']}, short lists {f['short_lists']}, reasons over {f['reason_users']} users, "
                      f"shown items from the user's training history {f['training_items_shown']:.1%}")  # fmt: skip
    for name, f in offline.items():
        _row(name, f)
    on, off = passes["reason selection on"], passes["reason selection off"]
    ratio = ratio_ci(on["ndcg10"], off["ndcg10"], rounds, seed)
    console.print(f"served NDCG@10 selection on / off: {ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}] (paired bootstrap over users)")
    same = np.mean([a == b for a, b in zip(off["lists"], offline["offline plain blend, served history"]["lists"])])
    console.print(f"served lists (selection off) equal to the offline plain blend over the served history: {same:.1%} of users")
    protocol = offline["offline plain blend, protocol history"]
    ratio = ratio_ci(off["ndcg10"], protocol["ndcg10"], rounds, seed)
    console.print(f"served (selection off) / offline over the protocol history, NDCG@10: {ratio[0]:.3f} "
                  f"[{ratio[1]:.3f}, {ratio[2]:.3f}]")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, required=True, help="MovieLens 100k directory (read in place)")
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the trained state here (default: a temp dir)")
    parser.add_argument("--reuse", action="store_true", help="serve from --state-dir's earlier run (no import, no DAG)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if args.reuse and args.state_dir is None:
        parser.error("--reuse needs --state-dir")
    with tempfile.TemporaryDirectory(prefix="recsys-served-") as scratch:
        state = (args.state_dir or Path(scratch)).resolve()
        split, positives = held_out_state(args.movielens, state, write=not args.reuse)
        users = sorted(split.test.test)
        redis = EmbeddedRedis(state / "redis").start()
        api = None
        try:
            base_settings = Settings(state_dir=state)
            settings = base_settings.model_copy(update={"redis": base_settings.redis.model_copy(update={"url": redis.url})})
            if not args.reuse:
                train(settings)
            env = {"RECSYS_STATE_DIR": str(state), "RECSYS_REDIS__URL": redis.url, "RECSYS_API__API_KEYS": json.dumps([KEY]),
                   "RECSYS_API__MODEL_POLL_INTERVAL_S": "3600", "TF_CPP_MIN_LOG_LEVEL": "2",
                   # a shared 2-core machine: a slow answer must not turn into the degraded fallback list
                   "RECSYS_API__RECOMMEND_DEADLINE_S": "30"}  # fmt: skip
            api, base = start_server("services.api.app:create_app_from_env", env, ROOT, 1, None)
            registry = ModelRegistry(settings.model_registry_dir)
            selected = registry.current("recall")
            assert selected is not None, "the DAG published no current recall version"
            versions = {"reason selection on": selected.version, "reason selection off": without_selection(registry)}
            passes = {}
            for name, version in versions.items():
                switch(base, registry.root, version)
                passes[name] = figures(served_lists(base, users), split, users, args.bootstrap, args.seed)
            switch(base, registry.root, selected.version)
            offline = offline_passes(registry, versions["reason selection off"], split, positives, users, args.bootstrap, args.seed)
        finally:
            if api is not None:
                api.terminate()
                api.wait(30)
            redis.stop()
    report(passes, offline, args.bootstrap, args.seed)
    if args.output:
        args.output.write_text(json.dumps(passes | offline, indent=2, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


if __name__ == "__main__":
    main()
