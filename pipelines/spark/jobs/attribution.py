"""attribution: outcomes joined to the impressions they belong to, over the whole compacted log.

Implements the rule of `feature_store.attribution` (the oracle; Flink implements it too): an
outcome with a request id belongs to that request's latest impression of the same item by the same
user at most `attribution.window_s` earlier; without a request id, to the user's latest impression
of the item in the window; else to none. "Latest" is the largest (ts in ms, impression event id).

No join pairs impressions with outcomes: impressions and outcomes of one (user, item, scope) are
sorted by time in one window, and each outcome takes the last impression before it (impressions
sort before outcomes of the same millisecond). The scope is the request id for outcomes that carry
one; every impression is also listed once under the "no request" scope, so outcomes without a
request id see all of the user's impressions of the item. Linear in the events; a heavy
(user, item) pair is one sorted window partition, never a quadratic pairing.

Outputs:
- `attributed_impressions/` (Parquet by `dt`): one row per impression with its context (an
  interleaved slot's `ranks` and `ranker_propensities` as maps, null elsewhere) and one
  0/1 column per outcome type of `ATTRIBUTED_OUTCOMES`: ranker training data and the input of
  off-policy evaluation.
- `attribution_counts/` (Parquet): dimension, key, bucket_ms, measure, value, the shape of
  `feature_store.attribution.CountRow`: impressions and attributed outcomes (an impression counts
  at most one outcome of each type) per item, (item, position), position and (policy, arm), by the
  impression's event hour. Only non-zero counts are written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, NamedTuple

from feature_store.attribution import ATTRIBUTED_OUTCOMES, BUCKET_MS, MAX_COUNTED_POSITION, NO_VALUE, REVISION_IN_POLICY, Dimension
from feature_store.schemas import EventType
from feature_store.settings import Settings
from pipelines.spark.common import BatchPaths, JobSummary, Stopwatch, read_parquet

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

JOB = "attribution"
IMPRESSIONS, COUNTS = "attributed_impressions", "attribution_counts"  # outputs under the batch root
IMPRESSION = EventType.IMPRESSION.value
#: The 0/1 columns of `attributed_impressions/`, one per outcome type, in a stable order.
OUTCOME_COLUMNS: tuple[str, ...] = tuple(sorted(t.value for t in ATTRIBUTED_OUTCOMES))
CONTEXT_COLUMNS = {
    "request_id": "string", "position": "bigint", "page": "string", "policy": "string", "propensity": "double",
    "experiment": "string", "arm": "string", "team": "string",
    "ranks": "map<string,bigint>", "ranker_propensities": "map<string,double>",
}  # fmt: skip
IMPRESSION_COLUMNS = ["event_id", "user_id", "item_id", "ts", *CONTEXT_COLUMNS]


class AttributionOutput(NamedTuple):
    impressions: DataFrame  # attributed impressions: IMPRESSION_COLUMNS + OUTCOME_COLUMNS + dt
    matches: DataFrame  # one row per outcome: outcome_id, type, impression_id, impression_ts (null: unattributed)


@dataclass(frozen=True)
class AttributionParams:
    window_ms: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "AttributionParams":
        return cls(window_ms=int(settings.attribution.window_s * 1000))


def extract(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    """The master table; context columns a table compacted before they existed read as nulls."""
    return with_context_columns(read_parquet(spark, paths.events, produced_by="compact"))


def with_context_columns(events: DataFrame, names: Iterable[str] = CONTEXT_COLUMNS) -> DataFrame:
    """`events` with each context column of `names`, null where the table lacks it (compacted
    before the column existed)."""
    from pyspark.sql import functions as F

    for name in names:
        if name not in events.columns:
            events = events.withColumn(name, F.lit(None).cast(CONTEXT_COLUMNS[name]))
    return events


def match_outcomes(events: DataFrame, window_ms: int) -> DataFrame:
    """One row per outcome event: outcome_id, type, impression_id and impression_ts (the impression
    it is attributed to by the rule and its time, or nulls)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    columns = ["event_id", "user_id", "item_id", "ts", F.unix_millis("ts").alias("ts_ms")]
    impression, no_type = F.lit(0).alias("kind"), F.lit(None).cast("string").alias("type")
    impressions = events.where(F.col("type") == IMPRESSION)
    anywhere = impressions.select(*columns, F.lit(None).cast("string").alias("scope"), impression, no_type)
    in_request = impressions.where(F.col("request_id").isNotNull()).select(
        *columns, F.col("request_id").alias("scope"), impression, no_type
    )
    outcomes = events.where(F.col("type").isin(*OUTCOME_COLUMNS)).select(
        *columns, F.col("request_id").alias("scope"), F.lit(1).alias("kind"), "type"
    )
    timeline = (
        Window.partitionBy("user_id", "item_id", "scope")
        .orderBy("ts_ms", "kind", "event_id")
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    latest = F.last(F.when(F.col("kind") == 0, F.struct("ts_ms", "event_id", "ts")), ignorenulls=True).over(timeline)
    in_window = F.col("_latest").isNotNull() & (F.col("ts_ms") - F.col("_latest.ts_ms") <= window_ms)
    return (
        anywhere.unionByName(in_request).unionByName(outcomes)
        .withColumn("_latest", latest)
        .where(F.col("kind") == 1)
        .select(F.col("event_id").alias("outcome_id"), "type",
                F.when(in_window, F.col("_latest.event_id")).alias("impression_id"),
                F.when(in_window, F.col("_latest.ts")).alias("impression_ts"))
    )  # fmt: skip


def attributed_impressions(events: DataFrame, matches: DataFrame) -> DataFrame:
    """Every impression with its context and a 0/1 column per outcome type (1: at least one
    outcome of that type is attributed to it)."""
    from pyspark.sql import functions as F

    flags = matches.where(F.col("impression_id").isNotNull()).groupBy(F.col("impression_id").alias("event_id")).agg(
        *(F.max(F.when(F.col("type") == name, 1).otherwise(0)).alias(name) for name in OUTCOME_COLUMNS)
    )
    impressions = events.where(F.col("type") == IMPRESSION).select(*IMPRESSION_COLUMNS)
    return (
        impressions.join(flags, "event_id", "left")
        .select(*IMPRESSION_COLUMNS, *(F.coalesce(name, F.lit(0)).alias(name) for name in OUTCOME_COLUMNS))
        .withColumn("dt", F.date_format("ts", "yyyy-MM-dd"))
    )


def _escaped(column: Column) -> Column:
    from pyspark.sql import functions as F

    return F.replace(F.replace(column, F.lit("%"), F.lit("%25")), F.lit("|"), F.lit("%7C"))


def _join_key(*parts: Column) -> Column:
    """`feature_store.attribution.join_key` over columns."""
    from pyspark.sql import functions as F

    return F.concat_ws("|", *(_escaped(part) for part in parts))


def _or_no_value(column: Column) -> Column:
    from pyspark.sql import functions as F

    return F.coalesce(F.nullif(column, F.lit("")), F.lit(NO_VALUE))


def count_rows(impressions: DataFrame) -> DataFrame:
    """Attributed impressions → the counts (`CountRow` shape) of `Impression.count_keys`."""
    from pyspark.sql import functions as F

    position = F.when(F.col("position").isNull(), F.lit(NO_VALUE)).otherwise(  # not `least` alone: it skips nulls
        F.least(F.col("position"), F.lit(MAX_COUNTED_POSITION)).cast("string"))
    policy = F.regexp_replace(F.col("policy"), REVISION_IN_POLICY, "$1r*")  # `feature_store.attribution.counted_policy`
    policy_arm = _join_key(_or_no_value(policy), _or_no_value(F.col("arm")))
    keys = F.array(*(
        F.struct(F.lit(dimension).alias("dimension"), key.alias("key"))
        for dimension, key in [
            (Dimension.ITEM, F.col("item_id")), (Dimension.ITEM_POSITION, _join_key(F.col("item_id"), position)),
            (Dimension.POSITION, position), (Dimension.POLICY_ARM, policy_arm),
        ]
    ))  # fmt: skip
    ts_ms = F.unix_millis("ts")
    totals = (
        impressions.select(F.explode(keys).alias("_k"), (ts_ms - F.pmod(ts_ms, F.lit(BUCKET_MS))).alias("bucket_ms"),
                           *OUTCOME_COLUMNS)
        .groupBy(F.col("_k.dimension").alias("dimension"), F.col("_k.key").alias("key"), "bucket_ms")
        .agg(F.count(F.lit(1)).alias(IMPRESSION), *(F.sum(name).cast("long").alias(name) for name in OUTCOME_COLUMNS))
    )  # fmt: skip
    measures = [IMPRESSION, *OUTCOME_COLUMNS]
    return totals.unpivot(["dimension", "key", "bucket_ms"], measures, "measure", "value").where(F.col("value") > 0)


def transform(events: DataFrame, params: AttributionParams) -> AttributionOutput:
    """The attribution of a master table (see the module docstring); counts come from `count_rows`."""
    matches = match_outcomes(events, params.window_ms)
    return AttributionOutput(impressions=attributed_impressions(events, matches), matches=matches)


def read_back(written: DataFrame, path: str) -> DataFrame:
    """What `written` wrote to `path`, with its schema: a partitioned write of no rows leaves no
    file to infer one from (a log without impressions)."""
    return written.sparkSession.read.schema(written.schema).parquet(path)


def load(impressions: DataFrame, paths: BatchPaths) -> None:
    """Overwrite `attributed_impressions/` (by `dt`), then `attribution_counts/` from the written
    copy, so the log is attributed once."""
    impressions.sortWithinPartitions("dt", "ts").write.mode("overwrite").partitionBy("dt").parquet(
        paths.output(IMPRESSIONS)
    )
    written = read_back(impressions, paths.output(IMPRESSIONS))
    counts = count_rows(written).sortWithinPartitions("dimension", "key", "bucket_ms")
    counts.write.mode("overwrite").parquet(paths.output(COUNTS))


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    """Attribute every outcome of the master table; returns the summary (impressions, count rows,
    outcomes attributed and unattributed by type)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    params = AttributionParams.from_settings(settings)
    watch.step("attributing the outcomes in %s (window %d s)", paths.events, params.window_ms // 1000)
    output = transform(extract(spark, paths), params)
    matches = output.matches.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        load(output.impressions, paths)
        totals = matches.groupBy("type").agg(
            F.count(F.lit(1)).alias("outcomes"), F.count("impression_id").alias("attributed")
        )
        by_type = {row.type: (row.outcomes, row.attributed) for row in totals.collect()}  # one row per outcome type
    finally:
        matches.unpersist()
    impressions = read_back(output.impressions, paths.output(IMPRESSIONS)).count()
    counts = spark.read.parquet(paths.output(COUNTS)).count()
    watch.step("%d impressions and %d count rows written", impressions, counts)
    details = {
        "count_rows": counts,
        "attributed": {name: attributed for name, (_, attributed) in sorted(by_type.items())},
        "unattributed": {name: outcomes - attributed for name, (outcomes, attributed) in sorted(by_type.items())},
    }
    return JobSummary(
        job=JOB, rows_in=impressions + sum(outcomes for outcomes, _ in by_type.values()), rows_out=impressions,
        seconds=watch.elapsed(), outputs=[paths.output(IMPRESSIONS), paths.output(COUNTS)], details=details,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/attribution.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
