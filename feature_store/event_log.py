"""The event log: the lambda architecture's immutable master dataset.

Layout, under the log's root directory::

    dt=YYYY-MM-DD/hr=HH/part-<opened>-<writer>-<seq>.jsonl      complete files, one JSON event per line
    dt=YYYY-MM-DD/hr=HH/.part-<opened>-<writer>-<seq>.jsonl.inprogress   being written (hidden)

Partitions are by *event* time (UTC), so every copy of an event (same `event_id`, same `ts`)
lands in the same hour partition; that is what lets readers drop duplicates with memory bounded
by one partition rather than the whole log.

Writing: each writer appends to one hidden in-progress file per partition and renames it to its
visible name when it rolls (by size or age), after an fsync; Spark's and Flink's file sources skip
names starting with `.`, so readers never see a partial file. `append()` returns only once the
batch is on disk (fsync), with group commit: concurrent callers share one fsync.

Crash recovery: the writer holds an exclusive `flock` on each in-progress file. A new writer
publishes in-progress files whose lock is free (their writer died), after cutting any torn last
line, so acknowledged events become visible and nothing partial does. Writers starting together
(API workers after a crash) recover one at a time under an exclusive lock on `<root>/.lock`; a
writer holds that lock shared while it creates and locks a new file, so recovery never sees a
live writer's file before its lock, and a file that is published or gone by the time recovery
holds its lock is skipped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from pydantic import ValidationError

from feature_store.schemas import Event
from feature_store.settings import EventLogSettings

log = logging.getLogger(__name__)

IN_PROGRESS_SUFFIX = ".inprogress"
LOCK_FILE = ".lock"  # hidden, so Spark's and Flink's file sources skip it
MAX_ROLL_TICK_S = 1.0  # the roller looks at least this often: a file is published by its age + this


class EventLog(ABC):
    """Append-only, durable store of events; the source of truth every view is computed from."""

    @abstractmethod
    def append(self, events: Sequence[Event]) -> int:
        """Durably append `events`; returns the number written. Returns only after fsync."""

    @abstractmethod
    def read(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[Event]:
        """Yield events with `start <= ts < end` in event-time order, duplicates dropped."""

    @abstractmethod
    def close(self) -> None:
        """Publish every in-progress file and release resources."""


def partition_of(ts: datetime) -> str:
    ts = ts.astimezone(timezone.utc)
    # The year padded by hand: strftime's %Y writes year 1 as "1", which sorts after "2024" in the
    # readers' path order and differs from Spark's partition value 0001-01-01.
    return f"dt={ts.year:04d}-{ts:%m-%d}/hr={ts:%H}"


@dataclass
class _OpenFile:
    path: Path
    fd: int
    opened_at: float = field(default_factory=time.monotonic)
    size: int = 0


class EventLogReader:
    """Reads complete files only; needs no lock and never writes, so any process may use it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.rejected_lines = 0

    def partitions(self, start: datetime | None = None, end: datetime | None = None) -> list[Path]:
        """Partition directories overlapping [start, end), oldest first."""
        low = partition_of(start)[:19] if start else ""
        high = partition_of(end)[:19] if end else "~"
        found = []
        for directory in self.root.glob("dt=*/hr=*"):
            key = f"{directory.parent.name}/{directory.name}"
            if low <= key <= high:
                found.append(directory)
        return sorted(found)

    def files(self, start: datetime | None = None, end: datetime | None = None) -> list[Path]:
        """Complete (visible) files, oldest partition first."""
        return [f for d in self.partitions(start, end) for f in sorted(d.glob("part-*.jsonl"))]

    def read(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[Event]:
        for directory in self.partitions(start, end):
            events: dict[str, Event] = {}
            for path in sorted(directory.glob("part-*.jsonl")):
                for event in self._parse(path):
                    events.setdefault(event.event_id, event)
            for event in sorted(events.values(), key=lambda e: (e.ts, e.event_id)):
                if (start is None or event.ts >= start) and (end is None or event.ts < end):
                    yield event

    def _parse(self, path: Path) -> Iterable[Event]:
        with path.open("rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    yield Event.model_validate_json(line)
                except (ValidationError, json.JSONDecodeError) as exc:
                    self.rejected_lines += 1
                    log.warning("%s:%d: skipping malformed event: %s", path, number, exc)


class LocalEventLog(EventLogReader, EventLog):
    """The event log on a local or shared POSIX filesystem: the writer, which also reads."""

    def __init__(self, root: Path, settings: EventLogSettings | None = None) -> None:
        super().__init__(root)
        self.settings = settings or EventLogSettings()
        self.root.mkdir(parents=True, exist_ok=True)
        self.writer_id = uuid.uuid4().hex[:12]
        self._files: OrderedDict[str, _OpenFile] = OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()
        self._commit = threading.Condition()
        self._written = 0  # batches written to the OS
        self._durable = 0  # batches fsynced
        self._committing = False
        self._closed = False
        self._root_lock = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.recovered_files = self._recover_orphans()
        self._roller = threading.Thread(target=self._roll_by_age_forever, daemon=True)
        self._roller.start()

    # -- writing -----------------------------------------------------------------------------

    def append(self, events: Sequence[Event]) -> int:
        if not events:
            return 0
        batches: dict[str, list[str]] = {}
        for event in events:
            batches.setdefault(partition_of(event.ts), []).append(event.to_json_line())
        with self._lock:
            if self._closed:
                raise RuntimeError("event log is closed")
            for partition, lines in batches.items():
                self._write(partition, "".join(lines).encode())
            self._written += 1
            ticket = self._written
        self._wait_durable(ticket)
        return len(events)

    def _write(self, partition: str, data: bytes) -> None:
        open_file = self._open(partition)
        view = memoryview(data)
        while view:
            written = os.write(open_file.fd, view)
            view = view[written:]
        open_file.size += len(data)
        if open_file.size >= self.settings.roll_max_bytes:
            self._roll(partition)

    def _open(self, partition: str) -> _OpenFile:
        open_file = self._files.get(partition)
        if open_file is not None:
            self._files.move_to_end(partition)
            return open_file
        while len(self._files) >= self.settings.max_open_files:
            self._roll(next(iter(self._files)))
        directory = self.root / partition
        directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f".part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{self.writer_id}-{self._seq:06d}.jsonl"
        path = directory / (name + IN_PROGRESS_SUFFIX)
        with _flocked(self._root_lock, fcntl.LOCK_SH):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if self.settings.fsync:
            _fsync_dir(directory)
        open_file = _OpenFile(path=path, fd=fd)
        self._files[partition] = open_file
        return open_file

    def _roll(self, partition: str) -> None:
        """Make one in-progress file durable and visible. Caller holds `_lock`."""
        open_file = self._files.pop(partition)
        if self.settings.fsync:
            os.fsync(open_file.fd)
        _publish(open_file.path, fsync=self.settings.fsync)
        os.close(open_file.fd)

    def _wait_durable(self, ticket: int) -> None:
        """Group commit: one caller fsyncs every dirty file for all callers waiting behind it."""
        if not self.settings.fsync:
            return
        with self._commit:
            while self._durable < ticket:
                if self._committing:
                    self._commit.wait()
                    continue
                self._committing = True
                self._commit.release()
                try:
                    with self._lock:
                        target = self._written
                        fds = [os.dup(f.fd) for f in self._files.values()]
                    for fd in fds:
                        os.fsync(fd)
                        os.close(fd)
                finally:
                    self._commit.acquire()
                    self._committing = False
                self._durable = max(self._durable, target)
                self._commit.notify_all()

    def roll_all(self) -> None:
        """Publish every open file now (e.g. before a batch job reads the log)."""
        with self._lock:
            for partition in list(self._files):
                self._roll(partition)

    def _roll_by_age_forever(self) -> None:
        interval = min(max(self.settings.roll_max_age_s / 4, 0.01), MAX_ROLL_TICK_S)
        while not self._closed:
            time.sleep(interval)
            deadline = time.monotonic() - self.settings.roll_max_age_s
            with self._lock:
                if self._closed:
                    return
                for partition in [p for p, f in self._files.items() if f.opened_at <= deadline]:
                    self._roll(partition)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            for partition in list(self._files):
                self._roll(partition)
            self._closed = True
            os.close(self._root_lock)

    def __enter__(self) -> "LocalEventLog":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recover_orphans(self) -> int:
        with _flocked(self._root_lock, fcntl.LOCK_EX):
            recovered = sum(map(_recover, sorted(self.root.glob(f"dt=*/hr=*/.part-*{IN_PROGRESS_SUFFIX}"))))
        if recovered:
            log.warning("event log: published %d in-progress files left by a stopped writer", recovered)
        return recovered


def _recover(path: Path) -> bool:
    """Publish one in-progress file if its writer is gone; False when a live writer owns it or it
    was published or removed since it was listed."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer owns it
        if not _still_named(path, fd):  # its writer rolled it between our open and our lock
            return False
        _truncate_torn_tail(fd)
        if os.fstat(fd).st_size == 0:
            path.unlink()
            return False
        os.fsync(fd)
        _publish(path, fsync=True)
        return True
    finally:
        os.close(fd)


def _still_named(path: Path, fd: int) -> bool:
    try:
        return os.path.samestat(os.stat(path), os.fstat(fd))
    except FileNotFoundError:
        return False


@contextmanager
def _flocked(fd: int, operation: int) -> Iterator[None]:
    fcntl.flock(fd, operation)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _publish(in_progress: Path, fsync: bool) -> None:
    visible = in_progress.with_name(in_progress.name[1 : -len(IN_PROGRESS_SUFFIX)])
    os.rename(in_progress, visible)
    if fsync:
        _fsync_dir(visible.parent)


def _truncate_torn_tail(fd: int, chunk: int = 1 << 16) -> None:
    """Cut a partial last line (a write torn by a crash), keeping every complete line."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:
        start = max(0, end - chunk)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            os.ftruncate(fd, start + newline + 1)
            return
        end = start
    os.ftruncate(fd, 0)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_event_log(root: Path, settings: EventLogSettings | None = None) -> LocalEventLog:
    return LocalEventLog(root, settings)
