"""`recsys train ranker` end to end on tiny samples: trains, prints the table, publishes."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.registry import ModelRegistry
from services.cli import app

pytestmark = pytest.mark.timeout(300)


def test_train_ranker_publishes_and_prints_metrics(planted_samples: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = CliRunner().invoke(app, [
        "train", "ranker", "--samples", str(planted_samples), "--model", "wide_deep", "--eval",
        "--epochs", "1", "--max-seq-len", "12", "--embedding-dim", "4", "--state-dir", str(state),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("wide_deep", "lr", "popul"):
        assert name in result.output
    current = ModelRegistry(state / "registry").current("ranker")
    assert current is not None
    assert current.manifest["model"] == "wide_deep"
    assert set(current.manifest["metrics"]) == {"wide_deep", "lr", "popularity"}
    assert current.manifest["features"]["dense"] == ["item_pop_7d", "user_event_count"]


def test_train_ranker_reports_missing_samples(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "ranker", "--samples", str(tmp_path / "nope.parquet"),
                                      "--state-dir", str(tmp_path / "state")])  # fmt: skip
    assert result.exit_code == 2
    assert "ranking samples not found" in result.output
