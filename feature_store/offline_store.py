"""The offline store: batch-view snapshots as Parquet, and the point-in-time training join.

Layout (root = `settings.offline_store_dir`):

    <root>/<entity>/valid_from=<epoch ms>/part-*.parquet   one full batch view, valid from its watermark
    <root>/<entity>/valid_from=<epoch ms>/_SUCCESS         written last: only complete snapshots are read

A snapshot holds the columns `FeatureRegistry.batch_view_columns(entity)`, computed from events
strictly before `valid_from` (the batch watermark). Spark writes one with
`df.write.parquet(str(store.snapshot_dir(entity, watermark)))` (it writes `_SUCCESS` itself).

`point_in_time_join(rows, store, entity, names)` gives each training row the values of the latest
snapshot with `valid_from <= row time`: a value computed after the row's event is never joined to
it. An entity absent from that snapshot gets the feature's default (snapshots are full views).
Memory: one snapshot's requested columns, filtered to the rows' entities, at a time.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.definitions import ENTITY_KEYS, FEATURES, Entity, FeatureRegistry
from feature_store.settings import Settings

SUCCESS_MARKER = "_SUCCESS"


class OfflineStore:
    """Parquet snapshots of batch views, one folder per (entity, valid-from time)."""

    def __init__(self, root: Path, registry: FeatureRegistry = FEATURES) -> None:
        self.root = Path(root)
        self.registry = registry

    @classmethod
    def from_settings(cls, settings: Settings, registry: FeatureRegistry = FEATURES) -> "OfflineStore":
        return cls(settings.offline_store_dir, registry)

    def snapshot_dir(self, entity: Entity | str, valid_from: datetime) -> Path:
        """Where the snapshot of `entity` valid from `valid_from` (aware UTC) lives."""
        return self.root / Entity(entity).value / f"valid_from={_to_ms(valid_from)}"

    def write_snapshot(self, entity: Entity | str, frame: pd.DataFrame, valid_from: datetime) -> Path:
        """Write one full batch view (the batch view's columns, nothing else) as a snapshot."""
        entity = Entity(entity)
        expected = [c.name for c in self.registry.batch_view_columns(entity)]
        if sorted(frame.columns) != sorted(expected):
            raise ValueError(f"{entity} snapshot columns {sorted(frame.columns)} != batch view columns {sorted(expected)}")
        final = self.snapshot_dir(entity, valid_from)
        if final.exists():
            raise FileExistsError(f"snapshot {final} already exists")
        staging = final.with_name(f".{final.name}.{uuid.uuid4().hex}")
        staging.mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame[expected], preserve_index=False), staging / "part-00000.parquet")
        (staging / SUCCESS_MARKER).touch()
        os.rename(staging, final)
        return final

    def snapshots(self, entity: Entity | str) -> list[tuple[int, Path]]:
        """Complete snapshots of `entity` as (valid_from epoch ms, folder), oldest first."""
        folder = self.root / Entity(entity).value
        if not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            if path.name.startswith("valid_from=") and (path / SUCCESS_MARKER).exists():
                try:
                    found.append((int(path.name.split("=", 1)[1]), path))
                except ValueError:
                    raise ValueError(f"snapshot folder {path} does not end in epoch milliseconds") from None
        return sorted(found)

    def read_snapshot(self, entity: Entity | str, path: Path, names: Sequence[str],
                      ids: pd.DataFrame | None = None) -> pd.DataFrame:
        """Key columns and `names` of one snapshot, only for the key rows in `ids` when given."""
        entity = Entity(entity)
        keys = list(ENTITY_KEYS[entity])
        files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith((".", "_")))
        table = pq.read_table(files, columns=keys + list(names)) if files else None
        if table is None:
            return pd.DataFrame(columns=keys + list(names))
        if ids is not None:
            for key in keys:
                table = table.filter(pc.is_in(table[key], value_set=pa.array(ids[key].astype(str).unique())))
        return table.to_pandas()


def point_in_time_join(rows: pd.DataFrame, store: OfflineStore, entity: Entity | str, names: Sequence[str],
                       ts_column: str = "ts") -> pd.DataFrame:
    """`rows` plus one column per feature (as of each row's `ts_column`) and `<entity>_valid_from`.

    `ts_column` holds aware datetimes or epoch seconds. Row order is kept.
    """
    entity = Entity(entity)
    features = store.registry.resolve(entity, names)
    not_batch = [f.name for f in features if not f.in_batch_view()]
    if not_batch:
        raise ValueError(f"{not_batch} are not batch features of {entity}: the offline store has no history of them")
    keys = list(ENTITY_KEYS[entity])
    clashes = [n for n in list(names) + [f"{entity}_valid_from"] if n in rows.columns]
    if clashes:
        raise ValueError(f"training rows already have column(s) {clashes}")
    missing = [c for c in keys + [ts_column] if c not in rows.columns]
    if missing:
        raise ValueError(f"training rows lack column(s) {missing}")
    snapshots = store.snapshots(entity)
    valid_froms = np.array([ms for ms, _ in snapshots], dtype=np.int64)
    which = np.searchsorted(valid_froms, _column_ms(rows[ts_column]), side="right") - 1
    out = rows.reset_index(drop=True).copy()
    values = {f.name: np.empty(len(out), dtype=object) for f in features}
    for feature in features:
        values[feature.name][:] = [feature.default_value()] * len(out)
    for index in np.unique(which[which >= 0]):
        positions = np.flatnonzero(which == index)
        subset = out.iloc[positions][keys].astype(str)
        snap = store.read_snapshot(entity, snapshots[index][1], names, subset)
        joined = subset.merge(snap.astype({k: str for k in keys}), on=keys, how="left")
        for feature in features:
            column = joined[feature.name].to_numpy(dtype=object)
            present = pd.notna(pd.Series(column, dtype=object)).to_numpy() if len(column) else column.astype(bool)
            values[feature.name][positions[present]] = column[present]
    for feature in features:
        out[feature.name] = _typed(values[feature.name], feature.dtype.value)
    valid_from = np.full(len(out), np.nan)
    valid_from[which >= 0] = valid_froms[which[which >= 0]]
    out[f"{entity}_valid_from"] = pd.to_datetime(valid_from, unit="ms", utc=True)
    return out


def _typed(column: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float":
        return column.astype(np.float32)
    if dtype == "int":
        return column.astype(np.int64)
    if dtype == "sequence":
        return np.array([list(v) for v in column] + [None], dtype=object)[:-1]
    if dtype == "vector":
        return np.array([np.asarray(v, dtype=np.float32) for v in column] + [None], dtype=object)[:-1]
    return column


def _column_ms(column: pd.Series) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(column):
        return (column.to_numpy(dtype=np.float64) * 1000).astype(np.int64)
    stamps = pd.to_datetime(column, utc=True)
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy(dtype=np.int64)


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{moment} must be timezone-aware (UTC)")
    return int(moment.astimezone(timezone.utc).timestamp() * 1000)
