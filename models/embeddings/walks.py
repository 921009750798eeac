"""Random walks on a weighted directed item graph, vectorized: every walker advances one step
per numpy pass.

- DeepWalk (Perozzi et al. 2014), weighted: the next node is an out-neighbour drawn in proportion
  to the edge weight, in O(1) per draw with per-node alias tables (Walker/Vose).
- Node2vec (Grover & Leskovec 2016): having come from t to v, the next node x is drawn with
  probability ∝ w(v, x) · α(t, x), α = 1/p when x = t, 1 when x links to t, 1/q otherwise.
  Draws use the first-order alias tables plus rejection (accept with α / max α), which is exact
  and needs O(E) memory instead of the O(Σ deg²) of per-edge alias tables. "x links to t" follows
  the reference implementation: the edge x → t exists.

A walk stops early at a node without out-edges; walks shorter than two nodes are dropped.
This module runs on one machine; a Spark job for graphs that do not fit is a separate piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class ItemGraph:
    """A weighted directed graph in CSR form: node i's out-edges are
    `targets[indptr[i]:indptr[i+1]]` with `weights[...]`; `ids[i]` is node i's item id."""

    ids: np.ndarray  # str [N]
    indptr: np.ndarray  # int64 [N + 1]
    targets: np.ndarray  # int64 [E], sorted within each node
    weights: np.ndarray  # float64 [E]

    @classmethod
    def from_edges(cls, src: Sequence[str], dst: Sequence[str], weight: Sequence[float]) -> "ItemGraph":
        """Build from edge arrays (the batch layer's src, dst, weight columns); duplicate edges
        are summed, non-positive weights rejected."""
        weight_array = np.asarray(weight, dtype=np.float64)
        if len(src) != len(dst) or len(src) != len(weight_array):
            raise ValueError(f"edge arrays differ in length: {len(src)} src, {len(dst)} dst, {len(weight_array)} weight")
        if len(weight_array) and (not np.all(np.isfinite(weight_array)) or weight_array.min() <= 0):
            bad = int(np.argmax(~np.isfinite(weight_array) | (weight_array <= 0)))
            raise ValueError(f"edge {bad} ({src[bad]} -> {dst[bad]}) has invalid weight {weight_array[bad]}")
        ids, inverse = np.unique(np.concatenate([np.asarray(src, str), np.asarray(dst, str)]), return_inverse=True)
        s, d = inverse[: len(src)], inverse[len(src) :]
        keys, key_index = np.unique(s * len(ids) + d, return_inverse=True)
        summed = np.bincount(key_index, weights=weight_array, minlength=len(keys))
        sources, targets = keys // len(ids), keys % len(ids)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(sources, minlength=len(ids)))])
        return cls(ids, indptr.astype(np.int64), targets.astype(np.int64), summed)

    @property
    def out_degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @cached_property
    def _edge_keys(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.ids)), self.out_degree) * len(self.ids) + self.targets

    def has_edge(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Vectorized edge test: targets are sorted per node, so keys are globally sorted."""
        keys = self._edge_keys
        wanted = src * len(self.ids) + dst
        found = np.searchsorted(keys, wanted)
        found = np.minimum(found, len(keys) - 1)
        return keys[found] == wanted if len(keys) else np.zeros(len(src), bool)


@dataclass(frozen=True)
class AliasTables:
    """Per-node alias tables laid out along the CSR edge array."""

    probability: np.ndarray  # float64 [E]
    alias: np.ndarray  # int64 [E], an edge position within the same node

    @classmethod
    def build(cls, graph: ItemGraph) -> "AliasTables":
        probability = np.ones(len(graph.targets))
        alias = np.arange(len(graph.targets))
        for node in np.nonzero(graph.out_degree > 1)[0]:
            start, end = graph.indptr[node], graph.indptr[node + 1]
            p, a = _vose(graph.weights[start:end])
            probability[start:end], alias[start:end] = p, a + start
        return cls(probability, alias)

    def draw(self, graph: ItemGraph, nodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One out-neighbour per entry of `nodes` (each must have out-degree > 0)."""
        degree = graph.out_degree[nodes]
        slot = graph.indptr[nodes] + (rng.random(len(nodes)) * degree).astype(np.int64)
        edge = np.where(rng.random(len(nodes)) < self.probability[slot], slot, self.alias[slot])
        return graph.targets[edge]


def _vose(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = len(weights)
    scaled = weights * n / weights.sum()
    probability, alias = np.ones(n), np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        probability[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return probability, alias


class RandomWalker:
    """Generates DeepWalk (p = q = 1) or Node2vec walks from every node with out-edges."""

    def __init__(self, graph: ItemGraph, p: float = 1.0, q: float = 1.0, seed: int = 0) -> None:
        if p <= 0 or q <= 0:
            raise ValueError(f"node2vec parameters must be positive, got p={p}, q={q}")
        self.graph, self.p, self.q = graph, p, q
        self.alias = AliasTables.build(graph)
        self.rng = np.random.default_rng(seed)

    def walks(self, walks_per_node: int, walk_length: int) -> np.ndarray:
        """int64 [walks, walk_length] node indices, -1 after a dead end."""
        starts = np.repeat(np.nonzero(self.graph.out_degree > 0)[0], walks_per_node)
        self.rng.shuffle(starts)
        paths = np.full((len(starts), walk_length), -1, dtype=np.int64)
        paths[:, 0] = starts
        for step in range(1, walk_length):
            alive = np.nonzero(paths[:, step - 1] >= 0)[0]
            alive = alive[self.graph.out_degree[paths[alive, step - 1]] > 0]
            if len(alive) == 0:
                break
            previous = paths[alive, step - 2] if step >= 2 else None
            paths[alive, step] = self._next(paths[alive, step - 1], previous)
        return paths

    def item_walks(self, walks_per_node: int, walk_length: int) -> list[list[str]]:
        """Walks as item-id sequences, ready for the skip-gram trainer."""
        ids = self.graph.ids
        return [ids[row[row >= 0]].tolist() for row in self.walks(walks_per_node, walk_length) if row[1] >= 0]

    def _next(self, current: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        proposal = self.alias.draw(self.graph, current, self.rng)
        if previous is None or (self.p == 1.0 and self.q == 1.0):
            return proposal
        # Rejection: redraw the rejected walkers until every one has accepted a proposal.
        max_alpha = max(1.0 / self.p, 1.0, 1.0 / self.q)
        pending = np.arange(len(current))
        while len(pending):
            alpha = self._alpha(previous[pending], proposal[pending])
            accepted = self.rng.random(len(pending)) * max_alpha < alpha
            pending = pending[~accepted]
            if len(pending):
                proposal[pending] = self.alias.draw(self.graph, current[pending], self.rng)
        return proposal

    def _alpha(self, previous: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        linked = self.graph.has_edge(candidate, previous)
        return np.where(candidate == previous, 1.0 / self.p, np.where(linked, 1.0, 1.0 / self.q))
