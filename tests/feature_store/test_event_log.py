"""The event log: partitioning, hidden in-progress files, dedup on read, rolling, crash durability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from feature_store.event_log import EventLogReader, LocalEventLog, partition_of
from feature_store.schemas import Event
from feature_store.settings import EventLogSettings

T0 = datetime(2024, 3, 1, 10, 30, tzinfo=timezone.utc)


def make_events(n: int, start: int = 0, step: timedelta = timedelta(minutes=7)) -> list[Event]:
    return [
        Event(event_id=f"e{i}", user_id=f"u{i % 5}", item_id=f"i{i % 11}", type="click", ts=T0 + i * step)
        for i in range(start, start + n)
    ]


def test_events_are_partitioned_by_event_hour_and_read_back_in_time_order(tmp_path: Path) -> None:
    events = make_events(50)
    with LocalEventLog(tmp_path) as log:
        log.append(list(reversed(events)))
    assert {f.parent.relative_to(tmp_path).as_posix() for f in log.files()} == {
        partition_of(e.ts) for e in events
    }
    assert [e.event_id for e in log.read()] == [e.event_id for e in events]


def test_early_years_are_padded_and_read_in_time_order(tmp_path: Path) -> None:
    early = [Event(event_id=f"y{year}", user_id="u", item_id="i", type="click", ts=datetime(year, 1, 1, tzinfo=timezone.utc))
             for year in (2024, 1, 999)]
    assert partition_of(early[1].ts) == "dt=0001-01-01/hr=00"  # Spark's partition value for the same day
    with LocalEventLog(tmp_path) as log:
        log.append(early)
    assert [e.event_id for e in log.read()] == ["y1", "y999", "y2024"]


def test_in_progress_files_are_hidden_until_rolled(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path, EventLogSettings(roll_max_age_s=3600))
    log.append(make_events(10))
    assert log.files() == [] and list(log.read()) == []
    hidden = list(tmp_path.glob("dt=*/hr=*/.part-*.inprogress"))
    assert hidden, "acknowledged events must be on disk in a hidden file"
    log.roll_all()
    assert len(list(log.read())) == 10
    assert not list(tmp_path.glob("dt=*/hr=*/.part-*"))
    log.close()


def test_files_roll_by_size_and_by_age(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path, EventLogSettings(roll_max_bytes=2_000, roll_max_age_s=3600)) as log:
        for i in range(10):
            log.append(make_events(5, start=i * 5, step=timedelta(seconds=1)))
        assert len(log.files()) >= 3  # ~200 bytes per event: rolled by size while open

    with LocalEventLog(tmp_path / "age", EventLogSettings(roll_max_age_s=0.2)) as log:
        log.append(make_events(3))
        deadline = time.monotonic() + 60  # the roller thread may be slow to run on a busy machine
        while not log.files() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(1 for _ in log.read()) == 3


def test_duplicates_are_dropped_on_read(tmp_path: Path) -> None:
    events = make_events(20)
    with LocalEventLog(tmp_path) as log:
        log.append(events)
        log.append(events[5:15])
    with LocalEventLog(tmp_path) as log:  # a second writer, as after a retried import
        log.append(events[:3])
    ids = [e.event_id for e in log.read()]
    assert sorted(ids) == sorted(e.event_id for e in events)


def test_read_filters_by_time_range(tmp_path: Path) -> None:
    events = make_events(40)
    with LocalEventLog(tmp_path) as log:
        log.append(events)
    start, end = events[10].ts, events[30].ts
    assert [e.event_id for e in log.read(start, end)] == [e.event_id for e in events[10:30]]


def test_malformed_line_is_skipped_and_counted_not_fatal(tmp_path: Path) -> None:
    with LocalEventLog(tmp_path) as log:
        log.append(make_events(3, step=timedelta(seconds=1)))
    path = log.files()[0]
    with path.open("a") as handle:
        handle.write('{"event_id": "broken"\n')
    reader = LocalEventLog(tmp_path)
    assert len(list(reader.read())) == 3
    assert reader.rejected_lines == 1
    reader.close()


def test_concurrent_appends_share_group_commits_and_lose_nothing(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)

    def writer(offset: int) -> None:
        for batch in range(20):
            log.append(make_events(10, start=offset + batch * 10))

    threads = [threading.Thread(target=writer, args=(t * 1000,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    assert len({e.event_id for e in log.read()}) == 800


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import datetime, timedelta, timezone
    from feature_store.event_log import LocalEventLog
    from feature_store.schemas import Event
    from feature_store.settings import EventLogSettings

    log = LocalEventLog(sys.argv[1], EventLogSettings(roll_max_bytes=20_000, roll_max_age_s=3600))
    t0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
    batch = 0
    while True:
        events = [
            Event(event_id=f"b{batch}-{i}", user_id="u", item_id=f"i{i}", type="click",
                  ts=t0 + timedelta(minutes=batch * 3 + i))
            for i in range(25)
        ]
        log.append(events)
        print(batch, flush=True)  # acknowledged: durable before this line is written
        batch += 1
    """
)


def test_sigkill_mid_append_loses_no_acknowledged_event_and_exposes_no_partial_file(tmp_path: Path) -> None:
    root = tmp_path / "log"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert writer.stdout is not None
    acknowledged: list[int] = []
    for line in writer.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 60:
            break
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    acknowledged.extend(int(line) for line in writer.stdout.read().split())

    # Before recovery a reader sees only complete files: every visible line parses.
    reader = EventLogReader(root)
    visible_before = list(reader.read())
    assert reader.rejected_lines == 0

    recovered = LocalEventLog(root)  # a new writer publishes what the dead one left behind
    assert recovered.recovered_files >= 1
    ids = {e.event_id for e in recovered.read()}
    assert recovered.rejected_lines == 0
    assert not list(root.glob("dt=*/hr=*/.part-*"))
    missing = [f"b{b}-{i}" for b in acknowledged for i in range(25) if f"b{b}-{i}" not in ids]
    assert missing == []
    assert len(ids) >= len(visible_before)
    recovered.close()


def test_recovery_cuts_a_torn_last_line_and_keeps_complete_ones(tmp_path: Path) -> None:
    events = make_events(4, step=timedelta(seconds=1))
    directory = tmp_path / partition_of(events[0].ts)
    directory.mkdir(parents=True)
    orphan = directory / ".part-20240301T000000-deadwriter-000001.jsonl.inprogress"
    torn = events[3].to_json_line()[:40]
    orphan.write_text("".join(e.to_json_line() for e in events[:3]) + torn)

    log = LocalEventLog(tmp_path)
    assert log.recovered_files == 1
    assert [e.event_id for e in log.read()] == ["e0", "e1", "e2"]
    assert log.rejected_lines == 0
    log.close()


def test_recovery_leaves_a_live_writers_file_alone(tmp_path: Path) -> None:
    live = LocalEventLog(tmp_path, EventLogSettings(roll_max_age_s=3600))
    live.append(make_events(2))
    other = LocalEventLog(tmp_path)
    assert other.recovered_files == 0
    assert list(tmp_path.glob("dt=*/hr=*/.part-*.inprogress"))
    live.close()
    other.close()
    assert len(list(other.read())) == 2


RECOVERER = textwrap.dedent(
    """
    import sys
    from feature_store.event_log import LocalEventLog
    from feature_store.settings import EventLogSettings

    print("ready", flush=True)
    sys.stdin.readline()  # every recoverer starts at once
    log = LocalEventLog(sys.argv[1], EventLogSettings(roll_max_age_s=3600))
    print(log.recovered_files, flush=True)
    log.close()
    """
)


def test_two_processes_recovering_at_once_publish_every_orphan_once(tmp_path: Path) -> None:
    """As two API workers starting after a crash: both find the dead writer's files."""
    events = make_events(600, step=timedelta(seconds=20))
    for number in range(300):
        directory = tmp_path / partition_of(events[2 * number].ts)
        directory.mkdir(parents=True, exist_ok=True)
        orphan = directory / f".part-20240301T000000-deadwriter-{number:06d}.jsonl.inprogress"
        orphan.write_text("".join(e.to_json_line() for e in events[2 * number : 2 * number + 2]))
    recoverers = [
        subprocess.Popen([sys.executable, "-c", RECOVERER, str(tmp_path)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
        for _ in range(2)
    ]  # fmt: skip
    for recoverer in recoverers:
        assert recoverer.stdout is not None and recoverer.stdout.readline() == "ready\n"
    for recoverer in recoverers:
        assert recoverer.stdin is not None
        recoverer.stdin.write("\n")
        recoverer.stdin.flush()
    results = [recoverer.communicate(timeout=120) for recoverer in recoverers]
    assert [r.returncode for r in recoverers] == [0, 0], [err for _, err in results]
    assert sum(int(out) for out, _ in results) == 300
    assert not list(tmp_path.glob("dt=*/hr=*/.part-*"))
    reader = EventLogReader(tmp_path)
    assert [e.event_id for e in reader.read()] == [e.event_id for e in events]
    assert reader.rejected_lines == 0


def test_recovery_beside_a_live_writer_takes_none_of_its_files(tmp_path: Path) -> None:
    """A process starting while another writes (a restarted worker beside a live one): the writer
    opens and rolls files all the while; recovery must neither fail on them nor take them."""
    root = tmp_path / "log"
    root.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER.replace("roll_max_bytes=20_000", "roll_max_bytes=1"), str(root)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert writer.stdout is not None
    acknowledged = [int(writer.stdout.readline())]
    try:
        for _ in range(200):
            LocalEventLog(root, EventLogSettings(roll_max_age_s=3600)).close()
            acknowledged.append(int(writer.stdout.readline()))
    finally:
        writer.kill()
        writer.wait()
    acknowledged.extend(int(line) for line in writer.stdout.read().split())
    recovered = LocalEventLog(root)
    ids = {e.event_id for e in recovered.read()}
    recovered.close()
    assert [f"b{b}-{i}" for b in acknowledged for i in range(25) if f"b{b}-{i}" not in ids] == []
