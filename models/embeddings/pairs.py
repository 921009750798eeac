"""Vectorized skip-gram pair generation: subsampling, dynamic windows, the negative-sampling table.

Everything here works on whole token arrays at once (one numpy pass per window offset), never a
Python loop per pair; this is what keeps the trainer fed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from models.embeddings.vocab import EncodedSequences


def keep_probabilities(counts: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling: keep an occurrence of item w with probability
    ``(sqrt(f(w)/t) + 1) * t / f(w)`` (capped at 1), f the item's frequency, t = `sample`.

    Mikolov et al. 2013, "Distributed Representations of Words and Phrases", section 2.3, as
    implemented in word2vec.c and gensim. `sample <= 0` disables subsampling.
    """
    if sample <= 0:
        return np.ones(len(counts), dtype=np.float64)
    frequency = counts / counts.sum()
    return np.minimum((np.sqrt(frequency / sample) + 1.0) * sample / frequency, 1.0)


def unigram_table(counts: np.ndarray, exponent: float = 0.75, size: int | None = None) -> np.ndarray:
    """A table of item indices where item w fills a share ``count(w)^exponent / Z`` of the slots:
    drawing a uniform slot draws a negative from the smoothed unigram distribution."""
    size = size or int(min(max(1_000_000, 100 * len(counts)), 50_000_000))
    weights = counts.astype(np.float64) ** exponent
    slots = np.floor(np.cumsum(weights) / weights.sum() * size).astype(np.int64)
    repeats = np.diff(np.concatenate([[0], slots]))
    return np.repeat(np.arange(len(counts), dtype=np.int32), repeats)


def skipgram_pairs(
    tokens: np.ndarray,
    sequence_of: np.ndarray,
    window: int,
    keep_probability: np.ndarray,
    rng: np.random.Generator,
    shrink_window: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """All (target, context) pairs of a token slice, shuffled.

    Tokens are first subsampled; then each remaining token, as target, pairs with every token
    at most `reach` positions away in the same sequence, where `reach` is drawn uniformly from
    1..window per target when `shrink_window` (word2vec's dynamic window), else `window`.
    """
    kept = rng.random(len(tokens)) < keep_probability[tokens]
    tokens, sequence_of = tokens[kept], sequence_of[kept]
    if shrink_window:
        reach = rng.integers(1, window + 1, size=len(tokens))
    else:
        reach = np.full(len(tokens), window)
    targets: list[np.ndarray] = []
    contexts: list[np.ndarray] = []
    for offset in range(1, window + 1):
        same_sequence = sequence_of[:-offset] == sequence_of[offset:]
        forward = np.nonzero(same_sequence & (reach[:-offset] >= offset))[0]
        backward = np.nonzero(same_sequence & (reach[offset:] >= offset))[0]
        targets += [tokens[forward], tokens[backward + offset]]
        contexts += [tokens[forward + offset], tokens[backward]]
    target = np.concatenate(targets) if targets else np.empty(0, np.int32)
    context = np.concatenate(contexts) if contexts else np.empty(0, np.int32)
    order = rng.permutation(len(target))
    return target[order], context[order]


@dataclass(frozen=True)
class PairChunk:
    """The shuffled pairs of one token chunk and the share of training done before/after it."""

    targets: np.ndarray  # int32 [P]
    contexts: np.ndarray  # int32 [P]
    start: float
    end: float


def pair_chunks(
    corpus: EncodedSequences,
    keep_probability: np.ndarray,
    window: int,
    epochs: int,
    rng: np.random.Generator,
    shrink_window: bool = True,
    chunk_tokens: int = 1_000_000,
) -> Iterator[PairChunk]:
    """The pairs of every epoch, generated one token chunk at a time (memory bounded by the
    chunk, not the corpus)."""
    total = len(corpus) * epochs
    done = 0
    for _ in range(epochs):
        for tokens, sequence_of in corpus.chunks(chunk_tokens):
            target, context = skipgram_pairs(tokens, sequence_of, window, keep_probability, rng, shrink_window)
            yield PairChunk(target.astype(np.int32), context.astype(np.int32), done / total, (done + len(tokens)) / total)
            done += len(tokens)
