"""`recsys data import PATH --format csv|tsv|jsonl|sequences`: columns mapped by name, times
parsed, given in file order, or ending each sequence at one instant; bad lines reported as
file:line, reruns skipped."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from typer.testing import CliRunner, Result

from feature_store.catalog import Catalog
from feature_store.event_log import EventLogReader
from feature_store.schemas import Item
from feature_store.settings import Settings
from pipelines.datasets.interactions import FIELD_LIMIT, SEQUENCE_EPOCH
from services.cli import app

EPOCH, SECOND = datetime.fromtimestamp(SEQUENCE_EPOCH, timezone.utc), timedelta(seconds=1)


def _cli(settings: Settings, path: Path, *extra: str) -> Result:
    return CliRunner().invoke(app, ["data", "import", str(path), "--state-dir", str(settings.state_dir), *extra])


def _events(settings: Settings) -> list[tuple[str, str, str, float | None, datetime]]:
    reader = EventLogReader(settings.event_log_dir)
    return sorted((e.user_id, e.item_id, e.type.value, e.value, e.ts) for e in reader.read())


def test_csv_with_mapped_columns_and_a_bad_line(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "export.csv"
    path.write_text("who,what,stars,when\nu1,i1,4,1700000000\nu1,i2,x,1700000060\nu2,\"i,3\",5,2023-11-14T22:15:00Z\n")
    result = _cli(settings, path, "--user", "who", "--item", "what", "--rating", "stars", "--time", "when")
    assert result.exit_code == 0, result.output
    assert "export.csv:3: 'stars' is not a number" in result.output
    assert _events(settings) == [
        ("u1", "i1", "rating", 4.0, datetime.fromtimestamp(1700000000, timezone.utc)),
        ("u2", "i,3", "rating", 5.0, datetime(2023, 11, 14, 22, 15, tzinfo=timezone.utc)),
    ]
    again = _cli(settings, path, "--user", "who", "--item", "what", "--rating", "stars", "--time", "when")
    assert "already imported" in again.output and len(_events(settings)) == 2


def test_tsv_and_jsonl_without_ratings_are_click_events(tmp_path: Path, settings: Settings) -> None:
    tsv = tmp_path / "a.tsv"
    tsv.write_text("user\titem\tts\nu1\ti1\t100\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(json.dumps({"u": "u2", "i": 7, "t": 200}) + "\n[1, 2]\n")
    assert _cli(settings, tsv, "--format", "tsv", "--user", "user", "--item", "item", "--time", "ts").exit_code == 0
    result = _cli(settings, jsonl, "--format", "jsonl", "--user", "u", "--item", "i", "--time", "t")
    assert result.exit_code == 0 and "b.jsonl:2: not a JSON object" in result.output
    assert [(u, i, kind, value) for u, i, kind, value, _ in _events(settings)] == [("u1", "i1", "click", None), ("u2", "7", "click", None)]


def test_sequences_end_every_users_line_at_the_epoch_and_fill_categories(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b c\nu2 c a\nlonely\n")
    attributes = tmp_path / "attrs.json"
    attributes.write_text(json.dumps({"a": [3, 9], "c": [4]}))
    result = _cli(settings, path, "--format", "sequences", "--categories", str(attributes), "--event-type", "purchase")
    assert result.exit_code == 0 and "seq.txt:3: expected a user id and at least one item id" in result.output
    # One second apart in each user's order, every user's last item at the epoch: all users' newest
    # items fall in the newest window of a time-based split, not only the users at the file's end.
    assert _events(settings) == [
        ("u1", "a", "purchase", None, EPOCH - 2 * SECOND), ("u1", "b", "purchase", None, EPOCH - SECOND),
        ("u1", "c", "purchase", None, EPOCH), ("u2", "a", "purchase", None, EPOCH), ("u2", "c", "purchase", None, EPOCH - SECOND)]
    table = Catalog.from_settings(settings).items_table(["item_id", "categories"]).to_pylist()
    assert {row["item_id"]: row["categories"] for row in table} == {"a": ["3", "9"], "b": [], "c": ["4"]}


def test_categories_create_new_items_and_change_only_the_named_items_categories(tmp_path: Path, settings: Settings) -> None:
    catalog = Catalog.from_settings(settings)
    dated = datetime(2020, 1, 1, tzinfo=timezone.utc)
    catalog.upsert_items([
        Item(item_id="retired", title="Retired toy", categories=["Toys"], available=False, metadata={"price": 9}),
        Item(item_id="puzzle", title="Puzzle", categories=["Puzzles"], created_at=dated),
    ])
    path = tmp_path / "more.csv"
    path.write_text("user_id,item_id,timestamp\nu1,retired,1600000000\nu2,puzzle,1600000001\nu3,new,1600000002\n")
    attributes = tmp_path / "attrs.json"
    attributes.write_text(json.dumps({"retired": ["Games"], "new": ["Games"]}))
    assert _cli(settings, path, "--categories", str(attributes)).exit_code == 0
    assert catalog.get_item("retired") == Item(item_id="retired", title="Retired toy", categories=["Games"],
                                               available=False, metadata={"price": 9})
    assert catalog.get_item("puzzle") == Item(item_id="puzzle", title="Puzzle", categories=["Puzzles"], created_at=dated)
    assert catalog.get_item("new") == Item(item_id="new", categories=["Games"])


def test_strict_and_missing_columns_fail_naming_file_and_line(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,10\nu1,,20\n")
    strict = _cli(settings, path, "--strict")
    assert strict.exit_code != 0 and "bad.csv:3: empty 'item_id'" in strict.output
    assert not settings.event_log_dir.exists() or _events(settings) == []
    missing = _cli(settings, path, "--rating", "stars")
    assert missing.exit_code != 0 and "bad.csv:1: header has no column 'stars'" in missing.output


def test_ids_are_exact_unambiguous_and_fit_an_event_id(tmp_path: Path, settings: Settings) -> None:
    rows = [
        {"u": "a:1", "i": "b", "t": 100},  # with the next row, `<dataset>:<user>:<item>:<ts>` would collide
        {"u": "a", "i": "1:b", "t": 100},
        {"u": "x" * 100, "i": "y" * 100, "t": 100},  # a plain id of 215 characters
        {"u": "u\u001e", "i": "i1", "t": 100},  # str.strip() would have made this user "u"
        {"u": {"a": 1}, "i": "i1", "t": 100},
        {"u": " padded\t", "i": "i1", "t": 100},  # spaces and tabs around a field are trimmed
    ]
    path = tmp_path / "ids.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _cli(settings, path, "--format", "jsonl", "--user", "u", "--item", "i", "--time", "t")
    assert result.exit_code == 0, result.output
    assert "ids.jsonl:4: 'u' must not contain control characters (U+001E at position 1)" in result.output
    assert "ids.jsonl:5: 'u' is a dict, not an id" in result.output
    logged = list(EventLogReader(settings.event_log_dir).read())  # validates every event it reads
    assert sorted((e.user_id, e.item_id) for e in logged) == sorted(
        [("a:1", "b"), ("a", "1:b"), ("x" * 100, "y" * 100), ("padded", "i1")])
    assert len({e.event_id for e in logged}) == 4 and max(len(e.event_id) for e in logged) <= 128
    assert "ids:padded:i1:100" in {e.event_id for e in logged}  # plain where unambiguous: re-imports match


def test_a_bad_byte_is_that_lines_reject_even_near_the_header(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "early.csv"
    path.write_bytes(b"user_id,item_id,timestamp\nu1,i\xff\xfe1,1700000000\nu2,i2,1700000000\n")
    result = _cli(settings, path)
    assert result.exit_code == 0 and "early.csv:2: not valid utf-8" in result.output
    assert [(u, i) for u, i, *_ in _events(settings)] == [("u2", "i2")]
    bad_header = tmp_path / "header.csv"
    bad_header.write_bytes(b"user_id,item\xff,timestamp\nu1,i1,1\n")
    failed = _cli(settings, bad_header)
    assert failed.exit_code == 2 and "header.csv:1: header is not valid utf-8" in failed.output


def test_sequences_split_at_spaces_and_tabs_only(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a\tb\nu2\u001fc d\n")  # str.split() would split at U+001F and import user "u2"
    result = _cli(settings, path, "--format", "sequences")
    assert result.exit_code == 0 and "seq.txt:2: 'user' must not contain control characters" in result.output
    assert sorted((u, i) for u, i, *_ in _events(settings)) == [("u1", "a"), ("u1", "b")]


def test_a_categories_file_that_is_not_utf8_is_named(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b\n")
    attributes = tmp_path / "attrs.json"
    attributes.write_bytes(b'{"a": ["\xff"]}')
    result = _cli(settings, path, "--format", "sequences", "--categories", str(attributes))
    assert result.exit_code == 2 and f"{attributes}: not a JSON object of item -> categories" in result.output


def test_a_future_time_is_that_lines_reject_not_a_later_compact_drop(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "future.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1700000000\nu1,i2,4000000000\n")  # 2096: compact would drop it
    result = _cli(settings, path)
    assert result.exit_code == 0 and "future.csv:3: time '4000000000' is in the future" in result.output
    assert [(u, i) for u, i, *_ in _events(settings)] == [("u1", "i1")]


def test_a_bad_categories_file_fails_in_one_line_before_any_event_is_written(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b\n")
    attributes = tmp_path / "attrs.json"
    for mapping, message in (({"a": [""]}, "item 'a': 0: String should have at least 1 character"),
                             ({"b": [None]}, "item 'b': categories are strings or integers, not [null]"),
                             ({"a": [{"k": 1}]}, "item 'a': categories are strings or integers")):
        attributes.write_text(json.dumps(mapping))
        result = _cli(settings, path, "--format", "sequences", "--categories", str(attributes))
        assert result.exit_code == 2 and f"error: {attributes}: {message}" in result.output, result.output
        assert "\n" not in result.output.strip() and not settings.event_log_dir.exists()


def test_a_purchase_and_a_cart_add_in_one_second_under_one_dataset_name_are_two_events(tmp_path: Path, settings: Settings) -> None:
    views, purchases = tmp_path / "views.csv", tmp_path / "purchases.csv"
    views.write_text("user_id,item_id,ts\nu1,i1,100\nu1,i2,100\n")
    purchases.write_text("user_id,item_id,ts\nu1,i1,100\n")
    for path, kind in ((views, "add_to_cart"), (purchases, "purchase"), (views, "add_to_cart")):
        result = _cli(settings, path, "--dataset", "shop", "--time", "ts", "--event-type", kind)
        assert result.exit_code == 0, result.output
    assert [(u, i, kind) for u, i, kind, _, _ in _events(settings)] == [
        ("u1", "i1", "add_to_cart"), ("u1", "i1", "purchase"), ("u1", "i2", "add_to_cart")]
    purchases.write_text("user_id,item_id,ts\nu1,i1,100\nu2,i1,200\n")  # the export grew: its old row is not doubled
    assert _cli(settings, purchases, "--dataset", "shop", "--time", "ts", "--event-type", "purchase").exit_code == 0
    assert [(u, kind) for u, i, kind, _, _ in _events(settings) if kind == "purchase"] == [("u1", "purchase"), ("u2", "purchase")]


def test_a_sequence_reimport_writes_nothing_new_and_a_repeated_item_stays_two_events(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "seq.txt"
    # A user's second line would end at the epoch too, interleaved with the first: a reject.
    path.write_text("u1 a b a\nu2 b a\nu1 c\nu2 a\n")
    result = _cli(settings, path, "--format", "sequences")
    assert result.exit_code == 0 and "seq.txt:3: user 'u1' already has a line" in result.output, result.output
    assert "seq.txt:4: user 'u2' already has a line" in result.output
    logged = sorted((e.user_id, e.item_id, e.ts, e.event_id) for e in EventLogReader(settings.event_log_dir).read())
    assert [(u, i, ts) for u, i, ts, _ in logged] == [
        ("u1", "a", EPOCH - 2 * SECOND), ("u1", "a", EPOCH), ("u1", "b", EPOCH - SECOND),
        ("u2", "a", EPOCH), ("u2", "b", EPOCH - SECOND)]
    assert len({event_id for *_, event_id in logged}) == 5
    strict = _cli(settings, path, "--format", "sequences", "--strict", "--dataset", "again")
    assert strict.exit_code != 0 and "seq.txt:3: user 'u1' already has a line" in strict.output
    assert "already imported" in _cli(settings, path, "--format", "sequences").output
    shutil.rmtree(settings.state_dir / "imports")  # without the manifest the rerun writes the same event ids
    assert _cli(settings, path, "--format", "sequences").exit_code == 0
    assert sorted((e.user_id, e.item_id, e.ts, e.event_id) for e in EventLogReader(settings.event_log_dir).read()) == logged


def test_a_csv_without_times_keeps_its_ratings(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user_id,item_id,rating\nu1,i1,5\nu1,i2,1\nu2,i1,4\n")
    result = _cli(settings, path, "--time", "", "--rating", "rating")
    assert result.exit_code == 0, result.output
    assert _events(settings) == [("u1", "i1", "rating", 5.0, EPOCH), ("u1", "i2", "rating", 1.0, EPOCH + SECOND),
                                 ("u2", "i1", "rating", 4.0, EPOCH + 2 * SECOND)]  # fmt: skip


def test_an_empty_or_null_rating_makes_an_event_type_event(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("user_id,item_id,timestamp,rating\nu1,i1,1600000000,5\nu1,i2,1600000001,\nu1,i3,1600000002, \n")
    assert _cli(settings, path, "--rating", "rating", "--event-type", "purchase").exit_code == 0
    rows = [{"u": "u2", "i": "i1", "t": 1600000003, "r": None}, {"u": "u2", "i": "i2", "t": 1600000004},
            {"u": "u2", "i": "i3", "t": 1600000005, "r": 4.5}, {"u": "u2", "i": "i4", "t": 1600000006, "r": "bad"}]
    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = _cli(settings, jsonl, "--format", "jsonl", "--user", "u", "--item", "i", "--time", "t", "--rating", "r")
    assert result.exit_code == 0 and "mixed.jsonl:4: 'r' is not a number: 'bad'" in result.output
    assert [(u, i, kind, value) for u, i, kind, value, _ in _events(settings)] == [
        ("u1", "i1", "rating", 5.0), ("u1", "i2", "purchase", None), ("u1", "i3", "purchase", None),
        ("u2", "i1", "click", None), ("u2", "i2", "click", None), ("u2", "i3", "rating", 4.5)]


def test_a_long_csv_field_is_read_and_an_unparsable_line_is_that_lines_reject(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "reviews.csv"
    lines = ["user_id,item_id,timestamp,review", "u1,i1,1600000000,short",
             f'u1,i2,1600000001,"{"x" * 200_000}"',  # past the csv module's default limit of 131,072
             "u2,i1,1600000002,a\rb",  # a bare carriage return: the csv module raises, not ValueError
             "u2,i2,1600000003," + "y" * (FIELD_LIMIT + 1), "u3,i3,1600000004,ok"]
    path.write_text("\n".join(lines) + "\n")
    result = _cli(settings, path)
    assert result.exit_code == 0, result.output[-2000:]
    assert "reviews.csv:4: not valid CSV: new-line character seen in unquoted field" in result.output
    assert f"reviews.csv:5: not valid CSV: field larger than field limit ({FIELD_LIMIT})" in result.output
    assert [(u, i) for u, i, *_ in _events(settings)] == [("u1", "i1"), ("u1", "i2"), ("u3", "i3")]


def test_tsv_fields_are_split_at_tabs_only_and_quotes_are_data(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "quotes.tsv"
    path.write_text('user_id\titem_id\ttimestamp\nu1\t"boxed" set\t1600000000\nu1\tboxed set\t1600000001\n'
                    'u2\t"open\t1600000002\nu2\t  "a,b"  \t1600000003\n')  # fmt: skip
    result = _cli(settings, path, "--format", "tsv")
    assert result.exit_code == 0 and "quotes.tsv:" not in result.output, result.output
    assert [(u, i) for u, i, *_ in _events(settings)] == [("u1", '"boxed" set'), ("u1", "boxed set"), ("u2", '"a,b"'), ("u2", '"open')]


def test_a_byte_order_mark_at_the_start_is_dropped_in_every_format(tmp_path: Path, settings: Settings) -> None:
    bom = b"\xef\xbb\xbf"
    files = {"bom.csv": (b"user_id,item_id,timestamp\r\nu1,i1,1600000000\r\n", ()),
             "bom.tsv": (b"user_id\titem_id\ttimestamp\nu2\ti2\t1600000000\n", ("--format", "tsv")),
             "bom.jsonl": (b'{"user_id": "u3", "item_id": "i3", "timestamp": 1600000000}\n', ("--format", "jsonl")),
             "bom.txt": (b"u4 i4 i5\n", ("--format", "sequences"))}
    for name, (content, extra) in files.items():
        (tmp_path / name).write_bytes(bom + content)
        result = _cli(settings, tmp_path / name, *extra)
        assert result.exit_code == 0 and f"{name}:1" not in result.output, result.output
    assert [(u, i) for u, i, *_ in _events(settings)] == [("u1", "i1"), ("u2", "i2"), ("u3", "i3"), ("u4", "i4"), ("u4", "i5")]


def test_times_keep_their_milliseconds_and_eight_digits_are_a_date(tmp_path: Path, settings: Settings) -> None:
    """Two clicks of one user on one item within a second are two events, each at its millisecond
    (they were one event at the whole second, the other two dropped as its duplicates); `20240315`
    is ISO 8601's basic date (it was read as 1970-08-23, a unix second)."""
    path = tmp_path / "ms.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,1700000000.2\nu1,i1,1700000000.7\nu1,i1,2023-11-14T22:13:20.9Z\n"
                    "u2,i1,20240315\nu3,i1,1700000000\n")
    result = _cli(settings, path)
    assert result.exit_code == 0, result.output
    at = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert _events(settings) == [("u1", "i1", "click", None, at + timedelta(milliseconds=ms)) for ms in (200, 700, 900)] + [
        ("u2", "i1", "click", None, datetime(2024, 3, 15, tzinfo=timezone.utc)), ("u3", "i1", "click", None, at)]
    ids = sorted(e.event_id for e in EventLogReader(settings.event_log_dir).read())
    assert ids == ["ms:u1:i1:1700000000.2", "ms:u1:i1:1700000000.7", "ms:u1:i1:1700000000.9", "ms:u2:i1:1710460800",
                   "ms:u3:i1:1700000000"]  # a whole second keeps the id earlier imports gave it
