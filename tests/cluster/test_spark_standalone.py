"""The batch chain on a Spark standalone cluster (a master and one worker on loopback, started from
pyspark's own `spark-class`) gives the same outputs as the `local[2]` run on the same log.

The project's code reaches the executors as spark-submit's `--py-files` does: a zip in
`spark.files` (fetched by every executor from the driver) named in `spark.submit.pyFiles` (put on
the Python workers' path ahead of the installed packages).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

import pyspark
from feature_store.catalog import Catalog
from feature_store.event_log import LocalEventLog
from feature_store.redis_server import EmbeddedRedis, free_port
from feature_store.schemas import Event, EventType, Item
from feature_store.settings import EventLogSettings

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def spark_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`spark://127.0.0.1:PORT` of a standalone master with one worker (1 core, 1.5 GB) registered,
    and the worker's directory (one folder per application and executor)."""
    work = tmp_path_factory.mktemp("spark-standalone")
    env = {**os.environ, "SPARK_HOME": str(SPARK_CLASS.parents[1]), "SPARK_LOCAL_IP": "127.0.0.1",
           "SPARK_LOG_DIR": str(work), "SPARK_WORKER_DIR": str(work / "worker")}
    port, ui = free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    master = subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env,
                              stdout=(work / "master.log").open("wb"), stderr=subprocess.STDOUT)
    worker = subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                               "--cores", "1", "--memory", "1500m", "--webui-port", str(free_port())], env=env,
                              stdout=(work / "worker.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        _wait_for_worker(ui, master, work)
        yield url, work / "worker"
    finally:
        for process in (worker, master):
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_for_worker(ui_port: int, master: subprocess.Popen[bytes], work: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert master.poll() is None, (work / "master.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as reply:
                if json.load(reply).get("aliveworkers", 0) >= 1:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no Spark worker registered in {timeout_s}s: {(work / 'worker.log').read_text()[-3000:]}")


def _code_zip(path: Path) -> Path:
    """The packages the jobs import, zipped as infra/spark/submit.sh zips them for --py-files."""
    with zipfile.ZipFile(path, "w") as archive:
        for package in ("feature_store", "models", "pipelines"):
            for source in (ROOT / package).rglob("*.py"):
                archive.write(source, source.relative_to(ROOT))
    return path


def _events() -> list[Event]:
    kinds = [(EventType.CLICK, None), (EventType.RATING, 4.0), (EventType.RATING, 2.0), (EventType.IMPRESSION, None)]
    return [
        Event(event_id=f"{user}-{n}", user_id=user, item_id=f"i{(n * 3 + u) % 7}", type=kind, value=value,
              ts=T0 + timedelta(minutes=7 * n + u))
        for u, user in enumerate(["u1", "u2", "u3"])
        for n, (kind, value) in enumerate(kinds * 4)
    ]  # fmt: skip


def _run_chain(state: Path, master: str, redis_url: str, extra_conf: dict[str, str]) -> None:
    with LocalEventLog(state / "events", EventLogSettings(fsync=False)) as log:
        log.append(_events())
    Catalog(state / "catalog").upsert_items(Item(item_id=f"i{k}", categories=[f"c{k % 3}"]) for k in range(7))
    env = {**os.environ, "RECSYS_REDIS__URL": redis_url, "RECSYS_REDIS__KEY_PREFIX": state.name,
           "RECSYS_SPARK__MASTER": master, "RECSYS_SPARK__SHUFFLE_PARTITIONS": "2",
           "RECSYS_SPARK__DRIVER_MEMORY": "512m", "RECSYS_SPARK__EXTRA_CONF": json.dumps(extra_conf)}
    done = subprocess.run([str(Path(sys.executable).parent / "recsys"), "batch", "all", "--state-dir", str(state)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _outputs(state: Path) -> dict[str, pd.DataFrame]:
    """Every output of the chain (each directory Spark marked `_SUCCESS`), rows sorted, so
    partitioning and file order do not count."""
    tables = {}
    for success in sorted((state / "batch").rglob("_SUCCESS")):
        frame = pd.read_parquet(success.parent)
        frame = frame.astype({c: str for c in frame.columns if frame[c].dtype in (object, "category")})
        tables[str(success.parent.relative_to(state))] = frame.sort_values(list(frame.columns)).reset_index(drop=True)
    return tables


def test_the_batch_chain_on_a_standalone_cluster_equals_the_local_run(
    spark_master: tuple[str, Path], redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    url, worker_dir = spark_master
    ui_off = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    _run_chain(tmp_path / "local", "local[2]", redis_server.url, ui_off)
    code = str(_code_zip(tmp_path / "recsys.zip"))
    _run_chain(tmp_path / "standalone", url, redis_server.url, {
        **ui_off, "spark.files": code, "spark.submit.pyFiles": code, "spark.executor.memory": "512m",
        "spark.cores.max": "1",
    })
    # The executor ran on the worker and fetched the code from the driver.
    assert list(worker_dir.glob("app-*/*/recsys.zip")), sorted(str(p) for p in worker_dir.rglob("*"))[:20]
    local, standalone = _outputs(tmp_path / "local"), _outputs(tmp_path / "standalone")
    produced = {"batch/events", "batch/sequences", "batch/item_graph", "batch/features/item", "batch/features/user",
                "batch/samples", "batch/attribution_counts"}
    assert produced <= set(local), sorted(local)
    assert set(standalone) == set(local)
    for name, frame in local.items():
        assert len(frame) > 0 or name not in produced, name
        pd.testing.assert_frame_equal(standalone[name], frame, check_dtype=False, obj=name)
