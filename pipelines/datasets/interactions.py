"""Import any interaction export (CSV, TSV, JSON lines, or one user's item sequence a line) into
the event log, with the columns mapped by name: no code per data set.

- ``csv`` / ``tsv``: a header row names the columns; ``columns.user`` / ``item`` / ``time`` /
  ``rating`` say which holds what (time and rating optional; without a time column, rows get
  times one second apart in file order, from `SEQUENCE_EPOCH`). ``csv`` fields may be quoted;
  ``tsv`` fields are split at tabs and taken as they are (quotes are data).
- ``jsonl``: one JSON object a line, the same mapping over its keys.
- ``sequences``: ``user item item ...`` a line (spaces or tabs between), items oldest first, no
  times: a line's items get event times one second apart that end at `SEQUENCE_EPOCH`, so per-user
  order survives the project's time-based splits and every user's newest items fall in the newest
  window, not only the last users' in the file. A second line of a user is a reject (its items
  would interleave with the first's). Since times count back from each line's end, a grown file
  re-imported gives its earlier items new times, and so new event ids: import it into a fresh
  state directory.

Ids are strings (or JSON integers), taken exactly as the events API takes them, except that spaces
and tabs around a field are trimmed. Times are unix seconds (integer or decimal) or ISO 8601 (UTC
when no offset is given; eight digits are ISO 8601's basic date, `20240315`, not a 1970 second),
kept to the millisecond (two clicks of one user on one item within a second are two events). A row with a rating becomes a ``rating`` event with that value, any other
row (no rating column, or an empty or null rating) an ``event_type`` event (``click`` by default).
Event ids are ``<dataset>:<user>:<item>:<ts>``
(as the MovieLens importer's; ``:<type>`` appended for types other than rating and click; a hash where that would be ambiguous or too long:
`pipelines.datasets.events.import_event_id`), so importing the same file twice writes nothing new
(an import manifest also skips the rerun). Bad lines are
reported as ``file:line: reason``, written to a rejects file and skipped, or with ``strict`` the
whole file is checked first and the first bad line raises `MalformedLine` before anything is
written. A UTF-8 byte order mark at the start of the file is dropped. ``categories`` (a JSON
object item -> list of category ids, e.g. Amazon's item2attributes) fills the catalog's item
categories: the events' items not in the catalog yet are created, and of those it has only the
categories of the items the map names are replaced (titles, metadata, `created_at` and a
retirement stay).
"""

from __future__ import annotations

import codecs
import csv
import json
import math
import re
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import TypeAdapter, ValidationError

from feature_store.catalog import Catalog
from feature_store.event_log import LocalEventLog
from feature_store.schemas import MAX_ID_LENGTH, Category, Event, EventType, Item, error_message, exact_id
from feature_store.settings import Settings
from pipelines.datasets import OnProgress, no_progress
from pipelines.datasets.events import import_event_id, trusted_event
from pipelines.datasets.manifest import digest_files, imports_dir, read_manifest, write_manifest
from pipelines.datasets.movielens import ImportReport, _Rejects
from pipelines.datasets.movielens_formats import MAX_TIMESTAMP, MalformedLine, read_records

FORMATS = ("csv", "tsv", "jsonl", "sequences")
SEQUENCE_EPOCH = int(datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp())
BASIC_DATE = re.compile(r"\d{8}")  # yyyymmdd
CHUNK_EVENTS = 100_000
SEQUENCE_SEPARATOR = re.compile(r"[ \t]+")
CATEGORIES = TypeAdapter(list[Category])
# The csv module's default (131,072 characters) fails rows of exports with long free-text columns
# (reviews, descriptions) that the import does not even read; a field past this fails only its row.
FIELD_LIMIT = 1 << 24
csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))


@dataclass(frozen=True)
class Columns:
    """Which column (or JSON key) holds the user, item, time and rating; time and rating optional."""

    user: str = "user_id"
    item: str = "item_id"
    time: str | None = "timestamp"
    rating: str | None = None


@dataclass(frozen=True)
class Row:
    user_id: str
    item_id: str
    ts: float  # unix seconds, to the millisecond
    rating: float | None


def import_interactions(
    path: Path, settings: Settings, fmt: str, columns: Columns = Columns(), *, dataset: str | None = None,
    event_type: EventType = EventType.CLICK, categories: Path | None = None, strict: bool = False,
    on_progress: OnProgress = no_progress,
) -> ImportReport:  # fmt: skip
    """Import the interactions in ``path``; a second import of the same files is skipped."""
    started = time.perf_counter()
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is a directory, not a file" if path.is_dir() else f"no such file: {path}")
    name = dataset or path.stem
    # Times past the batch layer's clock skew would be imported, then dropped by `compact`.
    latest = time.time() + settings.events.max_future_skew_s
    if strict:
        for _, record in read_records(path, "utf-8", fmt in ("csv", "tsv"), _parser(path, fmt, columns, latest)):
            if isinstance(record, MalformedLine):
                raise record
    category_map = _category_map(categories) if categories is not None else None
    sources = [path, *([categories] if categories else [])]
    key = digest_files(json.dumps([name, fmt, asdict(columns), event_type.value]), sources)
    report = ImportReport(dataset=name, source=path.resolve())
    previous = read_manifest(settings.state_dir, key)
    if previous is not None:
        report.events, report.users, report.items = previous["events"], previous["users"], previous["items"]
        report.skipped, report.seconds = True, time.perf_counter() - started
        return report
    rejects = _Rejects(imports_dir(settings.state_dir) / f"{key}.rejects.txt")
    try:
        file_order = fmt != "sequences" and columns.time is None
        parse = _parser(path, fmt, columns, latest)  # a new one: a sequences parser remembers the users it read
        report.events, report.users, items = _import_events(path, fmt, parse, name, event_type, file_order, settings,
                                                            rejects, on_progress)  # fmt: skip
        report.items = len(items)
        if category_map is not None:
            Catalog.from_settings(settings).patch_items(_items(category_map, items))
    finally:
        rejects.close()
    report.rejects, report.first_rejects = rejects.count, rejects.first
    report.rejects_file = rejects.path if rejects.count else None
    report.seconds = time.perf_counter() - started
    manifest = {k: v for k, v in asdict(report).items() if k not in ("manifest", "first_rejects")}
    report.manifest = write_manifest(settings.state_dir, key, manifest)
    return report


def _import_events(path: Path, fmt: str, parse: Callable[[str], list[Row]], name: str, event_type: EventType,
                   file_order: bool, settings: Settings, rejects: _Rejects,
                   on_progress: OnProgress) -> tuple[int, int, set[str]]:  # fmt: skip
    total, done, written = path.stat().st_size, 0, 0
    users: set[str] = set()
    items: set[str] = set()
    chunk: list[Row] = []
    clock = SEQUENCE_EPOCH
    with LocalEventLog(settings.event_log_dir, settings.event_log) as log:
        for size, record in read_records(path, "utf-8", fmt in ("csv", "tsv"), parse):
            done += size
            if isinstance(record, MalformedLine):
                rejects.add(record)
                continue
            for row in record or ():
                if file_order:  # no times in the file: file order is the time order
                    row, clock = replace(row, ts=clock), clock + 1
                chunk.append(row)
                users.add(row.user_id)
                items.add(row.item_id)
            if len(chunk) >= CHUNK_EVENTS:
                written += log.append(_events(name, chunk, event_type))
                chunk = []
                on_progress(f"importing {path.name}", done, total)
        written += log.append(_events(name, chunk, event_type))
    on_progress(f"importing {path.name}", total, total)
    return written, len(users), items


def _events(name: str, rows: list[Row], event_type: EventType) -> list[Event]:
    rows.sort(key=lambda r: r.ts)  # the log partitions by event hour: sorted chunks touch each once
    events = []
    for r in rows:
        kind = EventType.RATING if r.rating is not None else event_type
        events.append(trusted_event(import_event_id(name, r.user_id, r.item_id, r.ts, kind), r.user_id, r.item_id,
                                    kind, r.ts, r.rating))  # fmt: skip
    return events


def _category_map(categories: Path) -> dict[str, list[str]]:
    """The categories file, checked whole before any event is written: item -> its categories
    (strings or integers, each a valid catalog category; the first 64 kept)."""
    try:
        mapping = json.loads(categories.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: JSON or utf-8 decoding
        raise ValueError(f"{categories}: not a JSON object of item -> categories: {exc}") from exc
    if not isinstance(mapping, dict):
        raise ValueError(f"{categories}: not a JSON object of item -> categories")
    checked = {}
    for item, values in mapping.items():
        values = [] if values is None else values if isinstance(values, list) else [values]
        if any(isinstance(v, bool) or not isinstance(v, (str, int)) for v in values):
            raise ValueError(f"{categories}: item {item!r}: categories are strings or integers, not {json.dumps(values)[:80]}")
        try:
            checked[item] = CATEGORIES.validate_python([str(v) for v in values][:64])
        except ValidationError as exc:
            raise ValueError(f"{categories}: item {item!r}: {error_message(exc)}") from None
    return checked


def _items(categories: dict[str, list[str]], items: set[str]) -> Iterator[Item]:
    """The events' items as catalog patches: the categories of those the map names, nothing else
    set, so `Catalog.patch_items` creates new items and keeps the rest of the rows it has."""
    for item in sorted(items):
        yield Item(item_id=item, categories=categories[item]) if item in categories else Item(item_id=item)


def _parser(path: Path, fmt: str, columns: Columns, latest: float) -> Callable[[str], list[Row]]:
    """One line -> its rows; `ValueError` with a reason for a bad line."""
    if fmt == "sequences":
        return _sequences()
    if fmt == "jsonl":
        return lambda line: [_mapped(_json_object(line), columns, latest)]
    header = _header(path, fmt, columns)
    return lambda line: [_mapped(dict(zip(header, _fields(line, fmt, len(header)))), columns, latest)]


def _header(path: Path, fmt: str, columns: Columns) -> list[str]:
    with path.open("rb") as handle:  # line 1 only: a bad byte further down is that line's reject
        first = handle.readline().removeprefix(codecs.BOM_UTF8)
    try:
        header = _split(first.decode("utf-8").rstrip("\r\n"), fmt)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path.name}:1: header is not valid utf-8: {exc.reason}") from None
    except ValueError as exc:
        raise ValueError(f"{path.name}:1: header: {exc}") from None
    wanted = [c for c in (columns.user, columns.item, columns.time, columns.rating) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path.name}:1: header has no column {', '.join(map(repr, missing))} (columns: {', '.join(header)})")
    return header


def _fields(line: str, fmt: str, width: int) -> list[str]:
    fields = _split(line, fmt)
    if len(fields) != width:
        raise ValueError(f"expected {width} fields, got {len(fields)}")
    return fields


def _split(line: str, fmt: str) -> list[str]:
    """One csv or tsv line -> its fields; `ValueError` where the csv module cannot parse it."""
    if fmt == "tsv":  # no quoting in TSV: `"boxed" set` is one item, quotes and all
        return line.split("\t")
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:  # a field past FIELD_LIMIT, a bare carriage return
        raise ValueError(f"not valid CSV: {exc}") from None


def _json_object(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _mapped(record: dict[str, Any], columns: Columns, latest: float) -> Row:
    user, item = _identifier(record, columns.user), _identifier(record, columns.item)
    ts = _time(record.get(columns.time), latest) if columns.time else SEQUENCE_EPOCH
    rating = None
    if columns.rating:
        value = record.get(columns.rating)
        if value is not None and str(value).strip():  # an empty or null rating: an event_type event
            rating = _number(value, columns.rating)
    return Row(user, item, ts, rating)


def _identifier(record: dict[str, Any], name: str) -> str:
    """The id in `record[name]`: a string or a (JSON) integer. Spaces and tabs around it are trimmed
    (exports pad fields); anything else is taken exactly, as the events API takes it."""
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"empty {name!r}" if value is None else f"{name!r} is a {type(value).__name__}, not an id")
    text = str(value).strip(" \t")
    if not text:
        raise ValueError(f"empty {name!r}")
    return _checked_id(text, name)


def _checked_id(text: str, name: str) -> str:
    if len(text) > MAX_ID_LENGTH:
        raise ValueError(f"{name!r} longer than {MAX_ID_LENGTH} characters")
    try:
        return exact_id(text)
    except ValueError as exc:
        raise ValueError(f"{name!r} {exc}") from None


def _time(value: Any, latest: float) -> float:
    if value is None or str(value).strip() == "":
        raise ValueError("empty time")
    text = str(value).strip()
    try:
        seconds = _iso_seconds(text) if BASIC_DATE.fullmatch(text) else float(text)
    except ValueError:
        seconds = _iso_seconds(text)
    if not math.isfinite(seconds) or not 0 <= seconds < MAX_TIMESTAMP:
        raise ValueError(f"time {text!r} out of range")
    if seconds > latest:
        raise ValueError(f"time {text!r} is in the future (events.max_future_skew_s)")
    return round(seconds, 3)


def _iso_seconds(text: str) -> float:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r} is neither unix seconds nor ISO 8601") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


def _number(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name!r} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name!r} is not finite: {value!r}")
    return number


def _sequences() -> Callable[[str], list[Row]]:
    """A parser of `user item item …` lines that refuses a second line of a user: every line ends
    at SEQUENCE_EPOCH, so two lines of one user would interleave and their items at the same place
    from the end would be one event."""
    users: set[str] = set()

    def parse(line: str) -> list[Row]:
        fields = SEQUENCE_SEPARATOR.split(line.strip(" \t"))  # not str.split: it also splits at U+001C-U+001F
        if len(fields) < 2:
            raise ValueError("expected a user id and at least one item id")
        user, items = _checked_id(fields[0], "user"), fields[1:]
        if user in users:
            raise ValueError(f"user {user!r} already has a line: a sequences file holds one line per user")
        rows = [Row(user, _checked_id(item, "item"), SEQUENCE_EPOCH - len(items) + 1 + k, None) for k, item in enumerate(items)]
        users.add(user)
        return rows

    return parse
