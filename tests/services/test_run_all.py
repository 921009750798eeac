"""`recsys run --no-serve`: the whole stack on embedded defaults, end to end, on small synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from feature_store.redis_server import free_port
from models.registry import ModelRegistry


def test_recsys_run_brings_up_the_stack_and_serves_a_sample(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}
    state = tmp_path / "state"
    command = [sys.executable, "-c", "from services.cli import app; app()", "run", "--synth-events", "4000",
               "--no-serve", "--port", str(free_port()), "--state-dir", str(state)]  # fmt: skip
    result = subprocess.run(command, env={**env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "recsys run stopped cleanly" in output
    assert "recommendations?k=5" in output  # the sample table (run fails on an empty sample)
    registry = ModelRegistry(state / "registry")
    assert registry.current("recall") is not None and registry.current("ranker") is not None
    assert (state / "batch" / "samples").is_dir()
    assert "stopped API" in output and "stopped speed layer (Flink)" in output
    assert (state / "redis" / "dump.rdb").is_file()  # the embedded Redis saved on a clean shutdown
