"""The `Policy` interface of the explore stage and what it consumes and returns.

A policy gets the ranked candidates (ids and ranker scores, best first), the number of slots k, a
random generator (seeded in tests, fresh per request in serving) and the statistics it needs, and
returns k shown items, each with its *propensity*: the marginal probability, under the policy
given this ranked input and these statistics, that this item is placed in this slot. Off-policy
estimators weight logged clicks by 1 / propensity (Li et al., WSDM 2011, "Unbiased offline
evaluation of contextual-bandit-based news article recommendation algorithms").
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ranked:
    """The ranker's output for one request: ids and scores in rank order (best first)."""

    item_ids: tuple[str, ...]
    scores: np.ndarray

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.scores):
            raise ValueError(f"{len(self.item_ids)} ids but {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class ItemCounts:
    """Position-debiased feedback per candidate, aligned with `Ranked.item_ids`: expected
    examinations Σ_k θ_k · impressions_{i,k} (`feature_store.position_bias`) and attributed clicks."""

    examined: np.ndarray
    clicks: np.ndarray


@dataclass(frozen=True)
class LinearStats:
    """Disjoint LinUCB statistics per candidate, in the form its score reads, and the request's
    context x (d,), the same for every candidate (`services.explore.linucb`):

    - `theta` (n, d): θ_i = A_i⁻ᵀ b_i, so that xᵀθ_i = (A_i⁻¹x)ᵀ b_i;
    - `quad` (n, d(d+1)/2): the coefficients of the quadratic form xᵀA_i⁻¹x = Σ_{j≤k} c_{i,jk} x_j x_k,
      i.e. A_i⁻¹'s upper triangle row by row, each off-diagonal entry plus its mirror
      (c_jk = A⁻¹_jk + A⁻¹_kj, c_jj = A⁻¹_jj).

    Per item they are one row of `pack`: what a cache keeps, so that a request gathers
    d + d(d+1)/2 floats per candidate instead of d² + d and needs no matrix product."""

    theta: np.ndarray
    quad: np.ndarray
    context: np.ndarray

    @staticmethod
    def pack(A_inv: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Rows [θ_i | c_i] (n, d + d(d+1)/2) of A⁻¹ (n, d, d) and b (n, d)."""
        n, d = b.shape
        upper, lower = triangle(d)
        flat = A_inv.reshape(n, d * d)
        quad = flat.take(upper * d + lower, axis=1) + flat.take(lower * d + upper, axis=1)
        quad[:, upper == lower] *= 0.5  # exact: each diagonal entry was added to itself
        return np.concatenate([np.matmul(b[:, None, :], A_inv)[:, 0], quad], axis=1)  # bᵀA⁻¹ = θᵀ

    @classmethod
    def from_packed(cls, packed: np.ndarray, context: np.ndarray) -> LinearStats:
        """The statistics of `pack`'s rows (one per candidate) with the request's context."""
        d = len(context)
        return cls(packed[:, :d], packed[:, d:], context)

    @classmethod
    def from_inverse(cls, A_inv: np.ndarray, b: np.ndarray, context: np.ndarray) -> LinearStats:
        """The statistics of A⁻¹ (n, d, d) and b (n, d) with the request's context."""
        return cls.from_packed(cls.pack(A_inv, b), context)

    def quadratic_terms(self) -> np.ndarray:
        """x_j x_k for j ≤ k, in `quad`'s order."""
        upper, lower = triangle(len(self.context))
        return np.outer(self.context, self.context)[upper, lower]


@functools.cache
def triangle(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a d × d upper triangle, row by row (`np.triu_indices`)."""
    return np.triu_indices(d)


Stats = ItemCounts | LinearStats | None
Deferred = Callable[[], tuple[float, ...]]
"""A slate's propensities computed later, off the request path (`Policy.choose_deferred`)."""


@dataclass(frozen=True)
class Slate:
    """The shown items, slot by slot, with the propensity of each placement."""

    item_ids: tuple[str, ...]
    propensities: tuple[float, ...]
    positions: tuple[int, ...]  # index of each shown item in `Ranked.item_ids`


class Policy(ABC):
    """Chooses k shown items from the ranked candidates."""

    #: How the policy is named in settings, responses and impressions.
    name: str
    #: The statistics it reads: None, ItemCounts or LinearStats.
    needs: type | None = None
    #: Whether `choose` gives one slate for given inputs (every propensity 1).
    deterministic: bool = True

    @abstractmethod
    def choose(self, ranked: Ranked, k: int, rng: np.random.Generator, stats: Stats = None) -> Slate:
        """min(k, len(ranked)) shown items with the propensity of each (item, slot)."""

    def choose_deferred(self, ranked: Ranked, k: int, rng: np.random.Generator,
                        stats: Stats = None) -> tuple[Slate, Deferred | None]:
        """The slate of `choose` and, where its propensities are costly (Thompson's estimate), a
        callable that computes them later with `rng` (the slate's propensities are then NaN); else
        `choose`'s slate and None."""
        return self.choose(ranked, k, rng, stats), None

    def placement(self, ranked: Ranked, items: Sequence[int], k: int, rng: np.random.Generator,
                  stats: Stats = None) -> np.ndarray:
        """P(ranked[items[m]] at slot j) as an (len(items), k) matrix (what off-policy evaluation
        needs of a policy). A deterministic policy: 1 where its own slate has the item, else 0; a
        randomised one overrides this."""
        own = self.choose(ranked, k, rng, stats).positions
        return np.array([[float(slot < len(own) and own[slot] == index) for slot in range(k)] for index in items])

    @property
    def label(self) -> str:
        """The name with its parameters, as logged in impressions."""
        return self.name


def top_k_slate(ranked: Ranked, order: np.ndarray, k: int) -> Slate:
    """A deterministic slate: the first k of `order` (indices into `ranked`), each with propensity 1."""
    chosen = [int(i) for i in order[:k]]
    return Slate(tuple(ranked.item_ids[i] for i in chosen), (1.0,) * len(chosen), tuple(chosen))
