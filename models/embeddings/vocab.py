"""Item vocabulary and the flat (CSR) encoding of many sequences that the pair generator needs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Vocabulary:
    """Item ids (most frequent first) and their counts in the training sequences."""

    ids: np.ndarray  # str, shape [V]
    counts: np.ndarray  # int64, shape [V]

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {item: position for position, item in enumerate(self.ids.tolist())}


@dataclass(frozen=True)
class EncodedSequences:
    """All sequences as one int32 token array plus a sequence number per token.

    Items outside the vocabulary are dropped; sequences left with fewer than two tokens are
    dropped too (they produce no pair).
    """

    tokens: np.ndarray  # int32 [N]
    sequence_of: np.ndarray  # int64 [N], non-decreasing

    def __len__(self) -> int:
        return len(self.tokens)

    def chunks(self, max_tokens: int) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """Slices of at most ~`max_tokens` tokens that never split a sequence (bounded memory)."""
        start = 0
        total = len(self.tokens)
        while start < total:
            end = min(start + max_tokens, total)
            if end < total:
                # Move the cut back to a sequence boundary (unless one sequence alone is longer).
                boundary = np.searchsorted(self.sequence_of, self.sequence_of[end], side="left")
                end = boundary if boundary > start else end
            yield self.tokens[start:end], self.sequence_of[start:end]
            start = end


def encode_corpus(sequences: Iterable[Sequence[str]], min_count: int = 1) -> tuple[Vocabulary, EncodedSequences]:
    """The vocabulary of items seen at least `min_count` times in sequences that make pairs (most
    frequent first, ties in order of first appearance) and those sequences encoded with it, in one
    Python pass over the items (the rest is numpy): the trainer's start-up cost on every fit.

    Only occurrences that can be trained count: an item seen only in sequences of one item (or
    left alone there by rarer items) is not in the vocabulary, so it gets no untrained vector."""
    names, tokens, sequence_of = _number_items(sequences)
    if len(tokens) == 0:
        raise ValueError("no sequence has two or more known items: nothing to train on")
    tokens, sequence_of, counts = _prune(tokens, sequence_of, len(names), max(min_count, 1))
    if len(tokens) == 0:
        raise ValueError(
            f"no sequence has two or more known items seen at least min_count={min_count} times"
        )
    order = np.argsort(-counts, kind="stable")  # ties: first appearance first
    kept = order[counts[order] > 0]
    index = np.full(len(names), -1, dtype=np.int64)
    index[kept] = np.arange(len(kept))
    vocabulary = Vocabulary(np.array(names, dtype=str)[kept], counts[kept].astype(np.int64))
    renumbered = np.unique(sequence_of, return_inverse=True)[1].reshape(-1).astype(np.int64)
    return vocabulary, EncodedSequences(index[tokens].astype(np.int32), renumbered)


def _number_items(sequences: Iterable[Sequence[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Items numbered in order of first appearance, and the tokens and sequence number of every
    sequence of two or more items (shorter ones make no pair)."""
    first_seen: dict[str, int] = {}
    numbers: list[int] = []
    lengths: list[int] = []
    for sequence in sequences:
        if len(sequence) < 2:
            continue
        before = len(numbers)
        numbers.extend(first_seen.setdefault(str(item), len(first_seen)) for item in sequence)
        lengths.append(len(numbers) - before)
    sequence_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return list(first_seen), np.array(numbers, dtype=np.int64), sequence_of


def _prune(
    tokens: np.ndarray, sequence_of: np.ndarray, items: int, min_count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop items seen fewer than `min_count` times, then sequences left with fewer than two
    tokens, until neither drops anything; returns the tokens, their sequences and the item counts.
    Repeated because a dropped sequence lowers its items' counts (and may leave one item with no
    other sequence)."""
    while True:
        counts = np.bincount(tokens, minlength=items)
        frequent = (counts >= min_count)[tokens]
        if frequent.all():
            return tokens, sequence_of, counts
        tokens, sequence_of = _drop_short_sequences(tokens[frequent], sequence_of[frequent])


def _drop_short_sequences(
    tokens: np.ndarray, sequence_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens of the sequences that hold two or more (sequence numbers kept)."""
    long_enough = np.bincount(sequence_of, minlength=int(sequence_of.max(initial=-1)) + 1) >= 2
    kept = long_enough[sequence_of]
    return tokens[kept], sequence_of[kept]
