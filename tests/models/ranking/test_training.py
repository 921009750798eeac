"""Rankers really train on the planted-rule samples: DIN learns the interaction LR cannot, its
attention points at the matching behaviours, shuffled labels give chance AUC, and the exported
SavedModel scores exactly like the in-memory model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
from conftest import DENSE, make_rows

from models.ranking import build_model, samples
from models.ranking.base import Ranker, expand_request
from models.ranking.dataset import build_spec, iter_batches
from models.ranking.export import ROLE, build_manifest, export_ranker, load_exported, publish_ranker
from models.ranking.inference import CompiledScorer, as_request
from models.ranking.trainer import TrainConfig, Trainer, TrainResult, seed_everything
from models.registry import ModelRegistry

CONFIG = TrainConfig(epochs=8, batch_size=128, shuffle_buffer=4000, patience=2)
SMALL_DIN = {
    "embedding_dim": 8,
    "attention_units": (16,),
    "hidden_units": (32, 16),
    "learning_rate": 1e-2,
}
SMALL_WIDE_DEEP = {
    "embedding_dim": 8,
    "hidden_units": (32, 16),
    "wide_buckets": 4096,
    "learning_rate": 1e-2,
}

pytestmark = pytest.mark.timeout(300)


def train(kind: str, path: Path, **params: object) -> tuple[Ranker, TrainResult, Trainer]:
    seed_everything(CONFIG.seed)
    model = build_model(kind, build_spec(path, DENSE, max_seq_len=12), **params)
    trainer = Trainer(model, CONFIG, show_progress=False)
    return model, trainer.fit(path), trainer


@pytest.fixture(scope="module")
def din(planted_samples: Path) -> tuple[Ranker, TrainResult, Trainer]:
    return train("din", planted_samples, **SMALL_DIN)


@pytest.fixture(scope="module")
def logistic(planted_samples: Path) -> tuple[Ranker, TrainResult, Trainer]:
    return train("lr", planted_samples)


def test_din_clearly_beats_logistic_regression(din, logistic, planted_samples: Path) -> None:
    din_auc = din[2].evaluate(planted_samples, "test")["auc"]
    lr_auc = logistic[2].evaluate(planted_samples, "test")["auc"]
    assert din_auc > 0.75
    assert din_auc > lr_auc + 0.1


def test_wide_deep_learns_the_cross_feature_and_exports(
    planted_samples: Path, logistic, tmp_path: Path
) -> None:
    model, result, trainer = train("wide_deep", planted_samples, **SMALL_WIDE_DEEP)
    assert result.validation["auc"] > logistic[1].validation["auc"] + 0.1
    assert trainer.evaluate(planted_samples, "test")["gauc"] > 0.6
    loaded, spec = load_exported(export_ranker(model, tmp_path / "artifact"))
    batch, _ = next(iter_batches(planted_samples, spec, "test", 64))
    batch.pop(samples.LABEL)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    np.testing.assert_allclose(
        loaded.score_batch(tensors)["score"].numpy(), tf.sigmoid(model(tensors)).numpy(), atol=1e-6
    )


def test_din_attention_is_higher_on_matching_behaviours(din, planted_samples: Path) -> None:
    model = din[0]
    batch, _ = next(iter_batches(planted_samples, model.spec, "test", 1000))
    batch.pop(samples.LABEL)
    _, attention = model.forward({k: tf.constant(v) for k, v in batch.items()})
    attention = attention.numpy()
    history = batch[samples.HIST_CATEGORIES]
    matching = (history == batch[samples.ITEM_CATEGORY][:, None]) & (history != "")
    other = (history != batch[samples.ITEM_CATEGORY][:, None]) & (history != "")
    mixed = matching.any(axis=1) & other.any(axis=1)
    assert mixed.sum() > 100
    per_row_gap = [
        attention[r][matching[r]].mean() - attention[r][other[r]].mean()
        for r in np.flatnonzero(mixed)
    ]
    # Pooled over all behaviours, and per candidate for most of them.
    assert attention[matching & mixed[:, None]].mean() > attention[other & mixed[:, None]].mean()
    assert np.mean(np.array(per_row_gap) > 0) > 0.9


def test_shuffled_labels_stay_at_chance(shuffled_samples: Path) -> None:
    _, result, trainer = train("din", shuffled_samples, **SMALL_DIN)
    assert abs(result.validation["auc"] - 0.5) < 0.07
    assert abs(trainer.evaluate(shuffled_samples, "test")["auc"] - 0.5) < 0.07


def test_export_scores_like_the_in_memory_model(din, planted_samples: Path, tmp_path: Path) -> None:
    model = din[0]
    loaded, spec = load_exported(export_ranker(model, tmp_path / "artifact"))
    assert spec == model.spec
    batch, _ = next(iter_batches(planted_samples, spec, "test", 64))
    batch.pop(samples.LABEL)
    tensors = {k: tf.constant(v) for k, v in batch.items()}
    expected = tf.sigmoid(model(tensors)).numpy()
    np.testing.assert_allclose(loaded.score_batch(tensors)["score"].numpy(), expected, atol=1e-6)

    longer = [f"i{k}" for k in range(spec.max_seq_len + 5)]
    for history, categories in (
        (["i3", "i11", "never-seen"], ["c3", "c3", "c9"]),
        ([], []),
        (longer, ["c3"] * len(longer)),  # cut to the last max_seq_len, as in training
    ):
        request = as_request(
            {
                samples.USER_ID: "u1",
                samples.HIST_ITEM_IDS: history,
                samples.HIST_CATEGORIES: categories,
                samples.ITEM_ID: [*batch[samples.ITEM_ID][:20], "new-item"],
                samples.ITEM_CATEGORY: [*batch[samples.ITEM_CATEGORY][:20], "c3"],
                **{name: np.append(batch[name][:20], 1.0) for name in DENSE},
            }
        )
        exported, in_memory = loaded.score_user(request), CompiledScorer(model).score_user(request)
        np.testing.assert_allclose(exported["score"].numpy(), in_memory["score"].numpy(), atol=1e-6)
        # The per-user fast path (over the history's real length) equals the batch path on the
        # training-shaped expansion (padded to max_seq_len).
        batch_logits, batch_attention = model.forward(expand_request(request, spec.max_seq_len))
        np.testing.assert_allclose(in_memory["score"].numpy(), tf.sigmoid(batch_logits).numpy(), atol=1e-5)
        np.testing.assert_allclose(in_memory["attention"].numpy(), batch_attention.numpy(), atol=1e-5)
        assert exported["attention"].shape == (21, spec.max_seq_len)
        assert np.all(exported["attention"].numpy()[:, len(history):] == 0)  # padding gets no weight


def test_publish_through_the_registry(din, tmp_path: Path) -> None:
    model, result, _ = din
    manifest = build_manifest(model, CONFIG, result, {"validation": result.validation})
    registry = ModelRegistry(tmp_path / "registry")
    version = publish_ranker(registry, export_ranker(model, tmp_path / "artifact"), manifest)
    current = registry.current(ROLE)
    assert current is not None and current.version == version
    registry.verify(current)
    assert current.manifest["features"]["dense"] == list(DENSE)
    assert current.manifest["metrics"]["validation"]["auc"] == pytest.approx(
        result.validation["auc"]
    )
    assert any(name.startswith("saved_model/") for name in current.manifest["files"])


def test_early_stopping_restores_the_best_validation_epoch(shuffled_samples: Path) -> None:
    # Shuffled labels: anything learned after the first epoch is noise that lowers validation AUC.
    spec = build_spec(shuffled_samples, DENSE, 10)
    seed_everything(0)
    trainer = Trainer(build_model("din", spec, embedding_dim=16, learning_rate=1e-2),
                      TrainConfig(epochs=8, batch_size=64, patience=2), show_progress=False)  # fmt: skip
    result = trainer.fit(shuffled_samples)
    aucs = [epoch["val_auc"] for epoch in result.history]
    assert result.best_epoch == 1 + int(np.argmax(aucs)) and len(aucs) == min(8, result.best_epoch + 2)
    assert trainer.evaluate(shuffled_samples, "validation")["auc"] == result.validation["auc"] == max(aucs)


def test_a_validation_split_of_one_class_is_an_error_not_an_untrained_model(tmp_path: Path) -> None:
    # Every row clicked (a catalog the one user has all seen: no negatives to sample). Its AUC is
    # NaN, no epoch would ever be "best", and the untrained weights would be kept and published.
    table = make_rows(600, 3)
    table[samples.LABEL] = [1 for _ in table[samples.LABEL]]
    path = tmp_path / "samples.parquet"
    pq.write_table(pa.Table.from_pydict(table, schema=samples.sample_schema(DENSE)), path)
    trainer = Trainer(build_model("din", build_spec(path, DENSE, 10), embedding_dim=8),
                      TrainConfig(epochs=2, batch_size=64), show_progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="the validation split has one class only"):
        trainer.fit(path)
