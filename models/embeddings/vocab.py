"""Item vocabulary and the flat (CSR) encoding of many sequences that the pair generator needs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Vocabulary:
    """Item ids (most frequent first) and their counts in the training sequences."""

    ids: np.ndarray  # str, shape [V]
    counts: np.ndarray  # int64, shape [V]

    @classmethod
    def build(cls, sequences: Iterable[Sequence[str]], min_count: int = 1) -> "Vocabulary":
        counter: Counter[str] = Counter()
        for sequence in sequences:
            counter.update(str(item) for item in sequence)
        kept = [(item, n) for item, n in counter.most_common() if n >= min_count]
        if not kept:
            raise ValueError(f"no item occurs at least min_count={min_count} times in the sequences")
        ids, counts = zip(*kept)
        return cls(np.array(ids, dtype=str), np.array(counts, dtype=np.int64))

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

    @classmethod
    def encode(cls, sequences: Iterable[Sequence[str]], vocabulary: Vocabulary) -> "EncodedSequences":
        lookup = vocabulary.index()
        chunks: list[np.ndarray] = []
        for sequence in sequences:
            encoded = np.fromiter((lookup[str(i)] for i in sequence if str(i) in lookup), dtype=np.int32)
            if len(encoded) >= 2:
                chunks.append(encoded)
        if not chunks:
            raise ValueError("no sequence has two or more known items: nothing to train on")
        lengths = np.array([len(chunk) for chunk in chunks])
        return cls(np.concatenate(chunks), np.repeat(np.arange(len(chunks)), lengths))

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
