"""The Parquet item/user catalog: flat schema, upsert by id, atomic rewrites, concurrent upserts."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.catalog import Catalog
from feature_store.schemas import Item, User
from feature_store.settings import Settings

RELEASED = datetime(1995, 1, 1, tzinfo=timezone.utc)


def test_items_round_trip_with_flat_columns_spark_can_read(settings: Settings) -> None:
    catalog = Catalog(settings.catalog_dir)
    written = catalog.upsert_items(
        [
            Item(item_id="1", title="Toy Story (1995)", categories=["Animation", "Comedy"], created_at=RELEASED,
                 metadata={"year": 1995, "imdb_url": "http://imdb/1"}),
            Item(item_id="2", title="GoldenEye", available=False),
        ]
    )  # fmt: skip
    assert written == 2
    schema = pq.read_schema(settings.catalog_dir / "items.parquet")
    assert schema.field("categories").type == pa.list_(pa.string())
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert schema.field("metadata").type == pa.string()
    toy = catalog.get_item("1")
    assert toy is not None
    assert toy.categories == ["Animation", "Comedy"]
    assert toy.created_at == RELEASED
    assert toy.metadata == {"year": 1995, "imdb_url": "http://imdb/1"}
    goldeneye = catalog.get_item("2")
    assert goldeneye is not None and goldeneye.available is False and goldeneye.created_at is None
    assert catalog.get_item("3") is None
    assert json.loads(catalog.items_table(["metadata"])["metadata"][0].as_py())["year"] == 1995


def test_upsert_replaces_by_id_and_later_write_wins(settings: Settings) -> None:
    catalog = Catalog(settings.catalog_dir)
    catalog.upsert_items([Item(item_id="1", title="old"), Item(item_id="2", title="two")])
    catalog.upsert_items([Item(item_id="1", title="new"), Item(item_id="3", title="three"), Item(item_id="3", title="last")])
    titles = {item.item_id: item.title for item in catalog.items()}
    assert titles == {"1": "new", "2": "two", "3": "last"}
    assert catalog.count_items() == 3


def test_users_round_trip_and_upsert(settings: Settings) -> None:
    catalog = Catalog(settings.catalog_dir)
    catalog.upsert_users([User(user_id="7", attributes={"age": 24, "gender": "M"}), User(user_id="8")])
    catalog.upsert_users([User(user_id="7", attributes={"age": 25})])
    users = {user.user_id: user.attributes for user in catalog.users()}
    assert users == {"7": {"age": 25}, "8": {}}
    assert catalog.users_table().schema.field("attributes").type == pa.string()
    assert catalog.get_user("8") is not None and catalog.count_users() == 2


def test_empty_catalog_reads_as_empty(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "nothing")
    assert catalog.items_table().num_rows == 0
    assert list(catalog.users()) == []
    assert catalog.get_item("1") is None and catalog.count_items() == 0
    assert catalog.upsert_items([]) == 0


def test_writes_leave_no_temporary_files_and_concurrent_upserts_lose_nothing(settings: Settings) -> None:
    catalog = Catalog(settings.catalog_dir)

    def writer(worker: int) -> None:
        for batch in range(5):
            Catalog(settings.catalog_dir).upsert_items(
                Item(item_id=f"w{worker}-{batch}-{n}", title="t") for n in range(20)
            )

    threads = [threading.Thread(target=writer, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert catalog.count_items() == 4 * 5 * 20
    leftovers = [p.name for p in settings.catalog_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
