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
    """The vocabulary of items seen at least `min_count` times (most frequent first, ties in order
    of first appearance) and the sequences encoded with it, in one Python pass over the items
    (the rest is numpy): the trainer's start-up cost on every fit."""
    first_seen: dict[str, int] = {}  # item -> number in order of first appearance
    numbers: list[int] = []
    lengths: list[int] = []
    for sequence in sequences:
        before = len(numbers)
        numbers.extend(first_seen.setdefault(str(item), len(first_seen)) for item in sequence)
        lengths.append(len(numbers) - before)
    tokens = np.array(numbers, dtype=np.int64)
    counts = np.bincount(tokens, minlength=len(first_seen))
    order = np.argsort(-counts, kind="stable")  # ties: first appearance first
    kept = order[counts[order] >= min_count]
    if len(kept) == 0:
        raise ValueError(f"no item occurs at least min_count={min_count} times in the sequences")
    index = np.full(len(first_seen), -1, dtype=np.int64)
    index[kept] = np.arange(len(kept))
    vocabulary = Vocabulary(np.array(list(first_seen), dtype=str)[kept], counts[kept].astype(np.int64))
    return vocabulary, _drop_short_sequences(index[tokens], np.repeat(np.arange(len(lengths)), lengths))


def _drop_short_sequences(tokens: np.ndarray, sequence_of: np.ndarray) -> EncodedSequences:
    """Drop unknown tokens (-1), then sequences left with fewer than two, renumbering the rest."""
    known = tokens >= 0
    tokens, sequence_of = tokens[known], sequence_of[known]
    long_enough = np.bincount(sequence_of, minlength=int(sequence_of.max(initial=-1)) + 1) >= 2
    kept = long_enough[sequence_of]
    if not kept.any():
        raise ValueError("no sequence has two or more known items: nothing to train on")
    renumbered = np.cumsum(long_enough) - 1
    return EncodedSequences(tokens[kept].astype(np.int32), renumbered[sequence_of[kept]])
