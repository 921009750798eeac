"""`recsys run` end to end on small synthetic data: the stack comes up and serves, and the feedback
loop closes on it. `recsys simulate --synthetic` clicks on the served lists by the synthetic data's
own planted preferences; the stream job attributes the clicks in Redis; Spark's attribution over
the same log recomputes them, and `check-attribution` finds the two equal. SIGTERM then stops the
stack cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from feature_store.attribution import Dimension
from feature_store.online_store import RedisOnlineStore
from feature_store.redis_server import free_port
from feature_store.settings import Settings
from models.registry import ModelRegistry
from pipelines.training.dag import history

RECSYS = [sys.executable, "-c", "from services.cli import app; app()"]


def _wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def _speed_totals(settings: Settings) -> Counter[str]:
    """The stream job's attributed counts in Redis, per measure, over every bucket."""
    store = RedisOnlineStore.from_settings(settings).attribution()
    try:
        totals: Counter[str] = Counter()
        for row in store.scan_counts(Dimension.ITEM):
            totals[row.measure] += row.value
        return totals
    finally:
        store.close()


def _batch_totals(state: Path, since_ms: int) -> Counter[str]:
    """Spark's `attribution_counts/` per measure, item dimension, over buckets from `since_ms`."""
    table = ds.dataset(state / "batch" / "attribution_counts", format="parquet").to_table(
        filter=(pc.field("dimension") == Dimension.ITEM) & (pc.field("bucket_ms") >= since_ms)
    )
    totals: Counter[str] = Counter()
    for measure, value in zip(table["measure"].to_pylist(), table["value"].to_pylist()):
        totals[measure] += value
    return totals


@pytest.mark.timeout(1500)
def test_recsys_run_serves_and_closes_the_feedback_loop(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}
    env["COLUMNS"] = "200"
    state, port, log = tmp_path / "state", free_port(), tmp_path / "run.log"
    with log.open("w") as out:
        run = subprocess.Popen([*RECSYS, "run", "--synth-events", "4000", "--port", str(port), "--state-dir", str(state)],
                               env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_for(lambda: run.poll() is not None or "serving: press Ctrl-C" in log.read_text(), 1200, "the stack")
        output = log.read_text()
        assert run.poll() is None, output[-5000:]
        assert "recommendations?k=5" in output  # the sample table (run fails on an empty sample)
        redis_url = re.search(r"redis://[^\s│]+", output).group(0)  # type: ignore[union-attr]  # the summary's row
        settings = Settings(state_dir=state, redis={"url": redis_url})
        # One path trains models: recsys run's training DAG run is recorded, and what is current is
        # exactly what its gate blessed (on data this small the gate may bless nothing).
        (training,) = history(settings)
        assert training.status == "succeeded" and training.trigger == "recsys run", training.to_dict()
        registry = ModelRegistry(state / "registry")
        for role, blessed in training.step("gate").outputs["blessed"].items():
            current = registry.current(role)
            candidate = training.outputs()[f"{role}_version"]
            assert (current.version if current else None) == (candidate if blessed else None), (role, blessed)

        started_ms = int(time.time() * 1000)
        summary_file = tmp_path / "simulation.json"
        simulate = [*RECSYS, "simulate", "--api-url", f"http://127.0.0.1:{port}", "--synthetic", "--requests", "150",
                    "--k", "5", "--out", str(summary_file), "--state-dir", str(state)]  # fmt: skip
        result = subprocess.run(simulate, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        summary = json.loads(summary_file.read_text())["summary"]
        assert summary["errors"] == 0 and summary["impressions"] > 0
        assert summary["clicks"] > 0, f"the synthetic users clicked nothing the stack served: {summary}"

        # The stream job: every simulated click attributed (the sample request's impressions come on top).
        _wait_for(lambda: _speed_totals(settings)["click"] == summary["clicks"], 300, "the stream job's attribution")
        speed = _speed_totals(settings)
        assert summary["impressions"] <= speed["impression"] <= summary["impressions"] + 5

        cli_env = {**env, "RECSYS_REDIS__URL": redis_url}
        for job in ("compact", "attribution"):
            done = subprocess.run([*RECSYS, "batch", job, "--state-dir", str(state)], env=cli_env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        hour_ms = 3_600_000
        batch = _batch_totals(state, started_ms - started_ms % hour_ms - hour_ms)
        assert (batch["impression"], batch["click"]) == (speed["impression"], speed["click"])
        check = subprocess.run([*RECSYS, "batch", "check-attribution", "--open-buckets", "--state-dir", str(state)],
                               env=cli_env, capture_output=True, text=True, timeout=600)  # fmt: skip
        assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
        compared = re.search(r"compared ([\d,]+) counts", check.stdout)
        assert compared is not None and int(compared.group(1).replace(",", "")) > 0, check.stdout
        assert " 0 differences" in check.stdout
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        run.wait(timeout=180)
    output = log.read_text()
    assert run.returncode == 0, output[-5000:]
    assert "recsys run stopped cleanly" in output
    assert "stopped API" in output and "stopped speed layer (Flink)" in output
    assert (state / "redis" / "dump.rdb").is_file()  # the embedded Redis saved on a clean shutdown


def test_the_synthetic_seed_reaches_the_generator(tmp_path: Path) -> None:
    """`recsys run --synth-seed S` generates population S: the truth file records it, and another
    seed plants other preferences."""
    from pipelines.datasets.synthetic import load_truth, truth_path
    from services.cli.run import _import_data

    planted = {}
    for seed in (0, 7):
        state = tmp_path / f"seed{seed}"
        _import_data(state, None, 500, seed)
        truth = load_truth(truth_path(Settings(state_dir=state)))
        assert truth.params.seed == seed and truth.params.events == 500
        planted[seed] = truth
    assert not np.array_equal(planted[0].user_factors, planted[7].user_factors)
