"""The training DAG's two rankers of one configuration (issue 20, docs/training.md):

- the served ranker, trained on every row of the ranking samples' train split (early stopping on
  their validation split): the DAG's `ranker` step;
- the order choice's ranker, trained the same way on the samples without any row of a user at or
  after that user's validation target (the last positive before the held-out window, which the
  recall blend is fitted on): it never sees a validation target, as label or as history, so the
  choice between the blend's order and the ranker's compares two models that never saw the
  targets they are judged on. It is a scratch model, not published.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.settings import Settings
from models.ranking import samples
from models.ranking.dataset import open_samples
from models.registry import ModelRegistry

log = logging.getLogger(__name__)


def fit_ranker(settings: Settings, samples_path: Path, registry: ModelRegistry) -> Any:
    """Train `training.ranker` on the samples at `samples_path`; publish it to `registry`, not
    current. Returns `models.ranking.pipeline.RankerRun`."""
    from models.ranking.pipeline import train_ranker
    from models.ranking.trainer import TrainConfig

    cfg = settings.training
    config = TrainConfig(epochs=cfg.ranker_epochs, batch_size=cfg.ranker_batch_size, patience=cfg.ranker_patience, seed=cfg.seed)
    params: dict[str, Any] = {"embedding_dim": cfg.ranker_embedding_dim}
    if cfg.ranker_learning_rate is not None:
        params["learning_rate"] = cfg.ranker_learning_rate
    return train_ranker(samples_path, cfg.ranker, max_seq_len=settings.batch.max_seq_len, config=config, model_params=params,
                        registry=registry, set_current=False, show_progress=False)  # fmt: skip


def held_out_samples(samples_path: Path, target_times: Mapping[str, datetime], out: Path) -> dict[str, int]:
    """Write to `out` (one Parquet file, batch by batch) the sample rows of `samples_path` that are
    strictly before their user's validation target time (every row of a user without one);
    returns the rows kept per split."""
    dataset = open_samples(samples_path, ())
    users = pa.array(list(target_times), pa.string())
    limits = pa.array([_utc(ts) for ts in target_times.values()], pa.timestamp("us", tz="UTC"))
    limits = limits.cast(dataset.schema.field(samples.TS).type)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with pq.ParquetWriter(out / "part-0.parquet", dataset.schema) as writer:
        for batch in dataset.to_batches():
            limit = pc.take(limits, pc.index_in(batch[samples.USER_ID], value_set=users))  # null: no target
            kept = batch.filter(pc.fill_null(pc.less(batch[samples.TS], limit), True))
            writer.write_batch(kept)
            for row in pc.value_counts(kept[samples.SPLIT]).to_pylist():
                counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
    return counts


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def choice_ranker(settings: Settings, served: str, target_times: Mapping[str, datetime], samples_path: Path,
                  scratch: Path) -> tuple[tuple[str, Path] | None, dict[str, int]]:  # fmt: skip
    """(`served`, the folder of the same ranker trained under `scratch` on `held_out_samples`), and
    the rows per split it was trained on; no ranker when the held-out rows leave a split empty."""
    rows = held_out_samples(samples_path, target_times, scratch / "samples")
    if not rows.get("train") or not rows.get("validation"):
        log.warning("order choice without a ranker: the rows before the validation targets are %s", rows)
        return None, rows
    registry = ModelRegistry(scratch / "registry")
    version = fit_ranker(settings, scratch / "samples", registry).version
    return (served, registry.get("ranker", version).path), rows
