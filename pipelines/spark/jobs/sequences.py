"""sequences: per-user, time-ordered positive-interaction sequences, split into sessions.

A session ends when the user is inactive (no event of any type) for longer than
`batch.session_gap_minutes`. Within a session only positive interactions are kept
(`feature_store.definitions.POSITIVE`), ordered by (ts, event_id), with consecutive repeats of the
same item collapsed (a click then a purchase of one item is one step). Sessions without positives
are dropped, so a user without any positive has no sequence.

Output `sequences/`: user_id, session_id (`<user_id>#<n>`), item_ids list<string>, ts
list<timestamp>, start_ts, end_ts, length. It feeds Item2vec (sessions as sentences), DIN
(histories) and `item_graph`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feature_store.definitions import POSITIVE, EventFilter
from feature_store.settings import Settings
from pipelines.spark.common import BatchPaths, JobSummary, Stopwatch, positive_condition, read_parquet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

JOB = "sequences"


@dataclass(frozen=True)
class SequenceParams:
    session_gap_seconds: float
    positive: EventFilter = POSITIVE

    @classmethod
    def from_settings(cls, settings: Settings) -> "SequenceParams":
        return cls(session_gap_seconds=settings.batch.session_gap_minutes * 60)


def extract(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    return read_parquet(spark, paths.events, produced_by="compact").select(
        "event_id", "user_id", "item_id", "type", "value", "ts"
    )


def assign_sessions(events: DataFrame, gap_seconds: float) -> DataFrame:
    """`events` plus `session_index`: 0, 1, ... per user, a new one after a gap > `gap_seconds`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_time = Window.partitionBy("user_id").orderBy("ts", "event_id")
    seconds = F.unix_micros("ts") / 1e6
    gap = seconds - F.lag(seconds).over(by_time)
    new_session = F.when(gap.isNull() | (gap <= gap_seconds), 0).otherwise(1)
    running = by_time.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return events.withColumn("_new", new_session).withColumn(
        "session_index", F.sum("_new").over(running)
    ).drop("_new")


def transform(events: DataFrame, params: SequenceParams) -> DataFrame:
    """Sessions of positive interactions, one row per (user, session)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    sessions = assign_sessions(events, params.session_gap_seconds)
    positives = sessions.where(positive_condition(params.positive))
    in_session = Window.partitionBy("user_id", "session_index").orderBy("ts", "event_id")
    previous = F.lag("item_id").over(in_session)
    steps = positives.withColumn("_repeat", F.coalesce(previous == F.col("item_id"), F.lit(False))).where(
        ~F.col("_repeat")
    )
    ordered = F.array_sort(F.collect_list(F.struct("ts", "event_id", "item_id")))
    return (
        steps.groupBy("user_id", "session_index")
        .agg(ordered.alias("_steps"))
        .select(
            "user_id",
            F.concat_ws("#", "user_id", F.col("session_index").cast("string")).alias("session_id"),
            F.col("_steps.item_id").alias("item_ids"),
            F.col("_steps.ts").alias("ts"),
            F.col("_steps")[0]["ts"].alias("start_ts"),
            F.element_at("_steps", -1)["ts"].alias("end_ts"),
            F.size("_steps").alias("length"),
        )
    )


def load(sequences: DataFrame, paths: BatchPaths) -> None:
    sequences.sortWithinPartitions("user_id", "start_ts").write.mode("overwrite").parquet(paths.sequences)


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    events = extract(spark, paths)
    watch.step("sessionizing %s (gap %.0f min)", paths.events, settings.batch.session_gap_minutes)
    load(transform(events, SequenceParams.from_settings(settings)), paths)
    written = spark.read.parquet(paths.sequences)
    stats = written.selectExpr("count(*) AS sessions", "count(DISTINCT user_id) AS users", "sum(length) AS steps").first()
    return JobSummary(
        job=JOB, rows_in=events.count(), rows_out=stats.sessions, seconds=watch.elapsed(),
        outputs=[paths.sequences], details={"users": stats.users, "steps": stats.steps or 0},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/sequences.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
