"""The quality gate: bless a candidate only if it is no worse than the blessed version minus δ and
above absolute floors, on the held-out newest slice (TFX's Evaluator blessing, with thresholds).

Rule, per metric m with delta δ_m and floor f_m (settings `training.gate`):

    pass_m = isfinite(m(candidate)) and m(candidate) >= f_m
             and (no baseline or m(candidate) >= m(baseline) - δ_m)

and the candidate is blessed when every pass_m holds and its sanity checks find nothing (a
non-empty index, finite vectors).

Floors. The ranker's are configured AUC and GAUC values above 0.5, which is chance for both. The
recall floors are computed per run from chance: a uniformly random ranking of the catalog the
candidate trained on (history excluded) has the expected metric c_m on this held-out window
(`chance_metrics`), and f_m = min(λ · c_m, (1 + c_m) / 2) with λ = `recall_floor_over_chance`.
Why λ = 3 by default: a random ranker's HR@K over n held-out users is Binomial(n, c)/n, and by
the Chernoff bound P(X >= 3nc) <= (e²/27)^(nc): 7.5% at nc = 2, 3.2% on ml-100k's window (76
users, c = 0.035, nc = 2.7), below 0.2% once nc >= 5 (a bound: the exact binomial tail is lower,
and a random ranker must clear the NDCG@10 floor too); trained models sit far above it (ml-100k:
HR@50 9x and NDCG@10 19x chance). The cap keeps the floor reachable on a catalog so small that
λ · c_m nears 1. On a held-out window where a random ranking expects fewer HR@50 hits than
`recall_min_chance_hits` (2), the floors cannot tell a model from chance, and the candidate is
rejected for it (`window_problems`).

The baseline is the version the candidate would replace: the role's current one; before anything
is current, the newest blessed one (if any). A baseline that cannot be read or scored on the
held-out data (its folder deleted, a damaged file, a missing feature column) is recorded and only
the floors apply.

Recall is scored with `models.evaluation.evaluate` (NDCG@10, HR@50, full ranking) on what the
API serves from the artifact: its learned blend when it has one, else its embedding channels,
without the popular fallback (which would hide a broken model); the ranker with `models.ranking.metrics.evaluate` (AUC, GAUC) on the ranking
samples' test split, through each version's published SavedModel (the artifact that would serve).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.settings import GateSettings
from models.evaluation import LeaveLastOut, evaluate
from models.registry import ModelRegistry, ModelVersion
from models.retrieval.artifact import RecallArtifact
from models.retrieval.multichannel import EmbeddingNeighbourChannel, MultiChannelRecall

RECALL_METRICS = ("NDCG@10", "HR@50")
RANKER_METRICS = ("auc", "gauc")


@dataclass
class Check:
    metric: str
    candidate: float | None
    baseline: float | None
    floor: float
    delta: float
    passed: bool


@dataclass
class GateDecision:
    """What the gate decided for one role, and every number it decided on."""

    role: str
    candidate: str
    baseline: str | None
    blessed: bool
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    held_out: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def thresholds(role: str, gate: GateSettings, chance: dict[str, float] | None = None) -> dict[str, tuple[float, float]]:
    """metric -> (delta, floor) for `role`; recall's floors from its `chance` metrics (see above)."""
    if role == "recall":
        if chance is None:
            raise ValueError("recall floors need the chance level of the held-out window")
        floors = {m: min(gate.recall_floor_over_chance * chance[m], (1.0 + chance[m]) / 2) for m in RECALL_METRICS}
        return {"NDCG@10": (gate.recall_ndcg_at_10_delta, floors["NDCG@10"]),
                "HR@50": (gate.recall_hr_at_50_delta, floors["HR@50"])}  # fmt: skip
    return {"auc": (gate.ranker_auc_delta, gate.ranker_auc_floor), "gauc": (gate.ranker_gauc_delta, gate.ranker_gauc_floor)}


def decide(role: str, candidate: str, metrics: dict[str, float], baseline: str | None,
           baseline_metrics: dict[str, float] | None, limits: dict[str, tuple[float, float]],
           problems: list[str]) -> GateDecision:  # fmt: skip
    """Apply the rule above to measured metrics."""
    checks = []
    for metric, (delta, floor) in limits.items():
        value = _finite(metrics.get(metric))
        base = _finite((baseline_metrics or {}).get(metric))
        passed = value is not None and value >= floor and (base is None or value >= base - delta)
        checks.append(Check(metric, value, base, floor, delta, passed))
    blessed = not problems and all(check.passed for check in checks)
    return GateDecision(role, candidate, baseline, blessed, checks, list(problems))


def baseline_name(registry: ModelRegistry, role: str) -> str | None:
    """The gate's baseline: the current version (what promotion would replace), else the newest
    blessed one. Only its name: a version that cannot be read is the evaluation's to record."""
    return registry.current_name(role) or registry.blessed_name(role)


def load_recall(version: ModelVersion) -> RecallArtifact:
    """The artifact with its blend, when it has one (what the API serves)."""
    artifact = RecallArtifact.load(version.path, [str(name) for name in version.manifest.get("models", [])])
    found = RecallArtifact.load_blend(version.path)
    if found is not None:
        artifact.blend, artifact.order = found
    return artifact


def recall_problems(artifact: RecallArtifact) -> list[str]:
    """Sanity checks a recall artifact must pass whatever its metrics."""
    problems = []
    if not artifact.embeddings:
        problems.append("no embedding model")
    for name, model in artifact.embeddings.items():
        if len(model.ids) == 0 or len(artifact.indexes[name]) == 0:
            problems.append(f"{name}: empty index")
        elif not np.isfinite(model.vectors).all():
            problems.append(f"{name}: {int((~np.isfinite(model.vectors)).any(axis=1).sum())} non-finite vectors")
    return problems


def chance_metrics(split: LeaveLastOut, metrics: tuple[str, ...] = RECALL_METRICS) -> dict[str, float]:
    """Expected HR@K / NDCG@K of a uniformly random ranking on `split`, over the catalog of items
    in its training histories: for a user whose held-out item is in that catalog, with n items
    left once their history is excluded, E[HR@K] = min(K, n) / n and
    E[NDCG@K] = (1/n) Σ_{r=1}^{min(K, n)} 1 / log2(r + 1); 0 for an item outside the catalog
    (no model trained on this catalog can rank it). Averaged over users with a held-out item."""
    catalog = {item for items in split.train.values() for item in items}
    totals = dict.fromkeys(metrics, 0.0)
    for user, held_out in split.test.items():
        left = len(catalog) - len(set(split.train.get(user, ())))
        if held_out not in catalog or left <= 0:
            continue
        for name in metrics:
            kind, _, k = name.partition("@")
            depth = min(int(k), left)
            gain = depth if kind in ("HR", "Recall") else sum(1.0 / math.log2(r + 1) for r in range(1, depth + 1))
            totals[name] += gain / left
    return {name: total / max(len(split.test), 1) for name, total in totals.items()}


def window_problems(users: int, chance: dict[str, float], gate: GateSettings) -> list[str]:
    """A recall candidate cannot be judged on a window too small to tell it from chance."""
    expected = users * chance["HR@50"]
    if expected >= gate.recall_min_chance_hits:
        return []
    return [f"held-out window too small to tell a model from chance: {users} users, where a random ranking "
            f"expects {expected:.2f} HR@50 hits (training.gate.recall_min_chance_hits = {gate.recall_min_chance_hits:g})"]


def recall_quality(artifact: RecallArtifact, split: LeaveLastOut) -> dict[str, float]:
    """NDCG@10 and HR@50 on `split` of the artifact's blend when it has one, else of its
    embedding channels: the recall the API serves."""
    if artifact.blend is not None:
        return evaluate(artifact.blend, split, RECALL_METRICS)
    channels = [EmbeddingNeighbourChannel(name, artifact.embeddings[name], artifact.indexes[name])
                for name in artifact.embeddings if len(artifact.indexes[name])]  # fmt: skip
    if not channels:
        return dict.fromkeys(RECALL_METRICS, 0.0)
    return evaluate(MultiChannelRecall(channels), split, RECALL_METRICS)


def ranker_quality(artifact_dir: Path, samples_path: Path, batch_size: int = 4096) -> dict[str, float]:
    """AUC, GAUC, logloss and rows of an exported ranker on the samples' test split."""
    import tensorflow as tf

    from models.ranking import samples
    from models.ranking.dataset import iter_batches
    from models.ranking.export import load_exported
    from models.ranking.metrics import evaluate as ranking_metrics

    loaded, spec = load_exported(artifact_dir)
    users, labels, scores = [], [], []
    for batch, _ in iter_batches(samples_path, spec, "test", batch_size):
        labels.append(batch.pop(samples.LABEL))
        users.append(batch[samples.USER_ID])
        inputs = {name: tf.constant(value, tf.string if name in samples.STRING_INPUTS else tf.float32)
                  for name, value in batch.items()}  # fmt: skip
        scores.append(loaded.score_batch(inputs)["score"].numpy())
    if not labels:
        raise ValueError(f"{samples_path}: no rows with split == 'test' (the held-out window)")
    score = np.concatenate(scores)
    # Ranks of NaN scores are arbitrary, so AUC alone would not reveal a model that outputs them.
    return {**ranking_metrics(np.concatenate(users), np.concatenate(labels), score),
            "non_finite_scores": float((~np.isfinite(score)).sum())}  # fmt: skip


def ranker_problems(metrics: dict[str, float]) -> list[str]:
    """Sanity checks a ranker must pass whatever its AUC."""
    bad = int(metrics.get("non_finite_scores", 0))
    return [f"{bad} non-finite scores on the held-out rows"] if bad else []


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
