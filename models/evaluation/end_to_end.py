"""End-to-end offline evaluation: multi-channel recall -> ranker, on leave-last-one-out.

Everything here sees only `LeaveLastOut.train` (each user's positives before the held-out one):
the recall channels, the item facts (popularity, categories) and the ranker's training samples.

Ranker training samples follow the ranking-samples contract (`models.ranking.samples`). For each
user and each position ``t >= 1`` of their training sequence (or only the last
``positions_per_user`` before the validation row), the positive is ``seq[t]`` with history ``seq[:t]``; negatives are
``recall_negatives`` items drawn from what the recall stage returns for that history (the
candidates the ranker sees at serving) and ``random_negatives`` uniform items. The user's last
training position is the validation row (it mimics the held-out task); the others are training
rows.

Dense features are taken as of the end of the row's history (the time of ``seq[t-1]``), as the
Spark ranking-samples job takes them as of each row's time: item popularity counts only training
positives strictly before then, so no row sees its own or any later event, even when the positive
shares its timestamp with the last history item (ties are common: MovieLens rates many films in
one second, and counting up to and including that time made the label's own event a feature). At evaluation the same
definition applies as of the user's last training positive; nothing about the held-out event
(item or time) is used. At evaluation the ranker rescores the recall candidates of the full
training history. Sample features are assembled by `CandidateFeatures`, used for both training
rows and evaluation candidates, so the two can never drift apart.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.evaluation.metrics import rank_metrics
from models.evaluation.split import LeaveLastOut, Timestamp
from models.ranking import samples
from models.ranking.features import FeatureSpec
from models.retrieval.multichannel import MultiChannelRecall

_ROW_COLUMNS = (
    samples.USER_ID, samples.ITEM_ID, samples.TS, samples.LABEL, samples.LABEL_SOURCE, samples.SPLIT,
    samples.HIST_ITEM_IDS, samples.HIST_CATEGORIES, samples.ITEM_CATEGORY,
)  # fmt: skip
# Item popularity windows, named as the sample columns the serving path maps to the feature
# store (`models.ranking.samples.DENSE_FEATURE_SOURCES`: item.popularity_all / _7d / _30d).
POPULARITY_WINDOWS: dict[str, float | None] = {
    "item_popularity": None, "item_pop_1d": 86_400.0, "item_pop_7d": 7 * 86_400.0, "item_pop_30d": 30 * 86_400.0,
}  # fmt: skip
USER_FEATURES = ("user_positive_count", "user_category_affinity")
SUPPORTED_FEATURES = (*POPULARITY_WINDOWS, *USER_FEATURES)
DENSE_FEATURES = ("item_popularity", "item_pop_7d", "item_pop_30d", "user_positive_count", "user_category_affinity")


@dataclass(frozen=True)
class SampleConfig:
    """Training rows per user besides the validation row (``positions_per_user=None``: every
    position) and which negatives;
    ``recall_depth`` candidates are recalled; ``dense_features`` from `SUPPORTED_FEATURES`."""

    positions_per_user: int | None = None
    recall_negatives: int = 4
    random_negatives: int = 2
    recall_depth: int = 100
    max_seq_len: int = samples.DEFAULT_MAX_SEQ_LEN
    dense_features: tuple[str, ...] = DENSE_FEATURES
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("recall_depth", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.positions_per_user is not None and self.positions_per_user < 1:
            raise ValueError(f"positions_per_user must be >= 1 (or None for all), got {self.positions_per_user}")
        if self.recall_negatives < 0 or self.random_negatives < 0:
            raise ValueError("negative counts must be >= 0")
        if self.recall_negatives + self.random_negatives == 0:
            raise ValueError("at least one negative per positive is needed (recall or random)")
        unknown = [name for name in self.dense_features if name not in SUPPORTED_FEATURES]
        if unknown:
            raise ValueError(f"unknown dense features {unknown}; expected some of {list(SUPPORTED_FEATURES)}")


def _seconds(ts: Timestamp) -> float:
    return ts.timestamp() if isinstance(ts, datetime) else float(ts)


class ItemClock:
    """Training positives per item as sorted event times: counts as of any time, in any window."""

    def __init__(self, train: Mapping[str, Sequence[str]], train_ts: Mapping[str, Sequence[Timestamp]]) -> None:
        times: dict[str, list[float]] = defaultdict(list)
        for user, items in train.items():
            for item, ts in zip(items, train_ts.get(user, ())):
                times[item].append(_seconds(ts))
        self.times = {item: np.sort(np.asarray(values)) for item, values in times.items()}
        self._empty = np.zeros(0)
        self._code = {item: code for code, item in enumerate(self.times)}
        self._by_code = list(self.times.values())

    def count(self, item: str, at: float, window: float | None) -> int:
        """Positives of ``item`` strictly before ``at`` (within the last ``window`` seconds if given)."""
        times = self.times.get(item, self._empty)
        upto = int(np.searchsorted(times, at, side="left"))
        return upto if window is None else upto - int(np.searchsorted(times, at - window, side="right"))

    def counts(self, items: Sequence[str], at: np.ndarray, window: float | None) -> np.ndarray:
        """`count(items[r], at[r], window)` for every row r: one search per distinct item."""
        codes = np.array([self._code.get(item, -1) for item in items], dtype=np.int64)
        out = np.zeros(len(codes), dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        starts = np.flatnonzero(np.r_[True, codes[order][1:] != codes[order][:-1]]) if len(codes) else []
        for start, end in zip(starts, [*starts[1:], len(codes)]):
            rows = order[start:end]
            if codes[rows[0]] < 0:
                continue  # an item without training positives counts 0
            times = self._by_code[codes[rows[0]]]
            out[rows] = np.searchsorted(times, at[rows], side="left")
            if window is not None:
                out[rows] -= np.searchsorted(times, at[rows] - window, side="right")
        return out


class RowRequest(NamedTuple):
    """One user's candidates with ``history`` (oldest first) as of ``at``, and their labels."""

    user: str
    history: Sequence[str]
    at: float
    items: Sequence[str]
    labels: Sequence[int]
    sources: Sequence[str]
    split: str


class CandidateFeatures:
    """Builds ranking-sample rows (contract columns) for (user history, candidate) pairs.

    As of time ``at`` (the end of the history): ``item_popularity`` is the item's number of
    training positives strictly before ``at``, ``item_pop_7d`` / ``item_pop_30d`` (and ``_1d``) those in the
    window ending at ``at``, ``user_positive_count`` the history length and
    ``user_category_affinity`` the share of the history in the candidate's primary category (as
    the Spark ranking-samples job and the feature store define them).
    """

    def __init__(self, split: LeaveLastOut, categories: Mapping[str, str], max_seq_len: int,
                 dense_features: Sequence[str] = DENSE_FEATURES) -> None:  # fmt: skip
        self.train_ts = {user: [_seconds(ts) for ts in times] for user, times in split.train_ts.items()}
        # Without event times every positive counts as at time 0, i.e. whole-training counts.
        self.clock = ItemClock(split.train, {u: self.train_ts.get(u) or [0.0] * len(s) for u, s in split.train.items()})
        self.items = sorted(self.clock.times)
        self.categories = categories
        self.max_seq_len = max_seq_len
        self.dense_features = tuple(dense_features)

    def category(self, item: str) -> str:
        return self.categories.get(item, "")

    def as_of(self, user: str, position: int) -> float:
        """Time of the end of ``user``'s history ``train[user][:position]`` (0 when unknown); a
        longer history (the protocol's test phase adds the validation item, never trained on) is
        taken as of the last training positive, so nothing about later events is used."""
        times = self.train_ts.get(user)
        return times[min(position, len(times)) - 1] if times and position >= 1 else 0.0

    def rows(self, user: str, history: Sequence[str], at: float, items: Sequence[str], labels: Sequence[int],
             sources: Sequence[str], split: str) -> dict[str, list[Any]]:  # fmt: skip
        """Column lists for one user's candidates with ``history`` (oldest first) as of ``at``."""
        return self.rows_many([RowRequest(user, history, at, items, labels, sources, split)])

    def rows_many(self, requests: Sequence[RowRequest]) -> dict[str, list[Any]]:
        """`rows` of several requests, concatenated; the item counts of all rows in one pass."""
        out: dict[str, list[Any]] = {name: [] for name in (*_ROW_COLUMNS, *self.dense_features)}
        category = self.categories.get
        for request in requests:
            recent = list(request.history)[-self.max_seq_len :]
            size = len(request.items)
            out[samples.USER_ID] += [request.user] * size
            out[samples.ITEM_ID] += request.items
            out[samples.TS] += [datetime.fromtimestamp(request.at, timezone.utc)] * size
            out[samples.LABEL] += request.labels
            out[samples.LABEL_SOURCE] += request.sources
            out[samples.SPLIT] += [request.split] * size
            out[samples.HIST_ITEM_IDS] += [recent] * size
            out[samples.HIST_CATEGORIES] += [[category(i, "") for i in recent]] * size
            out[samples.ITEM_CATEGORY] += [category(i, "") for i in request.items]
            if "user_positive_count" in out:
                out["user_positive_count"] += [float(len(request.history))] * size
            if "user_category_affinity" in out:
                counts = Counter(category(i, "") for i in request.history)
                length = len(request.history)
                out["user_category_affinity"] += [counts[category(i, "")] / length if length else 0.0 for i in request.items]
        at = np.repeat([r.at for r in requests], [len(r.items) for r in requests])
        for name in self.dense_features:
            if name in POPULARITY_WINDOWS:
                out[name] = self.clock.counts(out[samples.ITEM_ID], at, POPULARITY_WINDOWS[name]).astype(float).tolist()
        return out


def write_training_samples(
    split: LeaveLastOut, recall: MultiChannelRecall, features: CandidateFeatures, config: SampleConfig,
    path: Path, progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:  # fmt: skip
    """Write ranker training samples to ``path`` (Parquet), one row group per user batch;
    returns row counts per label source."""
    rng = np.random.default_rng(config.seed)
    universe = features.items
    schema = samples.sample_schema(features.dense_features)
    counts: Counter[str] = Counter()
    train_rows = 0
    users = sorted(u for u, items in split.train.items() if len(items) >= 2)
    with pq.ParquetWriter(path, schema) as writer:
        pending: list[RowRequest] = []
        pending_rows = 0
        for number, user in enumerate(users):
            sequence = split.train[user]
            seen = set(sequence)
            first = 1 if config.positions_per_user is None else max(1, len(sequence) - 1 - config.positions_per_user)
            for t in range(first, len(sequence)):
                history = sequence[:t]
                recalled = [c.item_id for c in recall.recall(history, config.recall_depth) if c.item_id not in seen]
                items = [sequence[t], *_draw(recalled, config.recall_negatives, rng)]
                sources = ["rating"] + ["recall"] * (len(items) - 1)
                randoms = [i for i in _draw(universe, config.random_negatives * 3, rng) if i not in seen]
                items += randoms[: config.random_negatives]
                sources += ["sampled"] * (len(items) - len(sources))
                labels = [1] + [0] * (len(items) - 1)
                which = "validation" if t == len(sequence) - 1 else "train"
                pending.append(RowRequest(user, history, features.as_of(user, t), items, labels, sources, which))
                pending_rows += len(items)
                counts.update(sources)
                train_rows += len(items) if which == "train" else 0
            if pending_rows >= 50_000 or number == len(users) - 1:
                writer.write_table(pa.Table.from_pydict(features.rows_many(pending), schema=schema))
                pending, pending_rows = [], 0
            if progress is not None:
                progress(number + 1, len(users))
    if not train_rows:
        raise ValueError("no ranker training rows: every user's last training position is their validation row, "
                         "so rankers need users with at least 3 training positives")
    return dict(counts)


def _draw(pool: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    if not pool or count == 0:
        return []
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[i] for i in picks]


@runtime_checkable
class UserRecommender(Protocol):
    """A recommender that also needs to know whose history it ranks (for time-dependent features)."""

    def recommend_user(self, user: str, history: Sequence[str], k: int) -> list[str]: ...


class RerankRecommender:
    """Recall ``depth`` candidates, score them with a ranker, return the top ``k`` by score.

    ``score`` maps a decoded sample batch (`models.ranking.dataset.decode_batch`) to scores.
    """

    def __init__(self, recall: MultiChannelRecall, features: CandidateFeatures, spec: FeatureSpec,
                 score: Callable[[dict[str, np.ndarray]], np.ndarray], depth: int = 100) -> None:  # fmt: skip
        if tuple(spec.dense_features) != features.dense_features:
            raise ValueError(f"ranker dense features {spec.dense_features} differ from {features.dense_features}")
        self.recall, self.features, self.spec, self.score, self.depth = recall, features, spec, score, depth
        self.schema = samples.sample_schema(spec.dense_features)

    def recommend_user(self, user: str, history: Sequence[str], k: int) -> list[str]:
        """Top ``k`` for ``user`` with features as of the end of their history."""
        return self._rerank(user, history, self.features.as_of(user, len(history)), k)

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        return self._rerank("user", history, 0.0, k)

    def recommend_users(self, users: Sequence[str], histories: Sequence[Sequence[str]], k: int) -> list[list[str]]:
        """`recommend_user` for several users at once: one recall batch where the recall stage
        scores batches (`recall_many`) and one ranker call over every user's candidates (the
        ranker scores each row on its own, so the lists are those of one call per user)."""
        depth = max(self.depth, k)
        if hasattr(self.recall, "recall_many"):
            found = self.recall.recall_many(histories, depth)
        else:
            found = [self.recall.recall(history, depth) for history in histories]
        candidates = [[c.item_id for c in recalled] for recalled in found]
        ats = [self.features.as_of(user, len(history)) for user, history in zip(users, histories)]
        scores = self._scores(users, histories, ats, candidates)
        out, start = [], 0
        for items in candidates:
            own = scores[start : start + len(items)]
            start += len(items)
            out.append([items[i] for i in np.argsort(-own, kind="stable")[:k]])
        return out

    def _rerank(self, user: str, history: Sequence[str], at: float, k: int) -> list[str]:
        candidates = [c.item_id for c in self.recall.recall(history, max(self.depth, k))]
        scores = self._scores([user], [history], [at], [candidates])
        return [candidates[i] for i in np.argsort(-scores, kind="stable")[:k]]

    def _scores(self, users: Sequence[str], histories: Sequence[Sequence[str]], ats: Sequence[float],
                candidates: Sequence[Sequence[str]]) -> np.ndarray:  # fmt: skip
        """The ranker's score of every candidate of every user, concatenated in order."""
        from models.ranking.dataset import decode_batch

        requests = [RowRequest(user, history, at, items, [0] * len(items), ["recall"] * len(items), "test")
                    for user, history, at, items in zip(users, histories, ats, candidates)]  # fmt: skip
        columns = self.features.rows_many(requests)
        if not columns[samples.ITEM_ID]:
            return np.zeros(0)
        batch = decode_batch(pa.RecordBatch.from_pydict(columns, schema=self.schema), self.spec, "candidates")
        batch.pop(samples.LABEL, None)
        # Histories are right-padded to `max_seq_len`; the rankers mask padding out of their
        # pooling, so the columns past the batch's longest history change no score and are
        # dropped (Amazon Toys: about 7 of 50 positions are real, and DIN's activation unit
        # ran over all 50 for every candidate).
        width = max(1, min(self.spec.max_seq_len, max(len(h) for h in histories)))
        for name in samples.SEQUENCE_INPUTS:
            batch[name] = batch[name][:, :width]
        return np.asarray(self.score(batch), dtype=np.float64)


def per_user_metrics(model: Any, split: LeaveLastOut, ks: Sequence[int] = (10, 50),
                     progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """HR@K and NDCG@K per test user (same order as ``sorted(split.test)``), for bootstraps."""
    users = sorted(split.test)
    depth = max(ks)
    ranks = np.full(len(users), np.inf)
    for number, user in enumerate(users):
        if isinstance(model, UserRecommender):
            ranked = model.recommend_user(user, split.train[user], depth)
        else:
            ranked = model.recommend(split.train[user], depth)
        if split.test[user] in ranked:
            ranks[number] = ranked.index(split.test[user]) + 1
        if progress is not None:
            progress(number + 1, len(users))
    values = rank_metrics(ranks, ks)
    return {f"{kind}@{k}": values[f"{kind}@{k}"] for k in ks for kind in ("HR", "NDCG")}


def bootstrap_ci(values: np.ndarray, rounds: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users (resampled with replacement)."""
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
