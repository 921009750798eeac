"""Same seed, same population, same users asking, same clicks; the truth file round-trips."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from pipelines.simulate.click_model import GroundTruth, PositionBasedModel, load_truth
from pipelines.simulate.population import PopulationParams, make_population
from pipelines.simulate.runner import RunParams, pick_user, run_simulation
from pipelines.simulate.tenant import warmup_events

PARAMS = PopulationParams(users=25, items=60, categories=5, seed=7, drift_at=30, new_items_at=10, new_items=5)


def _truth(**changes: object) -> GroundTruth:
    params = PopulationParams(**{**PARAMS.__dict__, **changes})  # type: ignore[arg-type]
    return GroundTruth(make_population(params), PositionBasedModel(0.8))


def _arrays_equal(a: GroundTruth, b: GroundTruth) -> bool:
    left, right = a.population.to_arrays(), b.population.to_arrays()
    return left.keys() == right.keys() and all(np.array_equal(left[name], right[name]) for name in left)


def test_the_same_seed_gives_the_same_population_and_another_seed_another() -> None:
    assert _arrays_equal(_truth(), _truth())
    other = _truth(seed=8)
    assert not np.allclose(other.population.user_vectors, _truth().population.user_vectors)


def _steps(truth: GroundTruth, steps: list[int], lists: list[list[int]]) -> list[tuple[int, list[bool]]]:
    """(user number, clicks) per step, for item-number lists mapped to `truth`'s ids."""
    p = truth.population
    out = []
    for step in steps:
        user = pick_user(truth, step)
        out.append((p.user_index(user), truth.draw_clicks(user, [p.item_id(i) for i in lists[step]], step).tolist()))
    return out


def test_the_same_seed_gives_the_same_users_and_clicks_for_the_same_lists() -> None:
    lists = [np.random.default_rng(step).permutation(60)[:10].tolist() for step in range(60)]
    steps = list(range(60))
    first = _steps(_truth(), steps, lists)
    assert first == _steps(_truth(), steps, lists)
    assert sum(sum(clicks) for _, clicks in first) > 0
    assert first != _steps(_truth(seed=8), steps, lists)
    # A step's draw is its own: drawing the steps in another order changes nothing.
    assert _steps(_truth(), steps[::-1], lists)[::-1] == first


def test_the_warm_up_history_is_fixed_by_the_seed() -> None:
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    events = warmup_events(_truth(), 2, 10, now)
    assert events == warmup_events(_truth(), 2, 10, now)
    assert len({event["event_id"] for event in events}) == len(events)
    assert {event["type"] for event in events} == {"impression", "click"}
    assert all(event["item_id"] in {f"sim7-i{j}" for j in range(60)} for event in events)  # arrivals come later


def test_the_truth_file_round_trips(tmp_path: Path) -> None:
    truth = _truth()
    loaded = load_truth(truth.save(tmp_path / "truth.npz"))
    assert _arrays_equal(truth, loaded) and loaded.model == truth.model
    assert loaded.population.params == truth.population.params
    user, items = truth.population.user_id(3), truth.oracle_list(truth.population.user_id(3), 10, 40)
    assert loaded.expected_clicks(user, items, 40) == truth.expected_clicks(user, items, 40)


def test_a_run_with_no_time_left_sends_nothing() -> None:
    with httpx.Client(base_url="http://127.0.0.1:9") as client:  # never contacted
        result = run_simulation(client, _truth(), RunParams(requests=10, seconds=0))
    assert result.summary.requests == result.summary.errors == 0 and result.served == []
