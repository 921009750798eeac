"""Ranker artifacts: a SavedModel with the compiled endpoints, the feature spec, and a manifest
published through the model registry under role ``ranker``.

Artifact folder::

    saved_model/         Keras 3 `ExportArchive`: endpoints ``score_user`` (also
                         ``serving_default``) and ``score_batch``; load with
                         ``tf.saved_model.load(path)`` and call them with the input dict
    feature_spec.json    vocabularies, dense scaling, sequence cap (`FeatureSpec`)

Keras 3 note: ``model.save()`` writes the ``.keras`` format, not a SavedModel; a SavedModel comes
from ``model.export()`` or `keras.export.ExportArchive`, which we use to register our own
``tf.function`` endpoints (dict inputs, fixed signatures). The `StringLookup` tables are tracked
automatically, so raw string ids go in.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from models.ranking import samples
from models.ranking.base import Ranker
from models.ranking.features import FeatureSpec
from models.ranking.inference import CompiledScorer
from models.ranking.trainer import TrainConfig, TrainResult
from models.registry import ModelRegistry

ROLE = "ranker"
SAVED_MODEL = "saved_model"
FEATURE_SPEC = "feature_spec.json"


def export_ranker(model: Ranker, out_dir: Path) -> Path:
    """Write the SavedModel and feature spec of ``model`` into ``out_dir`` (created, must be empty)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise FileExistsError(f"export folder {out_dir} is not empty")
    scorer = CompiledScorer(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # Keras tracks StringLookup tables through the model only for some model layouts (Wide&Deep
    # failed with an "untracked resource" error), so track them explicitly.
    for lookup in (model.item_lookup, model.category_lookup):
        archive.track(lookup.lookup_table)
    archive.add_endpoint("score_user", scorer.score_user)
    archive.add_endpoint("score_batch", scorer.score_batch)
    archive.write_out(str(out_dir / SAVED_MODEL), verbose=False)
    model.spec.save(out_dir / FEATURE_SPEC)
    return out_dir


def load_exported(artifact_dir: Path) -> tuple[Any, FeatureSpec]:
    """The loaded SavedModel (call ``.score_user`` / ``.score_batch``) and its feature spec."""
    return tf.saved_model.load(str(artifact_dir / SAVED_MODEL)), FeatureSpec.load(
        artifact_dir / FEATURE_SPEC
    )


def build_manifest(
    model: Ranker, config: TrainConfig, result: TrainResult, metrics: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Manifest for the registry: features used, params, data window, metrics (checksums are added
    by the registry when it publishes)."""
    spec = model.spec
    return {
        "model": model.kind,
        "features": {
            "sparse": list(samples.SPARSE_INPUTS),
            "sequence": list(samples.SEQUENCE_INPUTS),
            "dense": list(spec.dense_features),
            "max_seq_len": spec.max_seq_len,
            "item_vocab_size": len(spec.item_vocab),
            "category_vocab_size": len(spec.category_vocab),
        },
        "params": {"model": model.params(), "training": asdict(config)},
        "data_window": {
            "start": spec.data_start,
            "end": spec.data_end,
            "train_rows": spec.train_rows,
        },
        "metrics": metrics,
        "training": {
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "samples_per_second": result.samples_per_second,
            "device": result.device,
            "tensorflow": tf.__version__,
        },
        "endpoints": ["score_user", "score_batch"],
    }


def publish_ranker(
    registry: ModelRegistry, artifact_dir: Path, manifest: dict[str, Any], set_current: bool = True
) -> str:
    """Publish ``artifact_dir`` as a new ``ranker`` version; optionally make it current."""
    version = registry.publish(ROLE, artifact_dir, manifest)
    if set_current:
        registry.set_current(ROLE, version)
    return version

