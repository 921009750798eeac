"""Spark's attribution counts against the speed layer's, on closed buckets of the same log.

`recsys batch check-attribution` runs it after `recsys batch attribution`, with the stream job
caught up on the same log. Both layers count by `feature_store.attribution`, in hourly buckets of
the impression's event time; the speed layer's counts are read with
`AttributionStore.scan_counts`, on the executors (one task per dimension), so neither side is
collected to the driver.

Compared: the buckets starting in [since, until) where

- until is at most the end of the last *closed* bucket, one whose outcomes the stream job has all
  decided: an outcome is attributed to an impression at most `attribution.window_s` after it, and
  one the job cannot credit at once is decided when its watermark passes the outcome's time plus
  `flink.allowed_lateness_ms` (`pipelines.flink.join`). That watermark is Flink's bounded
  out-of-orderness one, newest time - `flink.out_of_orderness_ms` - 1 ms, of the *impressions and
  outcomes* only (the job's parse drops other events before it). So a bucket is closed when
  bucket end + window + allowed lateness <= newest impression or outcome time - margin - 1 ms,
  the margin being `flink.out_of_orderness_ms` unless given. With `flink.parallelism` p > 1 the
  job's watermark is the least of its p readers', each moved by the files it read, which the log
  does not tell: the check then assumes every reader has read an event as new as the newest
  (give a larger margin, or `until`, where one may lag);
  With `include_open` (the log is quiescent and the stream has caught up on it), every bucket up
  to the newest event is compared: they agree except for outcomes the stream still holds pending
  (those without a request id wait for the watermark; see `pipelines.flink.join`);
- since is at least the oldest bucket the speed layer still holds whole: it applies no record
  older than `attribution_store.max_record_age_ms` at the time it sees it, and expires older
  buckets.

Every (dimension, key, bucket, measure) whose values differ is a difference, a count missing on
one side being 0. They are written to `attribution_check/` (Parquet: dimension, key, bucket_ms,
measure, spark, flink) and read back in order by `differences`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feature_store.attribution import BUCKET_MS, CountRow, Dimension
from feature_store.attribution_store import max_record_age_ms
from feature_store.settings import Settings
from pipelines.flink.join import TIMER_GRID_MS
from pipelines.spark.common import BatchPaths, read_parquet
from pipelines.spark.jobs.attribution import COUNTS, IMPRESSION, OUTCOME_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

OUTPUT = "attribution_check"
KEYS = ["dimension", "key", "bucket_ms", "measure"]
COUNT_SCHEMA = "dimension string, key string, bucket_ms long, measure string, value long"

#: The speed layer's counts of one dimension; picklable, since it runs on the executors.
CountSource = Callable[[str], Iterable[CountRow]]


@dataclass(frozen=True)
class RedisCounts:
    """The speed layer's counts in Redis (`AttributionStore.scan_counts`), one store per task."""

    settings: Settings
    url: str

    def __call__(self, dimension: str) -> Iterator[CountRow]:
        from feature_store.online_store import RedisOnlineStore

        store = RedisOnlineStore.from_settings(self.settings, self.url).attribution()
        try:
            yield from store.scan_counts(dimension)
        finally:
            store.close()


@dataclass(frozen=True)
class Difference:
    dimension: str
    key: str
    bucket_ms: int
    measure: str
    spark: int
    flink: int

    def __str__(self) -> str:
        hour = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.bucket_ms / 1000))
        return (f"{self.dimension} {self.key!r} bucket {hour} ({self.bucket_ms}) {self.measure}: "
                f"spark {self.spark}, flink {self.flink}")  # fmt: skip


@dataclass(frozen=True)
class CheckReport:
    """What one check compared, and how many (dimension, key, bucket, measure) differ."""

    since_ms: int
    until_ms: int
    newest_event_ms: int
    watermark_ms: int  # the stream job's watermark the check assumes (module docstring)
    compared: int
    differences: int
    output: str

    @property
    def ok(self) -> bool:
        return self.differences == 0


def stream_watermark_ms(newest_ms: int, out_of_orderness_ms: int) -> int:
    """The stream job's watermark once it has read an impression or outcome at `newest_ms`: Flink's
    `BoundedOutOfOrdernessWatermarks` emits the largest time seen - out-of-orderness - 1 ms."""
    return newest_ms - out_of_orderness_ms - 1


def closed_until_ms(watermark_ms: int, window_ms: int, allowed_lateness_ms: int) -> int:
    """The end of the last closed bucket at the stream's `watermark_ms`: for the buckets ending at
    or before it, the latest outcome that may be theirs (at bucket end - 1 ms + window) is decided,
    which the job does at its time + allowed lateness + 1 ms (`features.too_late_from_ms`) rounded
    up to its timer grid (`join.timer_at`)."""
    cutoff = watermark_ms - watermark_ms % TIMER_GRID_MS - window_ms - allowed_lateness_ms
    return cutoff - cutoff % BUCKET_MS


def newest_times(events: DataFrame) -> tuple[int, int]:
    """The newest event time of the master table, and its newest impression or outcome time (the
    events that move the stream job's watermark); 0 for none."""
    from pyspark.sql import functions as F

    ts_ms, read = F.unix_millis("ts"), F.col("type").isin(IMPRESSION, *OUTCOME_COLUMNS)
    row = events.agg(F.max(ts_ms), F.max(F.when(read, ts_ms))).first()
    return row[0] or 0, row[1] or 0


def speed_oldest_ms(settings: Settings, now_ms: int) -> int:
    """The first bucket the speed layer holds whole at `now_ms` (see the module docstring)."""
    oldest = now_ms - max_record_age_ms(settings.feature_store.dedup_ttl_s)
    return oldest - oldest % BUCKET_MS + BUCKET_MS


def speed_counts(spark: SparkSession, source: CountSource) -> DataFrame:
    """The speed layer's counts as a DataFrame (`COUNT_SCHEMA`), read by one task per dimension."""
    dimensions = spark.sparkContext.parallelize(list(Dimension.ALL), len(Dimension.ALL))
    rows = dimensions.flatMap(
        lambda dimension: ((r.dimension, r.key, r.bucket_ms, r.measure, r.value) for r in source(dimension))
    )
    return spark.createDataFrame(rows, COUNT_SCHEMA)


def compare(batch: DataFrame, speed: DataFrame, since_ms: int, until_ms: int) -> DataFrame:
    """Both sides' counts in the buckets [since_ms, until_ms): KEYS, spark, flink (0 if absent)."""
    from pyspark.sql import functions as F

    def in_range(counts: DataFrame, side: str) -> DataFrame:
        bucket = F.col("bucket_ms")
        return counts.where((bucket >= since_ms) & (bucket < until_ms)).select(*KEYS, F.col("value").alias(side))

    joined = in_range(batch, "spark").join(in_range(speed, "flink"), KEYS, "full_outer")
    return joined.select(*KEYS, *(F.coalesce(side, F.lit(0)).cast("long").alias(side) for side in ("spark", "flink")))


def check_attribution(
    spark: SparkSession,
    settings: Settings,
    source: CountSource,
    since_ms: int | None = None,
    until_ms: int | None = None,
    margin_ms: int | None = None,
    now_ms: int | None = None,
    include_open: bool = False,
) -> CheckReport:
    """Compare `attribution_counts/` with `source` on the closed buckets in [since_ms, until_ms)
    (each bound narrowed as the module docstring says); differences go to `attribution_check/`."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    paths = BatchPaths.from_settings(settings)
    events = read_parquet(spark, paths.events, produced_by="compact")
    newest_ms, newest_read_ms = newest_times(events)
    margin = settings.flink.out_of_orderness_ms if margin_ms is None else margin_ms
    watermark = stream_watermark_ms(newest_read_ms, margin)
    if include_open:
        closed = newest_ms - newest_ms % BUCKET_MS + BUCKET_MS
    else:
        window_ms = int(settings.attribution.window_s * 1000)
        closed = closed_until_ms(watermark, window_ms, settings.flink.allowed_lateness_ms)
    until = closed if until_ms is None else min(until_ms, closed)
    oldest = speed_oldest_ms(settings, int(time.time() * 1000) if now_ms is None else now_ms)
    since = oldest if since_ms is None else max(since_ms, oldest)
    batch = read_parquet(spark, paths.output(COUNTS), produced_by="attribution")
    both = compare(batch, speed_counts(spark, source), since, until).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        compared = both.count()
        both.where(F.col("spark") != F.col("flink")).write.mode("overwrite").parquet(paths.output(OUTPUT))
    finally:
        both.unpersist()
    differences = spark.read.parquet(paths.output(OUTPUT)).count()
    return CheckReport(since, until, newest_ms, watermark, compared, differences, paths.output(OUTPUT))


def differences(spark: SparkSession, report: CheckReport) -> Iterator[Difference]:
    """The differences a check wrote, ordered by dimension, key, bucket and measure; streamed a
    partition at a time."""
    table = spark.read.parquet(report.output).orderBy(*KEYS)
    for row in table.toLocalIterator():
        yield Difference(row.dimension, row.key, row.bucket_ms, row.measure, row.spark, row.flink)
