"""Synthetic events with planted structure, generated in bounded memory.

Sessions arrive as a Poisson process over `params.days`; each picks a user by activity (Zipf) and
runs a geometric number of steps. A step shows a slate of 10 items (positions 0..9): the planted
transition target of the session's last click, three items of the last click's category (or the
user's preferred one) by popularity, six items by global popularity, shuffled. Each slot is
clicked with probability `examination[position] * relevance` (see `synthetic_truth`); a click may
be followed by a rating (1-5, from relevance) or a purchase. Steps are seconds to minutes apart.

Sessions are simulated a batch at a time, vectorized across the batch; each batch is sorted by
time and appended to the event log, so memory is flat in the number of events. Generation stops
at exactly `params.events` events. Everything is drawn from the seed: same seed, same data.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from feature_store.catalog import Catalog
from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType, Item, User
from feature_store.settings import Settings
from pipelines.datasets import OnProgress, no_progress
from pipelines.datasets.events import trusted_event
from pipelines.datasets.manifest import digest_params, read_manifest, write_manifest
from pipelines.datasets.synthetic_truth import SLATE_SIZE, SynthParams, SyntheticTruth, load_truth, make_truth, save_truth

__all__ = ["SynthParams", "SynthReport", "SyntheticTruth", "generate", "load_truth", "truth_path"]

BATCH_EVENTS = 20_000
_TYPES = (EventType.IMPRESSION, EventType.CLICK, EventType.RATING, EventType.PURCHASE)
_SAME_CATEGORY_SLOTS = 3


@dataclass
class SynthReport:
    """What one generation wrote (or, with `skipped`, what the identical earlier one wrote)."""

    params: SynthParams
    truth_path: Path
    events: int = 0
    sessions: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False

    @property
    def users(self) -> int:
        return self.params.users

    @property
    def items(self) -> int:
        return self.params.items

    def __str__(self) -> str:
        done = "already generated, skipped" if self.skipped else f"generated in {self.seconds:.1f} s"
        return f"synthetic seed {self.params.seed}: {done}; {self.events:,} events, {self.users:,} users, {self.items:,} items"


def truth_path(settings: Settings) -> Path:
    """Where `generate` writes the ground truth of the latest generation."""
    return settings.state_dir / "synthetic" / "truth.npz"


def generate(settings: Settings, *, on_progress: OnProgress = no_progress, **params: int | float) -> SynthReport:
    """Generate events, catalogs and the truth file for `SynthParams(**params)`; idempotent."""
    spec = SynthParams(**params)  # type: ignore[arg-type]
    started = time.perf_counter()
    key = digest_params("synthetic", asdict(spec))
    previous = read_manifest(settings.state_dir, key)
    if previous is not None:
        return SynthReport(
            spec, Path(previous["truth_path"]), previous["events"], previous["sessions"], previous["by_type"], skipped=True
        )
    truth = make_truth(spec)
    _write_catalogs(truth, Catalog.from_settings(settings))
    report = SynthReport(spec, save_truth(truth, truth_path(settings)))
    counts: Counter[str] = Counter()
    with LocalEventLog(settings.event_log_dir, settings.event_log) as event_log:
        for events, sessions in _event_batches(truth):
            report.events += event_log.append(events)
            report.sessions += sessions
            counts.update(event.type.value for event in events)
            on_progress("generating events", report.events, spec.events)
    report.by_type = dict(counts)
    report.seconds = time.perf_counter() - started
    write_manifest(settings.state_dir, key, {**asdict(report), "params": asdict(spec)})
    return report


def _write_catalogs(truth: SyntheticTruth, catalog: Catalog) -> None:
    created = truth.params.start_ts - 86_400
    popularity_rank = np.argsort(np.argsort(-truth.item_popularity))
    catalog.upsert_items(
        Item(
            item_id=f"i{j}",
            title=f"Item {j}",
            categories=[f"c{category}"],
            created_at=created,
            metadata={"popularity_rank": int(rank)},
        )
        for j, (category, rank) in enumerate(zip(truth.item_category.tolist(), popularity_rank.tolist()))
    )
    catalog.upsert_users(
        User(user_id=f"u{k}", attributes={"segment": f"c{category}"}) for k, category in enumerate(truth.user_category.tolist())
    )


def _event_batches(truth: SyntheticTruth) -> Iterator[tuple[list[Event], int]]:
    """Yield `(events sorted by time, sessions started)` batches until `params.events` are out."""
    params = truth.params
    rng = np.random.default_rng([params.seed, 1])
    per_session = params.mean_steps * (SLATE_SIZE + 1.5)  # rough: impressions + clicks + follow-ups
    sessions_per_batch = max(1, int(BATCH_EVENTS / per_session))
    mean_gap_s = params.days * 86_400 / max(1.0, params.events / per_session)
    samplers = _Samplers(truth)
    clock, session_offset, emitted = float(params.start_ts), 0, 0
    while emitted < params.events:
        starts = clock + np.cumsum(rng.exponential(mean_gap_s, sessions_per_batch))
        columns = _simulate(truth, samplers, rng, starts)
        order = np.lexsort((columns["pos"], columns["kind"], columns["session"], columns["ts"]))
        order = order[: params.events - emitted]
        yield _to_events(truth, columns, order, emitted, session_offset), len(starts)
        emitted += len(order)
        clock, session_offset = float(starts[-1]), session_offset + len(starts)


def _sample(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


class _Samplers:
    """Cumulative tables for popularity sampling, globally and within a category."""

    def __init__(self, truth: SyntheticTruth) -> None:
        self.global_cdf = np.cumsum(truth.item_popularity)
        self.by_category = np.argsort(truth.item_category, kind="stable")
        popularity = truth.item_popularity[self.by_category]
        category = truth.item_category[self.by_category]
        totals = np.bincount(category, weights=popularity)
        # Category k's items occupy [k, k + 1) of one concatenated CDF, so one searchsorted serves all.
        within = np.cumsum(popularity) - np.concatenate([[0.0], np.cumsum(totals)[:-1]])[category]
        self.category_cdf = category + within / totals[category]

    def popular(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        return _sample(self.global_cdf, rng.random(shape) * self.global_cdf[-1])

    def in_category(self, rng: np.random.Generator, categories: np.ndarray, per_row: int) -> np.ndarray:
        u = categories[:, None] + rng.random((len(categories), per_row)) * (1 - 1e-9)
        return self.by_category[_sample(self.category_cdf, u)]


def _slates(truth: SyntheticTruth, samplers: _Samplers, rng: np.random.Generator, users: np.ndarray, last: np.ndarray) -> np.ndarray:
    has_last = last >= 0
    anchor_category = np.where(has_last, truth.item_category[np.maximum(last, 0)], truth.user_category[users])
    same_category = samplers.in_category(rng, anchor_category, _SAME_CATEGORY_SLOTS + 1)
    first = np.where(has_last, truth.transition[np.maximum(last, 0)], same_category[:, -1])
    popular = samplers.popular(rng, (len(users), SLATE_SIZE - 1 - _SAME_CATEGORY_SLOTS))
    slate = np.concatenate([first[:, None], same_category[:, :-1], popular], axis=1)
    earlier = np.tril(np.ones((SLATE_SIZE, SLATE_SIZE), dtype=bool), k=-1)
    duplicate = ((slate[:, :, None] == slate[:, None, :]) & earlier).any(axis=2)
    slate[duplicate] = rng.integers(truth.params.items, size=int(duplicate.sum()))
    return rng.permuted(slate, axis=1)


def _simulate(
    truth: SyntheticTruth, samplers: _Samplers, rng: np.random.Generator, starts: np.ndarray
) -> dict[str, np.ndarray]:
    """Run one batch of sessions in lockstep; returns flat event columns (unsorted)."""
    params = truth.params
    n = len(starts)
    users = _sample(np.cumsum(truth.user_activity), rng.random(n) * truth.user_activity.sum())
    steps = rng.geometric(1.0 / params.mean_steps, n)
    last = np.full(n, -1, dtype=np.int64)
    clock = starts.copy()
    parts: list[dict[str, np.ndarray]] = []
    positions = np.arange(SLATE_SIZE)
    for step in range(int(steps.max())):
        active = np.flatnonzero(steps > step)
        slate = _slates(truth, samplers, rng, users[active], last[active])
        boosted = slate == truth.transition[np.maximum(last[active], 0)][:, None]
        boosted &= (last[active] >= 0)[:, None]
        relevance = truth.relevance(users[active][:, None], slate, boosted)
        clicked = rng.random(slate.shape) < truth.examination[None, :] * relevance
        row_of = np.repeat(active, SLATE_SIZE)
        base = np.floor(clock[active]).astype(np.int64)
        parts.append(_columns(0, row_of, step, np.tile(positions, len(active)), slate.ravel(), np.repeat(base, SLATE_SIZE)))
        parts.extend(_clicks_and_follow_ups(params, rng, active, step, slate, relevance, clicked, base))
        any_click = clicked.any(axis=1)
        last_position = SLATE_SIZE - 1 - np.argmax(clicked[:, ::-1], axis=1)
        last[active[any_click]] = slate[any_click, last_position[any_click]]
        clock[active] += 5 + rng.exponential(40.0, len(active)) + 20 * clicked.sum(axis=1)
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    columns["user"] = users[columns["session"]]
    return columns


def _clicks_and_follow_ups(
    params: SynthParams,
    rng: np.random.Generator,
    active: np.ndarray,
    step: int,
    slate: np.ndarray,
    relevance: np.ndarray,
    clicked: np.ndarray,
    base: np.ndarray,
) -> list[dict[str, np.ndarray]]:
    rows, slots = np.nonzero(clicked)
    items, rel = slate[rows, slots], relevance[rows, slots]
    click_ts = base[rows] + 1 + slots
    clicks = _columns(1, active[rows], step, slots, items, click_ts)
    rated = rng.random(len(rows)) < params.rating_rate
    stars = np.clip(np.rint(1 + 4 * rel + rng.normal(0, 0.5, len(rows))), 1, 5)
    ratings = _columns(2, active[rows][rated], step, slots[rated], items[rated], click_ts[rated] + 30, stars[rated])
    bought = rng.random(len(rows)) < params.purchase_rate * rel
    purchases = _columns(3, active[rows][bought], step, slots[bought], items[bought], click_ts[bought] + 60)
    return [clicks, ratings, purchases]


def _columns(
    kind: int, session: np.ndarray, step: int, pos: np.ndarray, item: np.ndarray, ts: np.ndarray, value: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    n = len(session)
    return {
        "kind": np.full(n, kind, dtype=np.int8),
        "session": session,
        "step": np.full(n, step, dtype=np.int32),
        "pos": pos,
        "item": item,
        "ts": ts,
        "value": value if value is not None else np.full(n, np.nan),
    }


def _to_events(truth: SyntheticTruth, c: dict[str, np.ndarray], order: np.ndarray, first_seq: int, session_offset: int) -> list[Event]:
    seed = truth.params.seed
    events = []
    rows = zip(
        *(c[name][order].tolist() for name in ("kind", "session", "step", "pos", "item", "user", "ts", "value"))
    )
    for seq, (kind, session, step, pos, item, user, ts, value) in enumerate(rows, start=first_seq):
        in_slate = kind < 2
        events.append(
            trusted_event(
                event_id=f"synth-{seed}:{seq}",
                user_id=f"u{user}",
                item_id=f"i{item}",
                type=_TYPES[kind],
                ts=ts,
                value=value if kind == 2 else None,
                request_id=f"synth-{seed}:s{session + session_offset}:{step}" if in_slate else None,
                position=pos if in_slate else None,
            )
        )
    return events
