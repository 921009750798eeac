"""The held-out newest slice: what the candidate models never train on and the gate scores them on.

The cutoff is the ranking-samples job's `test_from` (recorded in `<batch>/samples/_manifest.json`):
the ranker's test split is every sample after it, and a hashed share of those at exactly that time
(when many rows tie there), so recall and ranker are judged on about the same window. Without that manifest the cutoff is the same quantile, computed here: the
`1 - batch.test_fraction` quantile of the positives' event times.

Recall is scored on users with positives on both sides of the cutoff: their history is what came
before it (the only thing the candidate trained on), their held-out item the first positive at or
after it that is not already in the history (a full-ranking recommender never returns history).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone

import numpy as np

from feature_store.event_log import LocalEventLog
from feature_store.settings import Settings
from models.embeddings.inputs import positive_interactions
from models.evaluation import LeaveLastOut

Positive = tuple[str, str, datetime]


def read_positives(settings: Settings) -> list[Positive]:
    """(user, item, ts) of every positive event in the log, time-ordered."""
    if not settings.event_log_dir.is_dir():
        raise ValueError(f"no event log at {settings.event_log_dir}: import events first (recsys data …)")
    log = LocalEventLog(settings.event_log_dir, settings.event_log)
    try:
        return list(positive_interactions(log.read()))
    finally:
        log.close()


def holdout_cutoff(settings: Settings, positives: list[Positive]) -> datetime:
    """Start of the held-out window: the samples' `test_from`, else the same quantile of `positives`."""
    manifest = settings.batch_dir / "samples" / "_manifest.json"
    if manifest.is_file():
        test_from = json.loads(manifest.read_text(encoding="utf-8")).get("test_from")
        if test_from:
            return _utc(datetime.fromisoformat(test_from))
    if not positives:
        raise ValueError("no positive events: nothing to train on")
    seconds = np.array([_utc(ts).timestamp() for _, _, ts in positives])
    return datetime.fromtimestamp(float(np.quantile(seconds, 1 - settings.batch.test_fraction)), timezone.utc)


def newest_slice_split(positives: Iterable[Positive], cutoff: datetime) -> LeaveLastOut:
    """`train[user]`: positives before `cutoff`; `test[user]`: the first one after it not in train."""
    train: dict[str, list[str]] = {}
    later: dict[str, list[tuple[datetime, str]]] = {}
    start = end = None
    for user, item, ts in sorted(positives, key=lambda p: _utc(p[2])):
        ts = _utc(ts)
        start, end = start or ts, ts
        if ts < cutoff:
            train.setdefault(user, []).append(item)
        else:
            later.setdefault(user, []).append((ts, item))
    test: dict[str, str] = {}
    for user, items in later.items():
        seen = set(train.get(user, ()))
        first = next((item for _, item in items if item not in seen), None)
        if seen and first is not None:
            test[user] = first
    return LeaveLastOut(train, test, start, end)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts
