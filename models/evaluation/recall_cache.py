"""A recall stage whose candidate lists are computed once per history and reused.

The protocol run (`models.evaluation.protocol_run`) asks one recall stage for the same users'
candidates many times: "recall only", every "recall -> ranker" on validation and on test, and the
benchmark's reasons count on test. On Amazon Toys (19,412 users, 11,924 items) recomputing them
was about 65% of the DIN rescoring phases (py-spy). `CachedRecall` keeps, per (history, k), only
the top-k candidates as compact arrays (item numbers, float64 scores, channel-set and reason
numbers: about 2 kB per user at k = 100), filled chunk by chunk as the callers stream their users;
no score matrix is kept."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from models.retrieval.multichannel import RecallCandidate

_Entry = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # items, scores, channel sets, reasons


class CachedRecall:
    """`recall`, `recall_many` and `recommend` of `inner`, each (history, k) computed once (calls
    with `exclude` go to `inner` uncached); every other attribute (`channels`, the blend's
    `reasons`, ...) is `inner`'s. The lists returned are fresh `RecallCandidate`s equal to
    `inner`'s, so a caller may change them."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._store: dict[tuple[int, tuple[str, ...]], _Entry] = {}
        self._names: list[str] = []
        self._number: dict[str, int] = {}
        self._sets: list[frozenset[str]] = []
        self._set_number: dict[frozenset[str], int] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.inner, name)

    def recall(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[RecallCandidate]:
        """`inner.recall(history, k, exclude)`, from the cache when `exclude` is empty."""
        if exclude:
            return self.inner.recall(history, k, exclude)
        return self.recall_many([history], k)[0]

    def recall_many(self, histories: Sequence[Sequence[str]], k: int) -> list[list[RecallCandidate]]:
        """`inner`'s candidates for each history; the uncached ones computed in one batch where
        `inner` takes batches (`recall_many`)."""
        keys = [(k, tuple(history)) for history in histories]
        missing = list(dict.fromkeys(key for key in keys if key not in self._store))
        if missing:
            if hasattr(self.inner, "recall_many"):
                found = self.inner.recall_many([list(key[1]) for key in missing], k)
            else:
                found = [self.inner.recall(list(key[1]), k) for key in missing]
            for key, candidates in zip(missing, found):
                self._store[key] = self._pack(candidates)
        return [self._unpack(self._store[key]) for key in keys]

    def recommend(self, history: Sequence[str], k: int) -> list[str]:
        return [candidate.item_id for candidate in self.recall(history, k)]

    def _pack(self, candidates: Sequence[RecallCandidate]) -> _Entry:
        items = np.array([self._intern(c.item_id) for c in candidates], dtype=np.int32)
        scores = np.array([c.score for c in candidates], dtype=np.float64)
        sets = np.array([self._intern_set(frozenset(c.channels)) for c in candidates], dtype=np.int32)
        reasons = np.array([-1 if c.because is None else self._intern(c.because) for c in candidates], dtype=np.int32)
        return items, scores, sets, reasons

    def _unpack(self, entry: _Entry) -> list[RecallCandidate]:
        items, scores, sets, reasons = (a.tolist() for a in entry)
        return [RecallCandidate(self._names[i], s, set(self._sets[c]), None if r < 0 else self._names[r])
                for i, s, c, r in zip(items, scores, sets, reasons)]  # fmt: skip

    def _intern(self, name: str) -> int:
        number = self._number.get(name)
        if number is None:
            number = self._number[name] = len(self._names)
            self._names.append(name)
        return number

    def _intern_set(self, channels: frozenset[str]) -> int:
        number = self._set_number.get(channels)
        if number is None:
            number = self._set_number[channels] = len(self._sets)
            self._sets.append(channels)
        return number
