"""`recsys data import PATH --format csv|tsv|jsonl|sequences`: columns mapped by name, times
parsed or given in file order, bad lines reported as file:line, reruns skipped."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from typer.testing import CliRunner, Result

from feature_store.catalog import Catalog
from feature_store.event_log import EventLogReader
from feature_store.settings import Settings
from services.cli import app


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


def test_sequences_keep_file_order_as_time_and_fill_categories(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b c\nu2 c a\nlonely\n")
    attributes = tmp_path / "attrs.json"
    attributes.write_text(json.dumps({"a": [3, 9], "c": [4]}))
    result = _cli(settings, path, "--format", "sequences", "--categories", str(attributes), "--event-type", "purchase")
    assert result.exit_code == 0 and "seq.txt:3: expected a user id and at least one item id" in result.output
    events = _events(settings)
    by_user = {u: [i for _, i, _, _, _ in sorted((ts, i, u, k, v) for u2, i, k, v, ts in events if u2 == u)] for u in ("u1", "u2")}
    assert by_user == {"u1": ["a", "b", "c"], "u2": ["c", "a"]}
    times = sorted(ts for *_, ts in events)
    assert len(set(times)) == 5 and {kind for _, _, kind, _, _ in events} == {"purchase"}
    table = Catalog.from_settings(settings).items_table(["item_id", "categories"]).to_pylist()
    assert {row["item_id"]: row["categories"] for row in table} == {"a": ["3", "9"], "b": [], "c": ["4"]}


def test_strict_and_missing_columns_fail_naming_file_and_line(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user_id,item_id,timestamp\nu1,i1,10\nu1,,20\n")
    strict = _cli(settings, path, "--strict")
    assert strict.exit_code != 0 and "bad.csv:3: empty 'item_id'" in strict.output
    assert not settings.event_log_dir.exists() or _events(settings) == []
    missing = _cli(settings, path, "--rating", "stars")
    assert missing.exit_code != 0 and "bad.csv:1: header has no column 'stars'" in missing.output
