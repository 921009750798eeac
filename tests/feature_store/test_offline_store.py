"""Parquet snapshots and the point-in-time join: no value from after a row's event is joined to it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store.definitions import FEATURES, Entity
from feature_store.offline_store import OfflineStore, point_in_time_join
from tests.feature_store.helpers import item_row

T1 = datetime(2024, 1, 1, tzinfo=timezone.utc)
T2 = datetime(2024, 1, 2, tzinfo=timezone.utc)


def _item_snapshot(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[c.name for c in FEATURES.batch_view_columns(Entity.ITEM)])


def test_hand_built_point_in_time_join(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    store.write_snapshot("item", _item_snapshot([item_row("i1", popularity_all=1, categories=["A"])]), T1)
    store.write_snapshot("item", _item_snapshot([item_row("i1", popularity_all=2, categories=["B"]),
                                                 item_row("i2", popularity_all=9, categories=["C"])]), T2)
    rows = pd.DataFrame({
        "item_id": ["i1", "i1", "i1", "i2", "i1", "i3"],
        "ts": [T1 - timedelta(seconds=1), T1, T2 - timedelta(seconds=1), T2 - timedelta(hours=1),
               T2 + timedelta(days=5), T2 + timedelta(days=5)],
        "label": [1, 0, 1, 0, 1, 1],
    })
    joined = point_in_time_join(rows, store, "item", ["popularity_all", "categories"])
    assert joined["popularity_all"].tolist() == [0, 1, 1, 0, 2, 0]  # i2's value is from after its event
    assert joined["categories"].tolist() == [[], ["A"], ["A"], [], ["B"], []]
    assert joined["label"].tolist() == rows["label"].tolist()
    assert joined["item_valid_from"].isna().tolist() == [True, False, False, False, False, False]
    assert (joined["item_valid_from"].dropna() <= rows["ts"][1:]).all()


def test_incomplete_snapshots_are_ignored_and_bad_requests_are_clear(tmp_path: Path) -> None:
    store = OfflineStore(tmp_path)
    partial = store.snapshot_dir("item", T1)
    partial.mkdir(parents=True)  # a Spark write still in progress: no _SUCCESS
    assert store.snapshots("item") == []
    rows = pd.DataFrame({"item_id": ["i1"], "ts": [T2]})
    with pytest.raises(ValueError, match="not batch features"):
        point_in_time_join(rows, store, "item", ["clicks_1h"])
    with pytest.raises(ValueError, match="lack column"):
        point_in_time_join(rows.rename(columns={"ts": "time"}), store, "item", ["clicks_all"])


def _load_ratings(ml100k_path: Path) -> pd.DataFrame:
    ratings = pd.read_csv(ml100k_path / "u.data", sep="\t", names=["user_id", "item_id", "rating", "ts"],
                          dtype={"user_id": str, "item_id": str, "rating": float, "ts": np.int64})
    return ratings


def test_point_in_time_join_on_movielens_never_leaks(tmp_path: Path, ml100k_path: Path) -> None:
    ratings = _load_ratings(ml100k_path)
    positives = ratings[ratings["rating"] >= 4]
    store = OfflineStore(tmp_path)
    cuts = np.quantile(ratings["ts"], [0.2, 0.4, 0.6, 0.8])
    watermarks = sorted({int(c) // 3600 * 3600 for c in cuts})
    for wm in watermarks:  # the batch view at each watermark: positives strictly before it
        counts = positives[positives["ts"] < wm].groupby("item_id").size()
        store.write_snapshot("item", _item_snapshot(
            [item_row(item, popularity_all=int(n)) for item, n in counts.items()]),
            datetime.fromtimestamp(wm, timezone.utc))
    joined = point_in_time_join(ratings, store, "item", ["popularity_all"])
    valid_from = (joined["item_valid_from"].astype("int64") // 10**9).where(joined["item_valid_from"].notna())
    assert (valid_from.dropna() <= joined["ts"][valid_from.notna()]).all()  # never a later snapshot
    by_item = {item: np.sort(group.to_numpy()) for item, group in positives.groupby("item_id")["ts"]}
    for row, snapshot_time in zip(joined.itertuples(), valid_from):
        item_positives = by_item.get(row.item_id, np.array([]))
        before_row = np.searchsorted(item_positives, row.ts, side="left")
        assert row.popularity_all <= before_row  # nothing at or after the event is counted
        as_of_snapshot = 0 if pd.isna(snapshot_time) else np.searchsorted(item_positives, snapshot_time, side="left")
        assert row.popularity_all == as_of_snapshot  # exactly the value of the snapshot in force
    expected_latest = joined["ts"] >= watermarks[-1]
    assert (joined.loc[expected_latest, "item_valid_from"].astype("int64") // 10**9 == watermarks[-1]).all()
    assert joined["popularity_all"].sum() > 0 and (joined["popularity_all"][joined["ts"] < watermarks[0]] == 0).all()
