"""The item and user catalogs: Parquet files Spark jobs and the API both read.

Layout, under `settings.catalog_dir`::

    items.parquet   item_id, title, categories (list<string>), available, created_at (UTC), metadata (JSON)
    users.parquet   user_id, attributes (JSON)

Columns are flat so Spark reads them without a schema of ours; the free-form dicts are JSON
strings. Every write goes to a hidden temporary file that is fsynced and renamed over the old one,
so a reader sees the old catalog or the new one, never half a file. An upsert is
read-merge-rewrite under an exclusive `flock`, so concurrent upserts do not lose each other's rows.
Catalogs are small next to the event log (one row per entity), so the merge holds one in memory.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from feature_store.schemas import Item, User, error_message
from feature_store.settings import CatalogSettings, Settings

ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("categories", pa.list_(pa.string())),
        pa.field("available", pa.bool_(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
        pa.field("metadata", pa.string()),
    ]
)
USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("attributes", pa.string()),
    ]
)

Entry = TypeVar("Entry", Item, User)


class CatalogEntryError(ValueError):
    """An item or user outside the catalog's bounds (`settings.catalog`); the message says which."""


@dataclass(frozen=True)
class InvalidRow:
    """A catalog file row that is not a valid entry (written before a check existed, or by hand)."""

    file: str
    row: int  # 1-based, in file order
    key: str | None
    reason: str

    @property
    def location(self) -> str:
        return f"{self.file} row {self.row} ({self.key!r})"

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


def _depth(value: Any) -> int:
    """Nesting levels of dicts and lists in `value` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def check_entry(entry: Item | User, limits: CatalogSettings) -> None:
    """Raise `CatalogEntryError` if the entry's metadata (item) or attributes (user) nest deeper or
    serialize larger than `limits` allow: past them, storing or reading the JSON fails later."""
    name, value = ("metadata", entry.metadata) if isinstance(entry, Item) else ("attributes", entry.attributes)
    depth = _depth(value)
    if depth > limits.max_metadata_depth:
        raise CatalogEntryError(
            f"{name}: nested {depth} levels deep, more than catalog.max_metadata_depth ({limits.max_metadata_depth})"
        )
    size = len(json.dumps(value, sort_keys=True, default=str).encode())
    if size > limits.max_metadata_bytes:
        raise CatalogEntryError(
            f"{name}: {size} bytes as JSON, more than catalog.max_metadata_bytes ({limits.max_metadata_bytes})"
        )


def _item_row(item: Item) -> dict[str, Any]:
    return {
        "item_id": item.item_id,
        "title": item.title,
        "categories": list(item.categories),
        "available": item.available,
        "created_at": item.created_at,
        "metadata": json.dumps(item.metadata, sort_keys=True, default=str),
    }


def _user_row(user: User) -> dict[str, Any]:
    return {"user_id": user.user_id, "attributes": json.dumps(user.attributes, sort_keys=True, default=str)}


def _item_from_row(row: dict[str, Any]) -> Item:
    return Item(
        item_id=row["item_id"],
        title=row["title"],
        categories=row["categories"] or [],
        available=row["available"],
        created_at=row["created_at"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else {},
    )


def _user_from_row(row: dict[str, Any]) -> User:
    return User(user_id=row["user_id"], attributes=json.loads(row["attributes"]) if row["attributes"] else {})


class Catalog:
    """Item and user catalogs stored as Parquet under `root` (normally `settings.catalog_dir`).

    Upserts are by id: a later write of the same id replaces the earlier row (`patch_items`: only
    the fields it sets). Entries outside `limits` (default: the settings' defaults) raise
    `CatalogEntryError` before anything is written.
    """

    def __init__(self, root: Path, limits: CatalogSettings | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or CatalogSettings()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Catalog":
        return cls(settings.catalog_dir, settings.catalog)

    # -- writing -----------------------------------------------------------------------------

    def upsert_items(self, items: Iterable[Item]) -> int:
        """Insert or replace items by `item_id`; returns the number of distinct ids written."""
        rows = {item.item_id: _item_row(self._checked(item)) for item in items}
        return self._upsert(ITEMS_FILE, ITEM_SCHEMA, "item_id", rows)

    def patch_items(self, items: Iterable[Item]) -> int:
        """Insert new items whole; of an item already in the catalog change only the fields set on
        the given `Item` (its `model_fields_set`), keeping the rest of its row: a bulk import that
        knows an item's categories must not reset its title, metadata, `created_at` or retirement.
        Returns the number of distinct ids written."""
        checked = {item.item_id: self._checked(item) for item in items}
        rows = {item_id: _item_row(item) for item_id, item in checked.items()}
        fields = {item_id: item.model_fields_set for item_id, item in checked.items()}
        return self._upsert(ITEMS_FILE, ITEM_SCHEMA, "item_id", rows, fields)

    def upsert_users(self, users: Iterable[User]) -> int:
        """Insert or replace users by `user_id`; returns the number of distinct ids written."""
        rows = {user.user_id: _user_row(self._checked(user)) for user in users}
        return self._upsert(USERS_FILE, USER_SCHEMA, "user_id", rows)

    def _checked(self, entry: Entry) -> Entry:
        check_entry(entry, self.limits)
        return entry

    def _upsert(
        self, name: str, schema: pa.Schema, key: str, rows: dict[str, dict[str, Any]],
        fields: dict[str, set[str]] | None = None,
    ) -> int:
        """Write `rows` by id; with `fields`, an id already stored takes only those columns of its new row."""
        if not rows:
            return 0
        with self._locked():
            path = self.root / name
            old = pq.read_table(path, schema=schema) if path.exists() else schema.empty_table()
            replaced = pc.is_in(old[key], value_set=pa.array(list(rows), pa.string()))
            if fields is not None:
                for row in old.filter(replaced).to_pylist():
                    new_row = rows[row[key]]
                    rows[row[key]] = {**row, **{field: new_row[field] for field in fields[row[key]]}}
            new = pa.Table.from_pylist(list(rows.values()), schema=schema)
            _write_atomically(pa.concat_tables([old.filter(pc.invert(replaced)), new]), path)
        return len(rows)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- reading -----------------------------------------------------------------------------

    def items_table(self, columns: list[str] | None = None) -> pa.Table:
        """The whole item catalog as an Arrow table (empty, with the schema, if none yet)."""
        return self._table(ITEMS_FILE, ITEM_SCHEMA, columns)

    def users_table(self, columns: list[str] | None = None) -> pa.Table:
        """The whole user catalog as an Arrow table (empty, with the schema, if none yet)."""
        return self._table(USERS_FILE, USER_SCHEMA, columns)

    def items(self, batch_size: int = 10_000) -> Iterator[Item]:
        """Every item as a model, streamed in record batches; `CatalogEntryError` at an invalid row."""
        return (_valid(entry) for entry in self.checked_items(batch_size))

    def users(self, batch_size: int = 10_000) -> Iterator[User]:
        """Every user as a model, streamed in record batches; `CatalogEntryError` at an invalid row."""
        return (_valid(entry) for entry in self.checked_users(batch_size))

    def checked_items(self, batch_size: int = 10_000) -> Iterator[Item | InvalidRow]:
        """Every item row as a model, or as an `InvalidRow` saying where it is and what is wrong."""
        return self._iterate(ITEMS_FILE, "item_id", _item_from_row, batch_size)

    def checked_users(self, batch_size: int = 10_000) -> Iterator[User | InvalidRow]:
        """Every user row as a model, or as an `InvalidRow` saying where it is and what is wrong."""
        return self._iterate(USERS_FILE, "user_id", _user_from_row, batch_size)

    def get_item(self, item_id: str) -> Item | None:
        """One item by id, or None."""
        rows = self._lookup(ITEMS_FILE, ITEM_SCHEMA, "item_id", item_id)
        return _item_from_row(rows[0]) if rows else None

    def get_user(self, user_id: str) -> User | None:
        """One user by id, or None."""
        rows = self._lookup(USERS_FILE, USER_SCHEMA, "user_id", user_id)
        return _user_from_row(rows[0]) if rows else None

    def count_items(self) -> int:
        return self._count(ITEMS_FILE)

    def count_users(self) -> int:
        return self._count(USERS_FILE)

    def _table(self, name: str, schema: pa.Schema, columns: list[str] | None) -> pa.Table:
        path = self.root / name
        if not path.exists():
            table = schema.empty_table()
            return table.select(columns) if columns else table
        return pq.read_table(path, columns=columns, schema=schema)

    def _iterate(
        self, name: str, key: str, to_model: Callable[[dict[str, Any]], Entry], batch_size: int
    ) -> Iterator[Entry | InvalidRow]:
        path = self.root / name
        if not path.exists():
            return
        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                number += 1
                yield self._checked_row(row, to_model, InvalidRow(str(path), number, row.get(key), ""))

    def _checked_row(
        self, row: dict[str, Any], to_model: Callable[[dict[str, Any]], Entry], where: InvalidRow
    ) -> Entry | InvalidRow:
        try:
            return self._checked(to_model(row))
        except ValueError as exc:  # pydantic's ValidationError, JSONDecodeError, CatalogEntryError
            return replace(where, reason=error_message(exc))
        except RecursionError:  # JSON nested too deep for the parser
            return replace(where, reason="metadata or attributes nested too deep to parse")

    def _lookup(self, name: str, schema: pa.Schema, key: str, value: str) -> list[dict[str, Any]]:
        path = self.root / name
        if not path.exists():
            return []
        return pq.read_table(path, schema=schema, filters=[(key, "=", value)]).to_pylist()

    def _count(self, name: str) -> int:
        path = self.root / name
        return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def _valid(entry: Entry | InvalidRow) -> Entry:
    if isinstance(entry, InvalidRow):
        raise CatalogEntryError(str(entry))
    return entry


def _write_atomically(table: pa.Table, path: Path) -> None:
    """Write under a hidden name, fsync, rename over `path`, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
