"""`recsys` errors are one unwrapped line whatever the terminal width or path length (scripts grep them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from feature_store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def recsys(*args: str, columns: int = 40, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, on a narrow terminal as far as rich and typer can tell."""
    env = {**os.environ, "COLUMNS": str(columns), "TERMINAL_WIDTH": str(columns), **(env or {})}
    command = [sys.executable, "-c", "from services.cli import app; app()", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def long_path(base: Path) -> Path:
    path = base.joinpath(*(["a-rather-long-directory-name"] * 8), "chk-7")
    path.mkdir(parents=True)
    return path


def test_a_command_error_naming_a_long_path_is_one_line(settings: Settings, tmp_path: Path) -> None:
    checkpoint = long_path(tmp_path)
    result = recsys("stream", "run", "--state-dir", str(settings.state_dir), "--from-checkpoint", str(checkpoint))
    assert result.returncode == 2
    assert f"error: {checkpoint} is not a completed checkpoint (no _metadata in it)\n" in result.stderr


def test_a_usage_error_is_one_line() -> None:
    option = "--" + "-".join(["a-rather-long-option-name"] * 6)
    result = recsys("serve", option)
    assert result.returncode == 2
    assert f"Error: No such option: {option}\n" in result.stderr


@pytest.mark.parametrize(("name", "value", "message"), [
    ("RECSYS_EXPLORE__POLICY", "bogus", "invalid settings: explore.policy: Input should be 'greedy', "),
    ("RECSYS_API__API_KEYS", "notjson", 'invalid settings: error parsing value for field "api" from source "EnvSettingsSource": '),
    ("RECSYS_TRAINING__SCHEDULE", "0 3 * *", "invalid settings: training.schedule: Value error, cron '0 3 * *': 5 fields expected"),
    # Caught at load, not at the embeddings step after the Spark jobs, nor once a step's thread started:
    ("RECSYS_TRAINING__EMBEDDING_MODELS", '["item2vec", "deepwalks"]',
     "invalid settings: training.embedding_models.1: Input should be 'item2vec', 'deepwalk' or 'node2vec'"),
    ("RECSYS_TRAINING__STEP_TIMEOUT_S", "1e10", "invalid settings: training.step_timeout_s: Input should be less than or equal to 2592000"),
])  # fmt: skip
def test_a_settings_error_is_one_line(tmp_path: Path, name: str, value: str, message: str) -> None:
    result = recsys("models", "list", "--state-dir", str(tmp_path), env={name: value})
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1, result.stderr


def test_a_misspelled_top_level_variable_is_warned_about(tmp_path: Path) -> None:
    result = recsys("models", "list", "--state-dir", str(tmp_path), env={"RECSYS_SPARK_MASTER": "spark://x:7077"})
    assert result.returncode == 0, result.stderr
    assert "warning: RECSYS_SPARK_MASTER is not a setting and is ignored" in result.stderr


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "recsys.yaml"
    config.write_text("spark:\n  master: [unclosed\n")
    result = recsys("models", "list", "--state-dir", str(tmp_path), env={"RECSYS_CONFIG": str(config)})
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: invalid settings in {config}: while parsing a flow sequence")


def test_an_error_with_markup_like_text_is_printed_verbatim(settings: Settings, tmp_path: Path) -> None:
    checkpoint = tmp_path / "chk-[red]7"
    checkpoint.mkdir()
    result = recsys("stream", "run", "--state-dir", str(settings.state_dir), "--from-checkpoint", str(checkpoint))
    assert result.returncode == 2
    assert f"error: {checkpoint} is not a completed checkpoint" in result.stderr


def test_a_missing_cpu_or_gpu_extra_is_named_not_a_traceback(tmp_path: Path) -> None:
    """TensorFlow made unimportable (as in an install without the cpu/gpu extra): the command says
    which extra to install, in one plain line, and exits 2."""
    script = ("import sys; sys.modules['tensorflow'] = None; from services.cli import main; "
              f"sys.argv = ['recsys', 'train', 'ranker', '--samples', {str(tmp_path)!r}, '--state-dir', {str(tmp_path)!r}]; main()")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "error: tensorflow is not installed: it comes from the cpu or gpu extra" in result.stderr
    assert "'.[cpu]'" in result.stderr


def test_a_metrics_port_in_use_is_one_line(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = recsys("scheduler", "--state-dir", str(settings.state_dir),
                        env={"RECSYS_REDIS__URL": str(settings.redis.url), "RECSYS_SCHEDULER__METRICS_PORT": str(port)})  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: metrics port {port} (scheduler.metrics_port): Address already in use")


def test_an_api_key_a_header_cannot_carry_is_refused_at_load(tmp_path: Path) -> None:
    result = recsys("models", "list", "--state-dir", str(tmp_path), env={"RECSYS_API__API_KEYS": '["ok-key", "clé"]'})
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "api.api_keys: Value error, key 1 must be printable ASCII" in result.stderr and "clé" not in result.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_is_one_line_before_anything_starts(settings: Settings, workers: str) -> None:
    """Checked before the embedded Redis and the models: no uvicorn `ERROR: [Errno 98]` (rc 3) nor
    the supervisor's `cannot listen` (rc 1), but the CLI's one `error:` line and exit 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = recsys("serve", "--host", "127.0.0.1", "--port", str(port), "--workers", workers,
                        "--state-dir", str(settings.state_dir))  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: "), result.stderr
    assert result.stdout == "" and not (settings.state_dir / "redis").exists()  # nothing started
