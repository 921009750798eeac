"""Import a MovieLens release (ml-100k, ml-1m, ml-latest-small) into the event log and catalogs.

Ratings become `Event(type="rating")` with the deterministic id `<dataset>:<user>:<item>:<ts>`;
movies become catalog items (genres as categories), users catalog users. The ratings file is
streamed and appended in chunks sorted by time, so memory stays bounded by one chunk.

Malformed lines are reported as `file:line: reason`, written to a rejects file, counted and
skipped (the default), or, with `strict=True`, the whole source is checked first and the first
malformed line raises `MalformedLine` before anything is written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, TextIO

from feature_store.catalog import Catalog
from feature_store.event_log import LocalEventLog
from feature_store.schemas import Event, EventType, Item, User
from feature_store.settings import Settings
from pipelines.datasets import OnProgress, no_progress
from pipelines.datasets.events import import_event_id, trusted_event
from pipelines.datasets.manifest import digest_files, imports_dir, read_manifest, write_manifest
from pipelines.datasets.movielens_formats import (
    Layout,
    MalformedLine,
    Rating,
    UnknownLayout,
    detect_layout,
    parse_link,
    read_records,
)

__all__ = ["ImportReport", "MalformedLine", "UnknownLayout", "import_movielens", "validate_movielens"]

CHUNK_EVENTS = 100_000


@dataclass
class ImportReport:
    """What one import did (or, with `skipped`, what the earlier identical import did)."""

    dataset: str
    source: Path
    events: int = 0
    users: int = 0
    items: int = 0
    rejects: int = 0
    seconds: float = 0.0
    skipped: bool = False
    rejects_file: Path | None = None
    manifest: Path | None = None
    first_rejects: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        done = "already imported, skipped" if self.skipped else f"imported in {self.seconds:.1f} s"
        return (
            f"{self.dataset} from {self.source}: {done}; {self.events:,} events, {self.users:,} users, "
            f"{self.items:,} items, {self.rejects:,} rejected lines"
        )


class _Rejects:
    """Counts malformed lines and writes each to the rejects file, opened on the first one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self.first: list[str] = []
        self._handle: TextIO | None = None

    def add(self, error: MalformedLine) -> None:
        self.count += 1
        if len(self.first) < 10:
            self.first.append(str(error))
        if self._handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("w", encoding="utf-8")
        self._handle.write(f"{error}\t{error.raw}\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


def validate_movielens(root: Path, on_progress: OnProgress = no_progress, latest: float = math.inf) -> Layout:
    """Check every line of the source; raise the first `MalformedLine` (or `UnknownLayout`).
    `latest`: the newest rating time accepted (`rating_parser`)."""
    layout = detect_layout(root)
    for path, parse in _sources(root, layout, latest):
        total, done = path.stat().st_size, 0
        for size, record in read_records(path, layout.encoding, _has_header(layout, path), parse):
            done += size
            if isinstance(record, MalformedLine):
                raise record
            if done % 1_000_000 < size:
                on_progress(f"checking {path.name}", done, total)
    return layout


def import_movielens(
    root: Path, settings: Settings, *, strict: bool = False, on_progress: OnProgress = no_progress
) -> ImportReport:
    """Import the MovieLens release in `root`; a second import of the same files is skipped."""
    started = time.perf_counter()
    root = Path(root)
    # Times past the batch layer's clock skew would be imported, then dropped by `compact`.
    latest = time.time() + settings.events.max_future_skew_s
    layout = validate_movielens(root, on_progress, latest) if strict else detect_layout(root)
    key = digest_files(layout.name, layout.files(root))
    previous = read_manifest(settings.state_dir, key)
    if previous is not None:
        return _skipped_report(layout, root, previous, started)
    rejects = _Rejects(imports_dir(settings.state_dir) / f"{key}.rejects.txt")
    report = ImportReport(dataset=layout.name, source=root.resolve())
    try:
        catalog = Catalog.from_settings(settings)
        report.items = _import_items(root, layout, catalog, rejects)
        rated_users: set[str] = set()
        report.events = _import_ratings(root, layout, settings, rejects, rated_users, on_progress, latest)
        report.users = _import_users(root, layout, catalog, rejects, rated_users)
    finally:
        rejects.close()
    report.rejects = rejects.count
    report.first_rejects = rejects.first
    report.rejects_file = rejects.path if rejects.count else None
    report.seconds = time.perf_counter() - started
    manifest = {k: v for k, v in asdict(report).items() if k not in ("manifest", "first_rejects")}
    report.manifest = write_manifest(settings.state_dir, key, {**manifest, "files": [p.name for p in layout.files(root)]})
    return report


def _skipped_report(layout: Layout, root: Path, previous: dict[str, Any], started: float) -> ImportReport:
    return ImportReport(
        dataset=layout.name,
        source=root.resolve(),
        events=previous.get("events", 0),
        users=previous.get("users", 0),
        items=previous.get("items", 0),
        rejects=previous.get("rejects", 0),
        seconds=time.perf_counter() - started,
        skipped=True,
    )


def _has_header(layout: Layout, path: Path) -> bool:
    return layout.header and path.suffix == ".csv"


def rating_parser(layout: Layout, latest: float) -> Callable[[str], Rating]:
    """The layout's rating parser, refusing a time after `latest` (that line's reject, as the
    interactions importer's: `compact` would drop the event later, and a far-future one moved the
    learner's watermark past every real event)."""

    def parse(line: str) -> Rating:
        rating = layout.parse_rating(line)
        if rating.ts > latest:
            raise ValueError(f"timestamp {rating.ts} is in the future (events.max_future_skew_s)")
        return rating

    return parse


def _sources(root: Path, layout: Layout, latest: float) -> list[tuple[Path, Any]]:
    sources = [(root / layout.items, layout.parse_item), (root / layout.ratings, rating_parser(layout, latest))]
    if layout.users and layout.parse_user and (root / layout.users).is_file():
        sources.append((root / layout.users, layout.parse_user))
    if layout.links and (root / layout.links).is_file():
        sources.append((root / layout.links, parse_link))
    return sources


def _good_records(path: Path, layout: Layout, parse: Any, rejects: _Rejects) -> Iterator[tuple[int, Any]]:
    for size, record in read_records(path, layout.encoding, _has_header(layout, path), parse):
        if isinstance(record, MalformedLine):
            rejects.add(record)
            yield size, None
        else:
            yield size, record


def _import_items(root: Path, layout: Layout, catalog: Catalog, rejects: _Rejects) -> int:
    links: dict[str, dict[str, Any]] = {}
    if layout.links and (root / layout.links).is_file():
        links = {k: v for _, (k, v) in _nonempty(_good_records(root / layout.links, layout, parse_link, rejects))}
    items: list[Item] = []
    for _, item in _nonempty(_good_records(root / layout.items, layout, layout.parse_item, rejects)):
        if item.item_id in links:
            item = item.model_copy(update={"metadata": {**item.metadata, **links[item.item_id]}})
        items.append(item)
    return catalog.patch_items(items)  # a re-import keeps what the release does not say (a retirement by PUT)


def _import_users(root: Path, layout: Layout, catalog: Catalog, rejects: _Rejects, rated: set[str]) -> int:
    if layout.users and layout.parse_user and (root / layout.users).is_file():
        path = root / layout.users
        return catalog.upsert_users(user for _, user in _nonempty(_good_records(path, layout, layout.parse_user, rejects)))
    # No users file (ml-latest): users are the raters; keep attributes of users already known.
    known = set(catalog.users_table(["user_id"])["user_id"].to_pylist())
    catalog.upsert_users(User(user_id=user_id) for user_id in sorted(rated - known))
    return len(rated)


def _import_ratings(
    root: Path, layout: Layout, settings: Settings, rejects: _Rejects, rated_users: set[str], on_progress: OnProgress,
    latest: float,
) -> int:
    path = root / layout.ratings
    total, done, written = path.stat().st_size, 0, 0
    chunk: list[Rating] = []
    with LocalEventLog(settings.event_log_dir, settings.event_log) as event_log:
        for size, rating in _good_records(path, layout, rating_parser(layout, latest), rejects):
            done += size
            if rating is not None:
                chunk.append(rating)
                rated_users.add(rating.user_id)
            if len(chunk) >= CHUNK_EVENTS:
                written += event_log.append(_to_events(layout.name, chunk))
                chunk = []
                on_progress(f"importing {path.name}", done, total)
        written += event_log.append(_to_events(layout.name, chunk))
    on_progress(f"importing {path.name}", total, total)
    return written


def _to_events(dataset: str, chunk: list[Rating]) -> list[Event]:
    chunk.sort(key=lambda r: r.ts)  # the log partitions by event hour: sorted chunks touch each once
    return [
        trusted_event(import_event_id(dataset, r.user_id, r.item_id, r.ts), r.user_id, r.item_id, EventType.RATING, r.ts, r.rating)
        for r in chunk
    ]


def _nonempty(records: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    return ((size, record) for size, record in records if record is not None)
