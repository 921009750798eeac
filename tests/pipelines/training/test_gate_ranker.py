"""The quality gate on real rankers: trained on the planted rule they are blessed over a blessed
baseline that learned nothing; trained on shuffled labels, or with a NaN weight, they are
rejected against a blessed good one. Scored on the true held-out test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_store.settings import Settings
from models.ranking import samples
from models.registry import ModelRegistry
from pipelines.training import steps
from pipelines.training.executor import StepContext
from tests.models.ranking.conftest import DENSE, make_rows
from tests.pipelines.training.conftest import fresh_registry

pytestmark = pytest.mark.slow

ROWS = 5000


def _write(folder: Path, shuffle_train: bool) -> Settings:
    """Samples under `<folder>/samples`: the planted rule, with the train and validation labels
    permuted when `shuffle_train` (the test rows, the held-out window, keep their true labels)."""
    table = make_rows(ROWS, seed=7)
    if shuffle_train:
        labels = np.array(table[samples.LABEL])
        fit = np.array([split != "test" for split in table[samples.SPLIT]])
        labels[fit] = np.random.default_rng(3).permutation(labels[fit])
        table[samples.LABEL] = labels.tolist()
    (folder / "samples").mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(table, schema=samples.sample_schema(DENSE)), folder / "samples" / "part-0.parquet")
    return folder


def _settings(settings: Settings, batch_dir: Path) -> Settings:
    return settings.model_copy(update={
        "batch": settings.batch.model_copy(update={"output_uri": str(batch_dir), "max_seq_len": 10}),
        "training": settings.training.model_copy(update={"ranker": "din", "ranker_epochs": 3, "ranker_batch_size": 128,
                                                          "ranker_embedding_dim": 8, "ranker_learning_rate": 1e-2}),
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, dict[str, str]]:
    """One registry with three rankers: planted (good), shuffled labels, and good with a NaN weight."""
    root = tmp_path_factory.mktemp("gate-ranker")
    base = Settings(state_dir=root / "state")
    true, shuffled = _settings(base, _write(root / "true", False)), _settings(base, _write(root / "shuffled", True))
    versions = {
        "good": steps.ranker(StepContext(true, "t", {})).outputs["ranker_version"],
        "shuffled": steps.ranker(StepContext(shuffled, "t", {})).outputs["ranker_version"],
    }
    versions["nan"] = _with_nan_weight(true, versions["good"])
    return true, versions


def _with_nan_weight(settings: Settings, version: str) -> str:
    """Republish `version` with one weight of its first dense layer set to NaN."""
    import tensorflow as tf

    registry = ModelRegistry(settings.model_registry_dir)
    source = registry.get("ranker", version)
    loaded = tf.saved_model.load(str(source.path / "saved_model"))
    kernel = next(v for v in loaded.variables if "kernel" in v.name and len(v.shape) == 2)
    values = kernel.numpy()
    values[0, 0] = np.nan
    kernel.assign(values)
    out = settings.state_dir / "nan-ranker"
    tf.saved_model.save(loaded, str(out / "saved_model"), signatures={"serving_default": loaded.signatures["serving_default"]})
    (out / "feature_spec.json").write_bytes((source.path / "feature_spec.json").read_bytes())
    manifest = {key: source.manifest[key] for key in ("params", "data_window", "metrics")}
    return registry.publish("ranker", out, manifest)


def _fresh(trained: tuple[Settings, dict[str, str]], tmp_path: Path) -> tuple[Settings, ModelRegistry, dict[str, str]]:
    settings, registry = fresh_registry(trained[0], tmp_path)
    return settings, registry, trained[1]


def _gate(settings: Settings, candidate: str) -> dict:
    context = StepContext(settings, "gate-test", {"ranker_version": candidate})
    context.outputs |= steps.evaluate(context).outputs
    return steps.decide(context).metrics["ranker"]


def test_better_ranker_is_blessed_over_a_blessed_one_that_learned_nothing(
    trained: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, registry, versions = _fresh(trained, tmp_path)
    registry.bless("ranker", versions["shuffled"], {"planted": "baseline"})
    registry.promote("ranker", versions["shuffled"])
    decision = _gate(settings, versions["good"])
    assert decision["baseline"] == versions["shuffled"]
    auc = next(c for c in decision["checks"] if c["metric"] == "auc")
    assert auc["candidate"] > 0.7 and auc["baseline"] < 0.6, decision
    assert decision["blessed"] and registry.blessing("ranker", versions["good"])["decision"]["checks"] == decision["checks"]


@pytest.mark.parametrize("bad", ["shuffled", "nan"])
def test_shuffled_or_nan_ranker_is_rejected(trained: tuple[Settings, dict[str, str]], bad: str, tmp_path: Path) -> None:
    settings, registry, versions = _fresh(trained, tmp_path)
    registry.bless("ranker", versions["good"], {"planted": "baseline"})
    decision = _gate(settings, versions[bad])
    assert decision["baseline"] == versions["good"] and not decision["blessed"], decision
    assert registry.blessing("ranker", versions[bad]) is None
    if bad == "nan":
        assert decision["problems"] and "non-finite" in decision["problems"][0]
    else:
        assert not all(check["passed"] for check in decision["checks"])


def test_a_damaged_baseline_is_recorded_and_the_floors_alone_judge(
    trained: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, registry, versions = _fresh(trained, tmp_path)
    registry.bless("ranker", versions["shuffled"], {"planted": "baseline"})
    weights = next((registry.get("ranker", versions["shuffled"]).path / "saved_model" / "variables").glob("*.data*"))
    weights.write_bytes(weights.read_bytes()[:100])  # truncated after publication
    decision = _gate(settings, versions["good"])
    assert decision["baseline"] == versions["shuffled"] and decision["blessed"], decision
    assert "checksum mismatch" in decision["held_out"]["baseline_error"]
    assert all(check["baseline"] is None for check in decision["checks"])
