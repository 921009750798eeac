"""The blend's reasons for the items several list models show one user, from one call.

`BlendedRecall.reasons` re-scores the user's history with each tried item removed (leave-one-out,
every channel over the whole catalog) and then reads off the items asked for, each on its own: the
re-scoring is the cost and does not depend on the items. The evaluation counts the reasons of two
lists per user over the same blend ("blend" and "blend -> ranker"), so asking once for the union
of the shown items gives every item the reason it would get alone, at about half the cost (the
reasons count on Amazon Toys was 4.7 CPU-min of a 24 CPU-min evaluation)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any


class SharedReasons:
    """Register every list first (`want`), then read each list's reasons (`reasons`): per (stage,
    history), the stage's `reasons` is called once, for the union of the items registered, in order
    of first registration (or `fill` finds them for many histories at once). `recent` is passed on
    (`BlendedRecall.reasons`)."""

    def __init__(self, recent: int | None = None) -> None:
        self.recent = recent
        self._wanted: dict[tuple[int, tuple[str, ...]], dict[str, None]] = {}
        self._found: dict[tuple[int, tuple[str, ...]], dict[str, Hashable | None]] = {}
        self._stages: dict[int, Any] = {}  # holds each stage, so its id is not reused while keyed

    def want(self, stage: Any, history: Sequence[str], items: Sequence[str]) -> None:
        """Note that `items` will be asked for this history of `stage` (a recall stage with `reasons`)."""
        key = (id(stage), tuple(history))
        self._stages[id(stage)] = stage
        self._wanted.setdefault(key, {}).update(dict.fromkeys(items))
        self._found.pop(key, None)  # a later registration widens the call

    def fill(self, stage: Any, histories: Sequence[Sequence[str]]) -> None:
        """Find the registered items' reasons of every history of `histories` not found yet in one
        `stage.reasons_many` call (`BlendedRecall` batches the re-scoring across histories)."""
        keys = list(dict.fromkeys((id(stage), tuple(history)) for history in histories))
        missing = [key for key in keys if key not in self._found and self._wanted.get(key)]
        if not missing:
            return
        unions = [list(self._wanted[key]) for key in missing]
        found = stage.reasons_many([list(history) for _, history in missing], unions, self.recent)
        for key, union, why in zip(missing, unions, found):
            self._found[key] = dict(zip(union, why))

    def reasons(self, stage: Any, history: Sequence[str], items: Sequence[str]) -> list[Hashable | None]:
        """`stage.reasons(history, items, recent)`, item for item, from the one call per history."""
        key = (id(stage), tuple(history))
        found = self._found.get(key)
        if found is None or any(item not in found for item in items):
            union = list({**self._wanted.get(key, {}), **dict.fromkeys(items)})
            self._wanted[key] = dict.fromkeys(union)
            found = self._found[key] = dict(zip(union, stage.reasons(list(history), union, self.recent)))
        return [found[item] for item in items]
