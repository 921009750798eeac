"""The startup catalog sync (services/recommend/catalog_sync.py) on a real Redis: users are synced
as well as items (issue 13, item 8), and rows written before the catalog was bounded (too deep,
control characters) are skipped and reported, never abort the sync (item 4); a lock left by a dead
sync delays the sync, never skips it; undated items keep their place in the category index."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from fastapi.testclient import TestClient

from feature_store.catalog import ITEM_SCHEMA, USER_SCHEMA, Catalog
from feature_store.schemas import Item, User
from feature_store.settings import Settings
from pipelines.datasets.movielens import import_movielens
from services.api.app import create_app
from tests.pipelines.test_movielens_import import write_ml100k
from tests.services.test_global_cache import wait_for

ITEMS = 1_701
BAD_ITEMS = {"i5": "depth", "i1200": "depth", "bad\x1fid": "id", "i1600": "category"}


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def _item_row(item_id: str) -> dict[str, Any]:
    problem = BAD_ITEMS.get(item_id)
    depth = {"i5": 260, "i1200": 220}.get(item_id, 2)
    return {
        "item_id": item_id, "title": f"title {item_id}", "available": True, "created_at": None,
        "categories": ["Dra\x1fma"] if problem == "category" else ["Drama"],
        "metadata": json.dumps(_nested(depth) if problem == "depth" else {"n": item_id}),
    }


def _write_unchecked_catalog(catalog_dir: Path) -> list[str]:
    """items.parquet and users.parquet as a catalog written before rows were bounded would hold them."""
    catalog_dir.mkdir(parents=True)
    ids = [f"i{n}" for n in range(ITEMS - 1)] + ["bad\x1fid"]
    pq.write_table(pa.Table.from_pylist([_item_row(i) for i in ids], schema=ITEM_SCHEMA), catalog_dir / "items.parquet")
    users = [{"user_id": "u1", "attributes": json.dumps({"age": 30})},
             {"user_id": "u-deep", "attributes": json.dumps(_nested(300))}]
    pq.write_table(pa.Table.from_pylist(users, schema=USER_SCHEMA), catalog_dir / "users.parquet")
    return ids


def test_imported_users_are_served(tmp_path: Path, api_settings: Settings) -> None:
    source = write_ml100k(tmp_path / "ml", ["1\t1\t5\t874965758", "2\t2\t3\t876893171"])
    (source / "u.user").write_text("1|24|M|technician|85711\n196|49|M|writer|55105\n")
    import_movielens(source, api_settings)
    with TestClient(create_app(api_settings)) as client:
        assert client.app.state.service.catalog_sync.wait(30) == "synced"  # type: ignore[attr-defined]
        user = client.get("/v1/users/196")
        assert user.status_code == 200, user.text
        assert user.json()["attributes"] == {"age": 49, "gender": "M", "occupation": "writer", "zip": "55105"}
        assert client.get("/v1/users/1").json()["attributes"]["occupation"] == "technician"
        assert client.get("/v1/items/1").json()["title"] == "Toy Story (1995)"


def test_bad_catalog_rows_are_skipped_and_reported_not_fatal(api_settings: Settings) -> None:
    ids = _write_unchecked_catalog(api_settings.catalog_dir)
    with TestClient(create_app(api_settings)) as client:
        sync = client.app.state.service.catalog_sync  # type: ignore[attr-defined]
        assert sync.wait(60) == "synced"
        ready = client.get("/readyz").json()
        assert ready["catalog"] == "synced" and ready["catalog_invalid_rows"] == len(BAD_ITEMS) + 1
        store = client.app.state.service.store  # type: ignore[attr-defined]
        good = [i for i in ids if i not in BAD_ITEMS]
        found = [i for i in good if store.get_item(i) is not None]
        assert len(found) == len(good) == ITEMS - len(BAD_ITEMS)
        for item_id in ("i5", "i1200", "i1600"):
            assert client.get(f"/v1/items/{item_id}").status_code == 404
        assert client.get("/v1/users/u1").json()["attributes"] == {"age": 30}
        assert client.get("/v1/users/u-deep").status_code == 404
        record = {k.decode(): v.decode() for k, v in store.client.hgetall(sync.record_key("items")).items()}
        assert (record["rows"], record["stored"], record["invalid"]) == (str(ITEMS), str(len(good)), str(len(BAD_ITEMS)))
        items_file, users_file = api_settings.catalog_dir / "items.parquet", api_settings.catalog_dir / "users.parquet"
        assert sorted(row.location for row in sync.invalid_rows) == sorted(
            [f"{items_file} row {ids.index(i) + 1} ({i!r})" for i in BAD_ITEMS] + [f"{users_file} row 2 ('u-deep')"]
        )
        reasons = {row.key: row.reason for row in sync.invalid_rows}
        assert "nested 260 levels" in reasons["i5"] and "control characters" in reasons["i1600"], reasons


def test_a_user_put_after_the_file_was_written_wins_over_its_row(client: TestClient) -> None:
    assert client.put("/v1/users/u1", json={"attributes": {"v": "put"}}).status_code == 200
    store = client.app.state.service.store  # type: ignore[attr-defined]
    row = User(user_id="u1", attributes={"v": "file"})
    assert store.sync_users([row], written_at_ms=int(time.time() * 1000) - 60_000) == 0
    assert client.get("/v1/users/u1").json()["attributes"] == {"v": "put"}
    assert store.sync_users([row], written_at_ms=int(time.time() * 1000) + 60_000) == 1
    assert client.get("/v1/users/u1").json()["attributes"] == {"v": "file"}


def test_a_lock_left_by_a_dead_sync_delays_the_sync_and_does_not_skip_it(
    api_settings: Settings, redis_client: redis.Redis
) -> None:
    Catalog.from_settings(api_settings).upsert_items(Item(item_id=f"i{n}", categories=["A"]) for n in range(10))
    lock = f"{api_settings.redis.key_prefix}:srv:catalog_sync:lock"
    redis_client.set(lock, "a-process-killed-mid-sync", ex=600)
    with TestClient(create_app(api_settings)) as client:
        sync = client.app.state.service.catalog_sync  # type: ignore[attr-defined]
        wait_for(lambda: sync.state == "busy")
        assert client.get("/readyz").json()["catalog"] == "busy"  # not synced yet, and says so
        assert client.get("/v1/items/i1").status_code == 404
        redis_client.delete(lock)  # what its TTL does; no sleep racing a short TTL
        assert sync.wait(60) == "synced"
        assert client.get("/v1/items/i1").status_code == 200


def test_undated_items_keep_their_place_behind_an_item_put_since_across_a_restart(api_settings: Settings) -> None:
    """An undated item (ml-1m has no dates) is dated when it enters its category, once: a restart's
    sync re-dating the whole catalog pushed an item PUT since out of its category's newest."""
    Catalog.from_settings(api_settings).upsert_items(Item(item_id=f"old{n}", categories=["Drama"]) for n in range(20))
    with TestClient(create_app(api_settings)) as client:
        assert client.app.state.service.catalog_sync.wait(60) == "synced"  # type: ignore[attr-defined]
        fresh = {"categories": ["Drama"], "created_at": datetime.now(timezone.utc).isoformat()}
        assert client.put("/v1/items/fresh", json=fresh).status_code == 200
    with TestClient(create_app(api_settings)) as client:  # a restart syncs items.parquet, which the PUT rewrote
        assert client.app.state.service.catalog_sync.wait(60) == "synced"  # type: ignore[attr-defined]
        body = client.post("/v1/users/u1/recommendations", json={"k": 5, "category": "Drama"}).json()
    assert [item["item_id"] for item in body["items"]][0] == "fresh"
