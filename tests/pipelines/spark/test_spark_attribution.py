"""The Spark attribution job against the pure rule (`feature_store.attribution`): on a generated log
with planted outcomes (with, without and with unknown request ids, duplicates, late and early
outcomes, ties, out-of-order lines, hour boundaries, old lines without the new context fields),
its counts equal `reference_counts` and its attributed impressions equal `attribute` per outcome."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from feature_store.attribution import ATTRIBUTED_OUTCOMES, MAX_COUNTED_POSITION, Impression, Outcome, attribute, reference_counts
from feature_store.schemas import Event, EventType
from feature_store.settings import Settings
from pipelines.spark.jobs import attribution, compact
from tests.pipelines.spark.conftest import write_events
from tests.pipelines.spark.planted_attribution import OUTCOMES, WINDOW_S, planted_log

T0 = datetime(2024, 5, 1, 7, 20, tzinfo=timezone.utc)
def _old_lines() -> tuple[str, list[Event]]:
    """Lines written before the context had policy, propensity, team and model versions."""
    at = datetime(2024, 5, 1, 8, 59, 59, tzinfo=timezone.utc)  # the impression's hour is 08:00, the click's 09:00
    raw = [
        {"event_id": "old-imp", "user_id": "u9", "item_id": "i1", "type": "impression", "ts": at.isoformat(),
         "context": {"request_id": "old-r", "position": 2, "page": "home", "experiment": None, "arm": "b"}},
        {"event_id": "old-click", "user_id": "u9", "item_id": "i1", "type": "click",
         "ts": (at + timedelta(seconds=2)).isoformat(), "context": {"request_id": "old-r"}},
    ]  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in raw), [Event.model_validate(line) for line in raw]


def _deep_lines() -> tuple[str, list[Event]]:
    """A client's own impressions at positions past the counted ones (an infinite scroll), one clicked,
    and two learner revisions' lists (counted under one policy label)."""
    at = T0 + timedelta(minutes=5)
    raw = [{"event_id": f"deep-imp{p}", "user_id": "u8", "item_id": "i2", "type": "impression", "ts": at.isoformat(),
            "context": {"request_id": f"deep-r{p}", "position": p}} for p in (MAX_COUNTED_POSITION, 5000)]
    raw += [{"event_id": f"rev-imp{n}", "user_id": "u8", "item_id": "i3", "type": "impression", "ts": at.isoformat(),
             "context": {"request_id": f"rev-r{n}", "position": 0, "arm": "learner:online",
                         "policy": f"ranker=v1@r{n}-00ab{n}f;explore=learner:r{n}-00ab{n}f"}} for n in (7, 8)]
    raw.append({"event_id": "deep-click", "user_id": "u8", "item_id": "i2", "type": "click",
                "ts": (at + timedelta(seconds=3)).isoformat(), "context": {"request_id": "deep-r5000"}})
    return "".join(json.dumps(line) + "\n" for line in raw), [Event.model_validate(line) for line in raw]


@pytest.fixture(scope="module")
def attributed(spark: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[Event]]:
    """The generated log written out of order in several files, duplicates included, then compacted
    and attributed by the jobs; returns the settings and the log's events (with duplicates)."""
    events = planted_log(T0)
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("attribution"), spark={"master": "local[2]", "shuffle_partitions": 4},
        attribution={"window_s": WINDOW_S},
    )  # fmt: skip
    for start in range(0, len(events), 150):
        write_events(settings, events[start : start + 150])
    old_text, old_events = _old_lines()
    partition = settings.event_log_dir / "dt=2024-05-01" / "hr=08"
    (partition / "part-old.jsonl").write_text(old_text)
    deep_text, deep_events = _deep_lines()
    (partition.parent / "hr=07").mkdir(exist_ok=True)
    (partition.parent / "hr=07" / "part-deep.jsonl").write_text(deep_text)
    compact.run(spark, settings)  # type: ignore[arg-type]
    summary = attribution.run(spark, settings)  # type: ignore[arg-type]
    assert summary.rows_out == len({e.event_id for e in events if e.type == EventType.IMPRESSION}) + 5
    return settings, events + old_events + deep_events


def test_counts_equal_the_reference_rule(spark: object, attributed: tuple[Settings, list[Event]]) -> None:
    settings, events = attributed
    expected = reference_counts(events, WINDOW_S * 1000)
    rows = spark.read.parquet(f"{settings.batch_uri}/attribution_counts").collect()  # type: ignore[attr-defined]
    actual = {(r.dimension, r.key, r.bucket_ms, r.measure): r.value for r in rows}

    assert len(actual) == len(rows), "one row per (dimension, key, bucket, measure)"
    assert actual == expected
    measures = {key[3] for key in expected}
    assert measures == {"impression", *(t.value for t in OUTCOMES)}, "the log exercises every outcome type"
    assert len({key[2] for key in expected}) >= 3, "the log spans several hours"
    assert any(key[:2] == ("policy_arm", "ranker-v2%7Ceps%250.1|a") for key in expected), "escaped key parts"
    assert ("item_position", "i1|2", 1714550400000, "click") in expected, "an old line's click, attributed across the hour"
    hour = int(T0.replace(minute=0).timestamp() * 1000)
    positions = {int(key[1]) for key in actual if key[0] == "position" and key[1] != "-"}
    assert max(positions) == MAX_COUNTED_POSITION, "positions past the cap share one count"
    assert ("item_position", f"i2|{MAX_COUNTED_POSITION}", hour, "click") in actual  # the deep slot's click
    assert actual[("policy_arm", "ranker=v1@r*;explore=learner:r*|learner:online", hour, "impression")] == 2
    assert not any("@r1" in key[1] or "learner:r1" in key[1] for key in actual), "a key per learner revision"


def test_attributed_impressions_flag_each_outcome_type(spark: object, attributed: tuple[Settings, list[Event]]) -> None:
    settings, events = attributed
    impressions = [Impression.of(e) for e in events if e.type == EventType.IMPRESSION]
    expected = {i.event_id: {t.value: 0 for t in ATTRIBUTED_OUTCOMES} for i in impressions}
    for event in events:
        if event.type in ATTRIBUTED_OUTCOMES:
            target = attribute(Outcome.of(event), impressions, WINDOW_S * 1000)
            if target is not None:
                expected[target.event_id][event.type.value] = 1
    table = spark.read.parquet(f"{settings.batch_uri}/attributed_impressions")  # type: ignore[attr-defined]
    rows = {r.event_id: r for r in table.collect()}

    assert {event_id: {t: getattr(row, t) for t in expected[event_id]} for event_id, row in rows.items()} == expected
    assert 0 < sum(sum(flags.values()) for flags in expected.values()) < len(events)
    original = next(e for e in events if e.event_id == "imp-5-1")
    row = rows["imp-5-1"]
    context = original.context
    assert (row.user_id, row.item_id, row.ts.replace(tzinfo=timezone.utc), row.request_id, row.position, row.page, row.policy, row.propensity,
            row.experiment, row.arm, row.team) == (
        original.user_id, original.item_id, original.ts, context.request_id, context.position, context.page,
        context.policy, context.propensity, context.experiment, context.arm, context.team,
    )  # fmt: skip
    old = rows["old-imp"]
    assert (old.policy, old.propensity, old.team, old.click) == (None, None, None, 1)


def test_compact_keeps_the_new_context_and_rejects_a_bad_propensity(spark: object, tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, spark={"master": "local[2]", "shuffle_partitions": 2})
    partition = settings.event_log_dir / "dt=2024-05-01" / "hr=08"
    partition.mkdir(parents=True)
    context = {"request_id": "r1", "position": 0, "policy": "p", "propensity": 0.5, "team": "t",
               "model_versions": {"ranker": "3", "recall": "2"}}  # fmt: skip
    lines = [
        {"event_id": "new", "user_id": "u", "item_id": "i", "type": "impression", "ts": "2024-05-01T08:00:00Z", "context": context},
        {"event_id": "zero", "user_id": "u", "item_id": "i", "type": "impression", "ts": "2024-05-01T08:00:00Z",
         "context": {**context, "propensity": 0.0}},
        {"event_id": "big", "user_id": "u", "item_id": "i", "type": "impression", "ts": "2024-05-01T08:00:00Z",
         "context": {**context, "propensity": 1.5}},
        {"event_id": "old", "user_id": "u", "item_id": "i", "type": "click", "ts": "2024-05-01T08:00:01Z",
         "context": {"request_id": "r1"}},
    ]  # fmt: skip
    (partition / "part-1.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    compact.run(spark, settings)  # type: ignore[arg-type]

    rows = {r.event_id: r for r in spark.read.parquet(f"{settings.batch_uri}/events").collect()}  # type: ignore[attr-defined]
    assert set(rows) == {"new", "old"}
    assert (rows["new"].policy, rows["new"].propensity, rows["new"].team, rows["new"].model_versions) == (
        "p", 0.5, "t", {"ranker": "3", "recall": "2"})
    assert (rows["old"].policy, rows["old"].propensity, rows["old"].model_versions) == (None, None, None)
    rejects = {r.line_number: r.reason for r in spark.read.parquet(f"{settings.batch_uri}/rejects").collect()}  # type: ignore[attr-defined]
    assert rejects == {2: "context.propensity is not in (0, 1]", 3: "context.propensity is not in (0, 1]"}
