"""The field's offline protocol (Kang & McAuley 2018, SASRec; Zhao et al. 2021, RecBole): every
interaction is an implicit positive; users with at least `min_interactions` are kept; per user by
time, the last item is the test target, the second-last the validation target, the rest training.
Every model fits on the training items only. The validation phase ranks with the training items
as history, the test phase with training + validation item as history (not trained on). Each
target is ranked against every item of the data set (full ranking), the history masked, ties
broken at random; HR@K, NDCG@K and MRR come from that rank (`models.evaluation.metrics.rank_metrics`).
Hyper-parameters are chosen on validation NDCG@10 and reported on test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.evaluation.metrics import rank_metrics
from models.evaluation.split import LeaveLastOut, Timestamp, leave_last_one_out

TUNING_METRIC = "NDCG@10"
# Events that are not interactions: a shown slot or a skip says nothing positive about the item.
NOT_INTERACTIONS = frozenset({"impression", "skip"})


def implicit_interactions(events: Iterable[Any]) -> Iterator[tuple[str, str, Timestamp]]:
    """(user, item, ts) of every event that is an interaction (any rating value counts): the
    protocol's implicit positives."""
    for event in events:
        if str(event.type) not in NOT_INTERACTIONS:
            yield event.user_id, event.item_id, event.ts


@dataclass(frozen=True)
class ProtocolSplit:
    """``validation``: training items -> validation target; ``test``: training + validation
    item -> test target; ``items``: every item of the data set (the ranking's universe)."""

    validation: LeaveLastOut
    test: LeaveLastOut
    items: tuple[str, ...]

    def training_sequences(self) -> list[list[str]]:
        """What every model fits on: each kept user's training items, oldest first."""
        return self.validation.train_sequences()


def protocol_split(interactions: Iterable[tuple[str, str, Timestamp]], min_interactions: int = 5) -> ProtocolSplit:
    """Split (user, item, ts) interactions; users with fewer than ``min_interactions`` are dropped."""
    if min_interactions < 3:
        raise ValueError(f"min_interactions must be >= 3 (training, validation and test items), got {min_interactions}")
    full = leave_last_one_out(interactions)
    users = sorted(u for u, items in full.train.items() if u in full.test and len(items) + 1 >= min_interactions)
    if not users:
        raise ValueError(f"no user has {min_interactions} or more interactions")
    validation = LeaveLastOut(
        {u: full.train[u][:-1] for u in users}, {u: full.train[u][-1] for u in users}, full.start, full.end,
        {u: full.train_ts[u][:-1] for u in users}, {u: full.train_ts[u][-1] for u in users},
    )  # fmt: skip
    test = LeaveLastOut(
        {u: full.train[u] for u in users}, {u: full.test[u] for u in users}, full.start, full.end,
        {u: full.train_ts[u] for u in users}, {u: full.test_ts[u] for u in users},
    )  # fmt: skip
    items = {item for u in users for item in full.train[u]} | {full.test[u] for u in users}
    return ProtocolSplit(validation, test, tuple(sorted(items)))


class ItemScorer(Protocol):
    """A model that scores every item it knows for a history: ``scores(history)[j]`` is the
    score of ``ids[j]`` (higher is better)."""

    ids: np.ndarray

    def scores(self, history: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class UserItemScorer(Protocol):
    """A scorer that also needs to know whose history it ranks (time-dependent features)."""

    ids: np.ndarray

    def user_scores(self, user: str, history: Sequence[str]) -> np.ndarray: ...


def full_ranks(model: Any, split: LeaveLastOut, items: Sequence[str], seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:  # fmt: skip
    """Rank (1 = best) of each user's target among all ``items`` (users in sorted order):
    1 + the unmasked items scoring higher + a uniform draw over those scoring equal. Items the
    model does not know score -inf (tied at the bottom); history items are masked; a target
    inside the history can never be hit (rank inf)."""
    return ranks_and_lists(model, split, items, seed, 0, progress)[0]


def ranks_and_lists(model: Any, split: LeaveLastOut, items: Sequence[str], seed: int = 0, k: int = 10,
                    progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, list[list[str]]]:  # fmt: skip
    """`full_ranks` and (``k`` > 0) `top_lists` from one scoring pass over the users: the same
    values as the two calls, each with its own generator seeded with ``seed``."""
    index = {item: i for i, item in enumerate(items)}
    columns = np.array([index[item] for item in model.ids.tolist()], dtype=np.int64)
    rank_rng, list_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    users = sorted(split.test)
    ranks = np.empty(len(users))
    lists: list[list[str]] = []
    for start in range(0, len(users), 512):
        chunk = users[start : start + 512]
        for number, (user, own) in enumerate(zip(chunk, _chunk_scores(model, split, chunk)), start=start):
            ranks[number] = _rank(own, columns, split.train[user], split.test[user], index, rank_rng)
            if k > 0:
                lists.append(_top(own, columns, split.train[user], items, index, k, list_rng))
        if progress is not None:
            progress(start + len(chunk), len(users))
    return ranks, lists


def _chunk_scores(model: Any, split: LeaveLastOut, users: Sequence[str]) -> Iterable[np.ndarray]:
    if hasattr(model, "batch_scores"):  # one forward pass for many users (sequence models)
        return model.batch_scores([split.train[user] for user in users])
    if hasattr(model, "batch_user_scores"):  # list models: one ranker call for many users
        return model.batch_user_scores(users, [split.train[user] for user in users])
    if isinstance(model, UserItemScorer):
        return (model.user_scores(user, split.train[user]) for user in users)
    return (model.scores(split.train[user]) for user in users)


def _rank(own: np.ndarray, columns: np.ndarray, history: Sequence[str], target_item: str,
          index: Mapping[str, int], rng: np.random.Generator) -> float:  # fmt: skip
    full = np.full(len(index), -np.inf)
    full[columns] = own
    seen = [index[item] for item in history if item in index]
    target = index[target_item]
    if target in seen:
        return np.inf
    full[seen] = np.nan  # NaN compares false: masked items neither beat nor tie the target
    value = full[target]
    ties = int(np.count_nonzero(full == value)) - 1
    return float(1 + int(np.count_nonzero(full > value)) + int(rng.integers(0, ties + 1)))


@dataclass
class Tuned:
    """A model chosen on validation: its parameters, the fitted model, and per-user metrics on
    validation and test (arrays over ``sorted(users)``), plus every grid point's validation score."""

    name: str
    params: dict[str, Any]
    model: Any
    validation: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    grid: list[tuple[dict[str, Any], float]]
    test_lists: list[list[str]] = field(default_factory=list)  # each test user's top 10, same order


def tune(name: str, build: Callable[..., Any], grid: Sequence[Mapping[str, Any]], split: ProtocolSplit,
         seed: int = 0, progress: Callable[[str, int, int], None] | None = None) -> Tuned:  # fmt: skip
    """Fit ``build(**params)`` on the training items for each grid point, keep the best
    validation NDCG@10 (first on ties), and report that model on test."""
    if not grid:
        raise ValueError(f"{name}: empty parameter grid")
    scored: list[tuple[dict[str, Any], float]] = []
    best: tuple[float, dict[str, Any], Any, dict[str, np.ndarray]] | None = None
    for number, params in enumerate(grid):
        model = build(**params)
        values = rank_metrics(full_ranks(model, split.validation, split.items, seed))
        score = float(values[TUNING_METRIC].mean())
        scored.append((dict(params), score))
        if best is None or score > best[0]:
            best = (score, dict(params), model, values)
        if progress is not None:
            progress(f"tune {name}", number + 1, len(grid))
    assert best is not None
    _, params, model, validation = best
    ranks, lists = ranks_and_lists(model, split.test, split.items, seed)
    if progress is not None:
        progress(f"test {name}", 1, 1)
    return Tuned(name, params, model, validation, rank_metrics(ranks), scored, lists)


class ListScorer:
    """A top-N list model (recall, recall -> ranker) under full ranking: its n-th listed item
    scores −n, every unlisted item −inf, so unlisted items tie at the bottom and the random
    tie-break ranks a target among them as a list model honestly would."""

    def __init__(self, model: Any, items: Sequence[str], depth: int = 100) -> None:
        self.model, self.depth = model, depth
        self.ids = np.array(items, dtype=str)
        self._position = {item: i for i, item in enumerate(items)}

    def user_scores(self, user: str, history: Sequence[str]) -> np.ndarray:
        return self.batch_user_scores([user], [history])[0]

    def batch_user_scores(self, users: Sequence[str], histories: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """`user_scores` of several users (one ranker call where the model takes a batch)."""
        if hasattr(self.model, "recommend_users"):
            lists = self.model.recommend_users(users, histories, self.depth)
        elif hasattr(self.model, "recommend_user"):
            lists = [self.model.recommend_user(user, history, self.depth) for user, history in zip(users, histories)]
        else:
            lists = [self.model.recommend(history, self.depth) for history in histories]
        return [self._scores(ranked) for ranked in lists]

    def _scores(self, ranked: Sequence[str]) -> np.ndarray:
        scores = np.full(len(self.ids), -np.inf)
        for n, item in enumerate(ranked):
            if item in self._position:
                scores[self._position[item]] = -float(n)
        return scores


def top_lists(model: Any, split: LeaveLastOut, items: Sequence[str], k: int = 10, seed: int = 0) -> list[list[str]]:
    """Each user's top ``k`` items (users in sorted order) under the same full ranking as
    `full_ranks`: history masked (never listed: a user with fewer than ``k`` unseen items gets a
    shorter list), ties broken at random."""
    index = {item: i for i, item in enumerate(items)}
    columns = np.array([index[item] for item in model.ids.tolist()], dtype=np.int64)
    rng = np.random.default_rng(seed)
    users = sorted(split.test)
    lists: list[list[str]] = []
    for start in range(0, len(users), 512):
        chunk = users[start : start + 512]
        for user, own in zip(chunk, _chunk_scores(model, split, chunk)):
            lists.append(_top(own, columns, split.train[user], items, index, k, rng))
    return lists


def _top(own: np.ndarray, columns: np.ndarray, history: Sequence[str], items: Sequence[str], index: Mapping[str, int],
         k: int, rng: np.random.Generator) -> list[str]:  # fmt: skip
    full = np.full(len(items), -np.inf)
    full[columns] = own
    key = np.where(np.isneginf(full), 1e300, -full)  # unknown items tie below every score
    key[[index[item] for item in history if item in index]] = np.inf  # masked: last
    draws = rng.random(len(items))
    if k < len(items):  # only the items up to the k-th key can reach the top k: sort those alone
        kept = np.flatnonzero(key <= np.partition(key, k - 1)[k - 1])
        order = kept[np.lexsort((draws[kept], key[kept]))]
    else:
        order = np.lexsort((draws, key))
    return [items[i] for i in order[:k] if np.isfinite(key[i])]  # fewer than k unseen items: a shorter list
