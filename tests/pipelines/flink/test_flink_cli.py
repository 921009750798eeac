"""`recsys stream run` argument checks (the job itself is exercised by test_flink_stream_job)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from feature_store.settings import Settings
from pipelines.flink.runner import latest_checkpoint
from services.cli import app


def test_a_checkpoint_path_without_metadata_is_refused(settings: Settings, tmp_path: Path) -> None:
    not_a_checkpoint = tmp_path / "chk-7"
    not_a_checkpoint.mkdir()
    result = CliRunner().invoke(
        app, ["stream", "run", "--state-dir", str(settings.state_dir), "--from-checkpoint", str(not_a_checkpoint)]
    )
    assert result.exit_code == 2
    assert f"error: {not_a_checkpoint} is not a completed checkpoint" in result.output


def test_latest_checkpoint_skips_incomplete_ones(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for name, complete in (("chk-3", True), ("chk-4", False)):
        directory = tmp_path / "job-a" / name
        directory.mkdir(parents=True)
        if complete:
            (directory / "_metadata").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == tmp_path / "job-a" / "chk-3"
