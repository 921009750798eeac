"""Server CPU per request of the served recall blend (issue 20) against today's recall, through the
real API in a closed loop (one request at a time), on `benchmarks/serving.py`'s setup: an
embedded Redis, a DIN (tower (200, 80), sequence length 50) and an Item2vec recall model trained
here, a 1,000-item catalog and 300 users with 50-item live histories.

Three recall versions of the same registry, switched with `/v1/admin/models/reload` between
blocks (the API keeps the replaced version loaded, so a switch back costs no load):
- today: Item2vec neighbour + user-vector channels merged with the store's channels, DIN ranks
  (the peer);
- blend order: the same Item2vec plus the DAG's blend (ItemKNN over last 3 / 1 / all, GRU4Rec,
  Item2vec; `pipelines.training.blend`) with no ranker compared on validation: the blend's order;
- blend → DIN: the same blend, its order choice planted as "DIN won", so DIN ranks its candidates.
Server CPU is every API process's user + system time per request (`serving_impressions.server_cpu_s`)
over alternating blocks; the ratio to today is paired per block.

    .venv/bin/python benchmarks/blend_api.py [--requests 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx
import numpy as np
from rich.progress import track
from scipy import stats

from serving import (  # benchmarks/serving.py: the script's folder is on sys.path
    CATEGORIES, HISTORY, ITEMS, KEY, ROOT, EmbeddedRedis, closed_loop, console, publish_recall_model, seed,
    server_cpu_s, start_server, train_and_publish,
)  # fmt: skip
from feature_store.settings import TrainingSettings
from models.registry import ModelRegistry
from models.retrieval.artifact import RecallArtifact, publish_recall
from models.retrieval.order_choice import RANKER, OrderChoice, choose_order
from pipelines.training.blend import fit_serving_blend, validation_split

KINDS = ("today", "blend order", "blend -> DIN")


def interest_sequences(users: int = 3000, seed_: int = 11) -> list[list[str]]:
    """Histories like the seeded users' (two interest categories each)."""
    rng = np.random.default_rng(seed_)
    out = []
    for _ in range(users):
        interests = rng.choice(CATEGORIES, size=2, replace=False)
        out.append([f"i{int(rng.integers(ITEMS // CATEGORIES)) * CATEGORIES + int(rng.choice(interests))}" for _ in range(HISTORY)])
    return out


def publish_blends(root: Path, today: str, din: str) -> dict[str, str]:
    """Two recall versions with today's Item2vec and one blend: order chosen without a ranker
    (the blend's), and planted as won by `din`."""
    registry = ModelRegistry(root)
    source = registry.get("recall", today)
    artifact = RecallArtifact.load(source.path, source.manifest["models"])
    prefixes, histories, targets = validation_split(interest_sequences())
    artifact.blend = fit_serving_blend(prefixes, histories, targets, artifact.embeddings, TrainingSettings(blend_gru_epochs=2))
    console.print(f"blend: {artifact.blend.summary()}")
    versions = {}
    measured = choose_order(artifact.blend, histories[:500], targets[:500], None)
    for kind, order in (("blend order", measured), ("blend -> DIN", OrderChoice(RANKER, measured.blend_ndcg10, 1.0, 0, 200, din))):
        artifact.order = order
        versions[kind] = publish_recall(registry, artifact, {"params": {}, "data_window": {}, "metrics": {}}, set_current=False)
    return versions


def switch(base: str, root: Path, version: str) -> None:
    ModelRegistry(root).set_current("recall", version)
    httpx.post(f"{base}/v1/admin/models/reload", headers={"X-API-Key": KEY}, timeout=120).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100, help="requests per block")
    parser.add_argument("--repeats", type=int, default=5, help="blocks per kind, alternated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = work / "registry"
        redis = EmbeddedRedis(work / "redis").start()
        api = None
        try:
            din = train_and_publish(root, work)
            versions = {"today": publish_recall_model(root)}
            versions |= publish_blends(root, versions["today"], din)
            env = {"RECSYS_STATE_DIR": str(work / "state"), "RECSYS_REDIS__URL": redis.url, "RECSYS_REGISTRY_DIR": str(root),
                   "RECSYS_API__API_KEYS": json.dumps([KEY]), "RECSYS_API__RECALL_CANDIDATES": "200",
                   "RECSYS_API__INFERENCE_THREADS": "1", "RECSYS_API__MODEL_POLL_INTERVAL_S": "3600", "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
            api, base = start_server("services.api.app:create_app_from_env", env, ROOT, 1, None)
            seed(base)
            expected = {"today": din, "blend order": "blend-order", "blend -> DIN": din}
            for kind in KINDS:  # load each version once and check what serves
                switch(base, root, versions[kind])
                body = httpx.get(f"{base}/v1/users/user0/recommendations", params={"k": 10}, timeout=30).json()
                assert body["model_versions"]["ranker"] == expected[kind], (kind, body["model_versions"])
                assert ("blend" in body["items"][0]["sources"]) == (kind != "today"), (kind, body["items"][0])
                closed_loop(base, 20)
            cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for _ in track(range(args.repeats), description="alternating blocks"):
                for kind in KINDS:
                    switch(base, root, versions[kind])
                    before = server_cpu_s(api.pid)
                    closed_loop(base, args.requests)
                    cpu[kind].append((server_cpu_s(api.pid) - before) / args.requests * 1000)
        finally:
            if api is not None:
                api.terminate()
                api.wait(10)
            redis.stop()
    today = np.array(cpu["today"])
    for kind in KINDS:
        values = np.array(cpu[kind])
        diff = values - today
        n = len(diff)
        half = float(stats.t.ppf(0.975, n - 1)) * diff.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        console.print(f"{kind:>14}: server CPU {values.mean():.2f} ms/request; − today {diff.mean():+.2f} ± {half:.2f} ms "
                      f"(ratio {values.mean() / today.mean():.2f}; {args.repeats} blocks of {args.requests})")


if __name__ == "__main__":
    main()
