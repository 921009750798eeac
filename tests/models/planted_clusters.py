"""Synthetic data with planted item clusters, shared by the embedding tests."""

from __future__ import annotations

import numpy as np

CLUSTERS = 8
PER_CLUSTER = 30


def cluster_of(item: str) -> int:
    return int(item[1:]) // PER_CLUSTER


def planted_sequences(users: int = 400, length: int = 20, seed: int = 0) -> list[list[str]]:
    """Each user browses one cluster (with 10% noise items from anywhere)."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(users):
        cluster = rng.integers(CLUSTERS)
        items = cluster * PER_CLUSTER + rng.integers(0, PER_CLUSTER, length)
        noise = rng.random(length) < 0.1
        items[noise] = rng.integers(0, CLUSTERS * PER_CLUSTER, noise.sum())
        sequences.append([f"i{i}" for i in items])
    return sequences


def planted_graph(seed: int = 0) -> tuple[list[str], list[str], list[float]]:
    """Dense heavy edges within clusters, a few light edges across."""
    rng = np.random.default_rng(seed)
    src, dst, weight = [], [], []
    items = CLUSTERS * PER_CLUSTER
    for a in range(items):
        for b in rng.choice(PER_CLUSTER, 8, replace=False) + (a // PER_CLUSTER) * PER_CLUSTER:
            if a != b:
                src.append(f"i{a}"), dst.append(f"i{b}"), weight.append(float(rng.integers(1, 5)))
        b = rng.integers(items)
        src.append(f"i{a}"), dst.append(f"i{b}"), weight.append(0.5)
    return src, dst, weight


def same_cluster_precision(ids: np.ndarray, vectors: np.ndarray, k: int = 10) -> float:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    top = np.argsort(-similarity, axis=1)[:, :k]
    clusters = np.array([cluster_of(item) for item in ids])
    return float(np.mean(clusters[top] == clusters[:, None]))
