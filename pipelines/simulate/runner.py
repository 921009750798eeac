"""The simulation loop: simulated users ask the live API for recommendations and click by the model.

Step `t` (the request number) picks its user by activity and draws its clicks from its own seeded
stream (`click_model.step_rng`), so a seed fixes who asks and how they click a given list,
whatever the concurrency. Each step: `GET /v1/users/{user}/recommendations?k=`, the slots ordered
by the items' `position` (their index when the response has none), clicks drawn by the PBM, then
`POST /v1/events` with one click event per clicked slot carrying `context.request_id` and
`position`. When a step is the arrival step of new items, they are put into the catalog first.

The run stops after `requests` steps or `seconds`, whichever comes first. Per step it records the
served list's expected clicks under the truth and the oracle's for a list of the same length (no
exclusions: the oracle may show items the user clicked before, which the service never does, so
part of the regret is that rule); a step whose calls failed, or were answered in another shape
than the API's, counts as an error and nothing else. What must abort the run (an arrival the
service refuses, an interrupt) stops every worker at its next step and is raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from pipelines.datasets import OnProgress, no_progress
from pipelines.simulate.click_model import GroundTruth, step_rng
from pipelines.simulate.tenant import EventTally, event_payload, put_items


@dataclass(frozen=True)
class RunParams:
    """Bounds and shape of a run; validated on construction."""

    requests: int = 1_000
    seconds: float = 60.0
    k: int = 10
    concurrency: int = 1
    put_arrivals: bool = True

    def __post_init__(self) -> None:
        if self.requests < 0 or self.seconds < 0 or not 1 <= self.k <= 100 or self.concurrency < 1:
            raise ValueError("requests and seconds must be >= 0, k in [1, 100], concurrency >= 1")


@dataclass(frozen=True)
class ServedRequest:
    """One answered step: the list as served (by position) and what the truth says of it."""

    step: int
    user_id: str
    request_id: str
    items: list[str]
    clicked: list[int]  # positions
    expected_clicks: float
    oracle_clicks: float


@dataclass
class SimulationSummary:
    """Totals of a run. CTRs are per impression: `clicks / impressions`, `Σ E[clicks] / impressions`
    for the served lists, and the same for the oracle's lists; `regret = Σ (oracle − served)
    expected clicks` (≥ 0, exactly)."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0
    oracle_clicks: float = 0.0
    errors: int = 0
    degraded_responses: int = 0
    events: EventTally = field(default_factory=EventTally)
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def expected_ctr(self) -> float:
        return self.expected_clicks / self.impressions if self.impressions else 0.0

    @property
    def oracle_ctr(self) -> float:
        return self.oracle_clicks / self.impressions if self.impressions else 0.0

    @property
    def regret(self) -> float:
        return self.oracle_clicks - self.expected_clicks

    def to_dict(self) -> dict[str, Any]:
        rates = {"ctr": self.ctr, "expected_ctr": self.expected_ctr, "oracle_ctr": self.oracle_ctr}
        return {**asdict(self), **rates, "regret": self.regret}


@dataclass
class SimulationResult:
    summary: SimulationSummary
    served: list[ServedRequest]  # by step


def run_simulation(
    client: httpx.Client, truth: GroundTruth, params: RunParams, *, on_progress: OnProgress = no_progress
) -> SimulationResult:
    """Drive the API at `client`'s base URL with the population of `truth` (see the module doc)."""
    started = time.monotonic()
    summary = SimulationSummary()
    served: list[ServedRequest] = []
    lock = threading.Lock()
    steps = _Steps(params, started + params.seconds, lambda step: _arrive(client, truth, step, params))

    def work() -> None:
        try:
            while (step := steps.take()) is not None:
                outcome = _one_step(client, truth, step, params.k)
                with lock:
                    _tally(summary, served, outcome)
                    on_progress("simulating requests", summary.requests + summary.errors, params.requests)
        except BaseException:
            steps.stop()  # the run is lost: the other workers stop at their next step, not at the limit
            raise

    with ThreadPoolExecutor(params.concurrency, thread_name_prefix="simulate") as pool:
        futures = [pool.submit(work) for _ in range(params.concurrency)]
        try:
            for future in futures:
                future.result()
        finally:
            steps.stop()  # on an interrupt, leaving the pool would otherwise wait for the limit
    summary.seconds = time.monotonic() - started
    served.sort(key=lambda record: record.step)
    return SimulationResult(summary, served)


class _Steps:
    """Hands out step numbers until the request or time bound; runs a step's arrivals first."""

    def __init__(self, params: RunParams, deadline: float, before: Callable[[int], None]) -> None:
        self._next, self._limit, self._deadline, self._before = 0, params.requests, deadline, before
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._limit or time.monotonic() >= self._deadline:
                return None
            step, self._next = self._next, self._next + 1
            try:
                self._before(step)
            except BaseException:
                self._limit = 0  # at once, under the lock: no other worker takes another step
                raise
            return step

    def stop(self) -> None:
        """Hand out no more steps."""
        with self._lock:
            self._limit = 0


def _arrive(client: httpx.Client, truth: GroundTruth, step: int, params: RunParams) -> None:
    arriving = truth.population.arriving_at(step)
    if arriving and params.put_arrivals:
        put_items(client, truth.population, arriving, created_at=datetime.now(timezone.utc))


@dataclass
class _Outcome:
    served: ServedRequest | None = None
    events: EventTally | None = None
    degraded: bool = False
    error: str | None = None


def pick_user(truth: GroundTruth, step: int) -> str:
    """The user who asks at `step`: drawn by activity from the step's own stream."""
    population = truth.population
    rng = step_rng(population.params.seed, step, stream=2)
    return population.user_id(int(rng.choice(population.params.users, p=population.user_activity)))


def _one_step(client: httpx.Client, truth: GroundTruth, step: int, k: int) -> _Outcome:
    user_id = pick_user(truth, step)
    try:
        response = client.get(f"/v1/users/{user_id}/recommendations", params={"k": k})
        if response.status_code != 200:
            return _Outcome(error=f"GET recommendations answered {response.status_code}: {response.text[:200]}")
        body = response.json()
        request_id, slots = _slots(body)
        items = [item_id for _, item_id in slots]
        if len(set(items)) != len(items):  # the click model and the oracle's bound assume distinct items
            repeated = sorted({item for item in items if items.count(item) > 1})
            return _Outcome(error=f"GET recommendations answered a list with repeated items: {', '.join(repeated[:5])}")
        clicked = truth.draw_clicks(user_id, items, step).nonzero()[0].tolist()
        now = datetime.now(timezone.utc)
        prefix = truth.population.params.prefix
        events = [
            event_payload(f"{prefix}click-{request_id}-{slot}", user_id, item_id, "click", now, request_id, slot)
            for slot, item_id in (slots[i] for i in clicked)
        ]
        answer = _post(client, events)
    except (httpx.HTTPError, ValueError) as exc:  # ValueError: a body that is not JSON, or not the API's shape
        return _Outcome(error=f"{type(exc).__name__}: {exc}")
    if isinstance(answer, str):
        return _Outcome(error=answer)
    record = ServedRequest(
        step, user_id, request_id, items, [slots[i][0] for i in clicked],
        truth.expected_clicks(user_id, items, step), truth.oracle_clicks(user_id, len(items), step),
    )  # fmt: skip
    return _Outcome(record, answer, bool(body.get("degraded")))


def _slots(body: Any) -> tuple[str, list[tuple[int, str]]]:
    """The request id and the (position, item id) slots, by position, of a recommendations answer;
    `ValueError` when it is not `{"request_id": str, "items": [{"item_id": str, "position": int}]}`
    (a missing position is the item's index)."""
    shaped = isinstance(body, dict) and isinstance(body.get("request_id"), str) and isinstance(body.get("items"), list)
    if not shaped:
        raise ValueError(f"GET recommendations answered an unexpected body: {str(body)[:200]}")
    slots = []
    for index, item in enumerate(body["items"]):
        position = item.get("position", index) if isinstance(item, dict) else None
        # type(...) is int: a bool is an int too, and no position.
        if type(position) is not int or not isinstance(item.get("item_id"), str):
            raise ValueError(f"GET recommendations answered an unexpected item: {str(item)[:200]}")
        slots.append((position, item["item_id"]))
    return body["request_id"], sorted(slots)


def _post(client: httpx.Client, events: list[dict[str, Any]]) -> EventTally | str:
    if not events:
        return EventTally()
    response = client.post("/v1/events", json=events)
    if response.status_code != 202:
        return f"POST /v1/events answered {response.status_code}: {response.text[:200]}"
    return EventTally.of_answer(len(events), response.json())


def _tally(summary: SimulationSummary, served: list[ServedRequest], outcome: _Outcome) -> None:
    if outcome.served is None or outcome.events is None:
        summary.errors += 1
        if len(summary.error_samples) < 5:
            summary.error_samples.append(outcome.error or "unknown error")
        return
    record = outcome.served
    served.append(record)
    summary.requests += 1
    summary.impressions += len(record.items)
    summary.clicks += len(record.clicked)
    summary.expected_clicks += record.expected_clicks
    summary.oracle_clicks += record.oracle_clicks
    summary.degraded_responses += outcome.degraded
    summary.events.add(outcome.events)
