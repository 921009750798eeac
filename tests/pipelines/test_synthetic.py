"""`recsys data synth`: bounded memory at 1e6 events, planted structure, determinism, idempotency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from feature_store.catalog import Catalog
from feature_store.event_log import EventLogReader
from feature_store.schemas import Event
from feature_store.settings import Settings
from pipelines.datasets import synthetic
from services.cli import app

def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_") and k != "REDIS_URL"}


# Runs the CLI in a fresh interpreter and prints its own high-water RSS at exit. VmHWM belongs to
# the exec'd process alone; rusage's ru_maxrss would also count the forking pytest process's pages.
PEAK_RSS_PROBE = """
import atexit, re, sys
atexit.register(lambda: print("VmHWM_KB", re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1)))
from services.cli import app
sys.argv = ["recsys", *sys.argv[1:]]
app()
"""


def test_a_million_events_generate_in_under_500_mb(tmp_path: Path) -> None:
    state = tmp_path / "state"
    command = [sys.executable, "-c", PEAK_RSS_PROBE, "data", "synth", "--events", "1000000", "--users", "5000",
               "--items", "20000", "--seed", "3", "--state-dir", str(state)]  # fmt: skip
    process = subprocess.run(command, env=clean_env(), capture_output=True, text=True)
    assert process.returncode == 0, process.stdout + process.stderr
    peak_mb = int(process.stdout.split("VmHWM_KB")[-1].split()[0]) / 1024
    assert peak_mb < 500, f"peak RSS {peak_mb:.0f} MB"
    manifests = list((state / "imports").glob("*.json"))
    assert len(manifests) == 1
    assert json.loads(manifests[0].read_text())["events"] == 1_000_000
    lines = 0
    for path in EventLogReader(state / "events").files():
        with path.open("rb") as handle:
            lines += sum(1 for _ in handle)
    assert lines == 1_000_000


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, synthetic.SyntheticTruth, list[Event]]:
    settings = Settings(state_dir=tmp_path_factory.mktemp("synth") / "state")
    report = synthetic.generate(settings, events=30_000, users=200, items=300, categories=10, seed=7)
    assert report.events == 30_000 and not report.skipped
    truth = synthetic.load_truth(synthetic.truth_path(settings))
    return settings, truth, list(EventLogReader(settings.event_log_dir).read())


def test_catalogs_and_truth_describe_the_generated_world(small_world: tuple[Settings, synthetic.SyntheticTruth, list[Event]]) -> None:
    settings, truth, events = small_world
    catalog = Catalog(settings.catalog_dir)
    assert catalog.count_items() == 300 and catalog.count_users() == 200
    item = catalog.get_item("i5")
    assert item is not None and item.categories == [f"c{truth.item_category[5]}"]
    assert truth.item_factors.shape == (300, 16) and np.allclose(np.linalg.norm(truth.item_factors, axis=1), 1, atol=1e-5)
    assert (truth.item_category[truth.transition] == truth.item_category).all()
    assert {e.type for e in events} == {"impression", "click", "rating", "purchase"}
    assert all(1 <= e.value <= 5 for e in events if e.type == "rating")  # type: ignore[operator]
    assert len({e.event_id for e in events}) == len(events) == 30_000


def test_clicks_follow_the_planted_structure(small_world: tuple[Settings, synthetic.SyntheticTruth, list[Event]]) -> None:
    _, truth, events = small_world
    clicks = [e for e in events if e.type == "click"]
    impressions = [e for e in events if e.type == "impression"]
    clicked_items = np.array([truth.item_index(e.item_id) for e in clicks])
    clicking_users = np.array([truth.user_index(e.user_id) for e in clicks])

    top_tenth = np.argsort(-truth.item_popularity)[: len(truth.item_popularity) // 10]
    assert np.isin(clicked_items, top_tenth).mean() > 0.25  # popularity: 10% of items get far over 10% of clicks
    assert (truth.item_category[clicked_items] == truth.user_category[clicking_users]).mean() > 0.4  # chance: 0.1

    shown = np.bincount([e.context.position for e in impressions], minlength=10)
    clicked = np.bincount([e.context.position for e in clicks], minlength=10)
    ctr = clicked / shown
    assert ctr[0] > 2 * ctr[5] and ctr[0] > 2 * ctr[9]  # position bias

    by_session: dict[str, list[int]] = defaultdict(list)
    for event in clicks:
        by_session[event.context.request_id.rsplit(":", 1)[0]].append(truth.item_index(event.item_id))  # type: ignore[union-attr]
    pairs = [(a, b) for items in by_session.values() for a, b in zip(items, items[1:])]
    follows = np.mean([truth.transition[a] == b for a, b in pairs])
    assert len(pairs) > 500 and follows > 20 / len(truth.transition)  # at least 20x chance


def test_same_seed_same_data_and_a_second_run_is_skipped(tmp_path: Path) -> None:
    first = Settings(state_dir=tmp_path / "a")
    second = Settings(state_dir=tmp_path / "b")
    params = {"events": 2_000, "users": 50, "items": 60, "categories": 4, "seed": 11}
    synthetic.generate(first, **params)
    synthetic.generate(second, **params)
    read = lambda s: [e.model_dump() for e in EventLogReader(s.event_log_dir).read()]  # noqa: E731
    assert read(first) == read(second)
    files = EventLogReader(first.event_log_dir).files()
    again = synthetic.generate(first, **params)
    assert again.skipped and again.events == 2_000
    assert EventLogReader(first.event_log_dir).files() == files
    other = synthetic.generate(Settings(state_dir=tmp_path / "c"), **{**params, "seed": 12})
    assert read(Settings(state_dir=tmp_path / "c")) != read(first) and other.events == 2_000


def test_cli_rejects_bad_parameters(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "synth", "--items", "20", "--categories", "50", "--state-dir", str(tmp_path / "s")]
    )
    assert result.exit_code == 2
    assert "categories must be between 1 and items" in result.output
    assert not (tmp_path / "s").exists()


def test_cli_default_categories_fit_a_small_catalog(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path / "s")
    result = CliRunner().invoke(app, ["data", "synth", "--users", "20", "--items", "10", "--events", "300",
                                      "--state-dir", str(settings.state_dir)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert synthetic.load_truth(synthetic.truth_path(settings)).params.categories == 10
