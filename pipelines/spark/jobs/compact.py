"""compact: event log (JSON lines) → the Parquet master table, partitioned by date.

Reads every complete event-log file line by line and parses each line with an explicit schema in
PERMISSIVE mode, so a malformed line becomes a reject instead of failing the job or disappearing
(blank lines are skipped). Rejected too, as the API rejects them: ids with a control character or
with whitespace at either end (ids are taken exactly), and events dated more than
`events.max_future_skew_s` after the job's clock (a log written before the API checked event time
could otherwise move the batch watermark past every live event), a `context.propensity` outside
(0, 1], a negative `context.ranks` value and a `context.ranker_propensities` value outside [0, 1],
and the event schema's (`feature_store.schemas.EventContext`) bounds: an id or a context text
field past its length, a negative `context.position`, maps and logged candidates past their sizes,
a missing map value, misaligned candidates, an invalid candidate id, a missing or non-finite score
or a `candidate_count` below their number (the speed layer's parse refuses such events, and
counting them here would make the two layers differ). What Spark's parse alone decides still
differs from pydantic's at the margins: Spark reads a JSON number where a string is due as that
string and ignores unknown context keys, which the schema refuses, and refuses a number given as a
string, which the schema's lax mode accepts; only a log not written by the API or the importers
holds such lines. Rejects are written to `rejects/` with the file, the 1-based line
number, the reason and the line itself: Spark's readers do not expose line numbers, so only the
files that hold rejects are read again, each by one executor task that numbers its lines, and the
numbered lines are joined back to the rejects (identical lines of one file are told apart by their
order). Valid events are deduplicated by `event_id` (the copy with the earliest
`ts`, then the first file name, wins: a deterministic choice) and written to `events/`,
partitioned by `dt`. The job recomputes both outputs from the whole log and overwrites them, so
re-running it on the same log gives the same table.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NamedTuple

from feature_store.schemas import MAX_ID_LENGTH, EventContext, EventType
from feature_store.settings import Settings
from pipelines.spark.common import CONTROL_CHARACTER, BatchJobError, BatchPaths, JobSummary, Stopwatch
from pipelines.spark.line_numbers import with_line_numbers

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

JOB = "compact"
CORRUPT = "_corrupt_record"
EVENT_FILE_GLOB = "part-*.jsonl"  # complete files only; `.part-*.inprogress` never matches
IDS = ("event_id", "user_id", "item_id")
EDGE_WHITESPACE = r"(?U)^\s|\s$"
MASTER_COLUMNS = [
    "event_id", "user_id", "item_id", "type", "value", "ts",
    "request_id", "position", "page", "experiment", "arm", "policy", "propensity", "team", "model_versions",
    "candidates", "candidate_scores", "candidate_count", "ranks", "ranker_propensities", "dt",
]  # fmt: skip


class CompactOutput(NamedTuple):
    events: DataFrame
    rejects: DataFrame


def event_json_schema() -> StructType:
    """The event log's JSON schema, plus the column that captures lines that do not parse."""
    from pyspark.sql import types as T

    context = T.StructType([
        T.StructField("request_id", T.StringType()),
        T.StructField("position", T.LongType()),
        T.StructField("page", T.StringType()),
        T.StructField("experiment", T.StringType()),
        T.StructField("arm", T.StringType()),
        T.StructField("policy", T.StringType()),
        T.StructField("propensity", T.DoubleType()),
        T.StructField("team", T.StringType()),
        T.StructField("model_versions", T.MapType(T.StringType(), T.StringType())),
        T.StructField("candidates", T.ArrayType(T.StringType())),
        T.StructField("candidate_scores", T.ArrayType(T.DoubleType())),
        T.StructField("candidate_count", T.LongType()),
        T.StructField("ranks", T.MapType(T.StringType(), T.LongType())),
        T.StructField("ranker_propensities", T.MapType(T.StringType(), T.DoubleType())),
    ])  # fmt: skip
    return T.StructType([
        T.StructField("event_id", T.StringType()),
        T.StructField("user_id", T.StringType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("type", T.StringType()),
        T.StructField("value", T.DoubleType()),
        T.StructField("ts", T.StringType()),
        T.StructField("context", context),
        T.StructField(CORRUPT, T.StringType()),
    ])  # fmt: skip


def extract(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    """Every complete event-log file, one row per line (`line`), with `source_file`."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    # One root path with a recursive lookup: the driver lists it in one pass, where a glob over
    # thousands of hour partitions would start one listing task per partition.
    reader = spark.read.option("recursiveFileLookup", "true").option("pathGlobFilter", EVENT_FILE_GLOB)
    try:
        lines = reader.text(paths.event_log)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise BatchJobError(f"no event log at {paths.event_log}") from None
        raise
    return lines.select(F.col("value").alias("line"), F.col("_metadata.file_path").alias("source_file"))


def parse(lines: DataFrame) -> DataFrame:
    """The event fields of each non-blank line, `CORRUPT` set where the line does not parse."""
    from pyspark.sql import functions as F

    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    parsed = lines.select("line", "source_file", F.from_json("line", event_json_schema(), options).alias("_event"))
    return parsed.where(F.col("_event").isNotNull()).select("line", "source_file", "_event.*")


def context_max_lengths(text: bool = True) -> dict[str, int]:
    """The event schema's length limits of the context's text fields (`text`), else of its maps and
    lists (`feature_store.schemas`): the speed layer's parse refuses an event past one, so the
    batch layer must too, or the two count different events."""
    return {name: limit.max_length for name, field in EventContext.model_fields.items()
            if (field.annotation == (str | None)) == text
            for limit in field.metadata if getattr(limit, "max_length", None)}


def _reject_reason(now: datetime, max_future_skew_s: float) -> Column:
    from pyspark.sql import functions as F

    def blank(name: str) -> Column:
        return F.col(name).isNull() | (F.trim(F.col(name)) == "")

    known_types = [t.value for t in EventType]
    reason = F.when(F.col(CORRUPT).isNotNull(), F.lit("malformed JSON or a field of the wrong type"))
    for name in ("event_id", "user_id", "item_id", "type", "ts"):
        reason = reason.when(blank(name), F.lit(f"missing {name}"))
    for name in IDS:
        reason = reason.when(F.col(name).rlike(CONTROL_CHARACTER), F.lit(f"{name} contains a control character"))
        reason = reason.when(F.col(name).rlike(EDGE_WHITESPACE), F.lit(f"{name} starts or ends with whitespace"))
        reason = reason.when(F.length(name) > MAX_ID_LENGTH, F.lit(f"{name} longer than {MAX_ID_LENGTH} characters"))
    for name, limit in context_max_lengths().items():
        reason = reason.when(F.length(f"context.{name}") > limit, F.lit(f"context.{name} longer than {limit} characters"))
    latest = now + timedelta(seconds=max_future_skew_s)
    propensity = F.col("context.propensity")
    return (
        reason.when(~F.col("type").isin(known_types), F.concat(F.lit("unknown event type: "), F.col("type")))
        .when(F.col("_ts").isNull(), F.concat(F.lit("unparsable ts: "), F.col("ts")))
        .when(F.col("_ts") > F.lit(latest), F.lit(
            f"ts is more than {max_future_skew_s:g} s ahead of the clock at {now:%Y-%m-%dT%H:%M:%SZ} "
            "(events.max_future_skew_s)"
        ))
        .when(F.isnan("value") | (F.abs("value") == float("inf")), F.lit("non-finite value"))
        .when(F.col("context.position") < 0, F.lit("context.position is negative"))
        .when(~propensity.between(0, 1) | (propensity == 0), F.lit("context.propensity is not in (0, 1]"))
        .when(F.exists(F.map_values("context.ranks"), lambda r: r.isNull() | (r < 0)), F.lit("context.ranks has a negative rank"))
        .when(F.exists(F.map_values("context.ranker_propensities"), lambda p: p.isNull() | ~p.between(0, 1) | F.isnan(p)),
              F.lit("context.ranker_propensities has a value outside [0, 1]"))
        .otherwise(_context_bounds_reason())
    )


def _context_bounds_reason() -> Column:
    """Why the context's maps or logged candidates break the event schema's bounds, else null."""
    from pyspark.sql import functions as F

    def size(name: str) -> Column:  # 0 for a missing field, as the schema counts it
        column = F.col(f"context.{name}")
        return F.when(column.isNull(), F.lit(0)).otherwise(F.size(column))

    limits = context_max_lengths(text=False)
    candidate = F.col("context.candidates")
    checks = [(size(name) > limit, f"context.{name} has more than {limit} entries") for name, limit in limits.items()]
    checks += [(F.exists(F.map_keys(f"context.{name}"), lambda key: F.length(key) > MAX_ID_LENGTH),
                f"context.{name} has a key longer than {MAX_ID_LENGTH} characters")
               for name in ("ranks", "ranker_propensities")]
    checks += [
        (F.exists(F.map_values("context.model_versions"), lambda version: version.isNull() | (F.length(version) > MAX_ID_LENGTH)),
         f"context.model_versions has a missing value or one longer than {MAX_ID_LENGTH} characters"),
        (F.exists(candidate, lambda c: c.isNull() | (F.length(c) == 0) | (F.length(c) > MAX_ID_LENGTH)
                  | c.rlike(CONTROL_CHARACTER) | c.rlike(EDGE_WHITESPACE)), "context.candidates holds an invalid id"),
        (size("candidates") != size("candidate_scores"), "context.candidates and context.candidate_scores differ in length"),
        (F.exists("context.candidate_scores", lambda v: v.isNull() | F.isnan(v) | (F.abs(v) == float("inf"))),
         "context.candidate_scores has a missing or non-finite score"),
        (candidate.isNotNull() & (F.coalesce(F.col("context.candidate_count"), F.lit(0)) < size("candidates")),
         "context.candidate_count is below the number of candidates logged"),
    ]
    reason = F.when(checks[0][0], F.lit(checks[0][1]))
    for condition, message in checks[1:]:
        reason = reason.when(condition, F.lit(message))
    return reason


def transform(parsed: DataFrame, now: datetime, max_future_skew_s: float) -> CompactOutput:
    """Split parsed lines (see `parse`) into valid, deduplicated master-table rows and rejects
    (source_file, reason, raw: the line as written; line numbers are added by `load`); events
    dated more than `max_future_skew_s` after `now` are rejects."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    reason = _reject_reason(now, max_future_skew_s)
    classified = parsed.withColumn("_ts", F.expr("try_cast(ts AS TIMESTAMP)")).withColumn("reason", reason)
    rejects = classified.where(F.col("reason").isNotNull()).select("source_file", "reason", F.col("line").alias("raw"))
    valid = classified.where(F.col("reason").isNull())
    first_copy = Window.partitionBy("event_id").orderBy("_ts", "source_file")
    events = (
        valid.withColumn("_copy", F.row_number().over(first_copy))
        .where(F.col("_copy") == 1)
        .select(
            *IDS, "type", "value", F.col("_ts").alias("ts"),
            "context.request_id", "context.position", "context.page", "context.experiment", "context.arm",
            "context.policy", "context.propensity", "context.team", "context.model_versions",
            "context.candidates", "context.candidate_scores", "context.candidate_count",
            "context.ranks", "context.ranker_propensities",
            F.date_format("_ts", "yyyy-MM-dd").alias("dt"),
        )  # fmt: skip
    )
    return CompactOutput(events=events, rejects=rejects)


def load(output: CompactOutput, paths: BatchPaths, partitions: int) -> None:
    """Overwrite `events/` (by `dt`, sorted by time within files) and `rejects/` (source_file,
    line_number, reason, raw)."""
    (
        output.events.repartitionByRange(partitions, "dt", "ts", "event_id")
        .sortWithinPartitions("dt", "ts", "event_id")
        .write.mode("overwrite").partitionBy("dt").parquet(paths.events)
    )
    rejects = with_line_numbers(output.rejects)
    rejects.select("source_file", "line_number", "reason", "raw").write.mode("overwrite").parquet(paths.rejects)


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    """Compact the whole event log; returns the summary (rows in/out, rejects, duplicates)."""
    from pyspark import StorageLevel
    from pyspark.errors import AnalysisException

    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    watch.step("reading event log %s", paths.event_log)
    raw = parse(extract(spark, paths)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        rows_in = raw.count()
        watch.step("%d non-blank lines read; validating, deduplicating, writing %s", rows_in, paths.events)
        output = transform(raw, datetime.now(timezone.utc), settings.events.max_future_skew_s)
        load(output, paths, settings.spark.shuffle_partitions)
    finally:
        raw.unpersist()
    rejects = spark.read.parquet(paths.rejects)
    reject_count = rejects.count()
    for row in rejects.limit(5).collect():
        watch.step("reject %s line %s: %s: %.200s", row.source_file, row.line_number, row.reason, row.raw)
    try:
        rows_out = spark.read.parquet(paths.events).count()
    except AnalysisException as exc:  # an empty frame is written as no file at all, which has no schema to read
        if "UNABLE_TO_INFER_SCHEMA" not in str(exc):
            raise
        raise BatchJobError(f"the event log {paths.event_log} holds no valid event ({rows_in} lines read, "
                            f"{reject_count} rejected: {paths.rejects}): nothing to compact") from None
    return JobSummary(
        job=JOB, rows_in=rows_in, rows_out=rows_out, rejects=reject_count, seconds=watch.elapsed(),
        outputs=[paths.events, paths.rejects], details={"duplicates": rows_in - reject_count - rows_out},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/compact.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
