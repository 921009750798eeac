"""ranking_samples: labelled training rows for the rankers (DIN, Wide&Deep), split by time.

Rows:
- positives: every positive interaction (`feature_store.definitions.POSITIVE`; label 1,
  `label_source` = its event type);
- labelled negatives: ratings that are not positive (label_source "rating"), and for
  users with impressions, impressions not followed by a positive on the same item within the
  session gap (label_source "impression");
- sampled negatives, for users without any impression: `batch.negative_sampling_ratio` items per
  positive, drawn uniformly from the items seen in the log by a seeded hash of the positive's
  event id (deterministic), skipping items the user ever interacted with positively; they share the
  positive's ts (label_source "sampled").

Every row carries point-in-time features computed only from events strictly before its ts (see
`pipelines/spark/point_in_time.py`), so a sample never sees its own future. A row's ts is the time
the ranker scored it: an impression's, and for a positive attributed to an impression (the
attribution rule, `attribution.match_outcomes`, within `attribution_seconds`) that impression's,
not the outcome's own: the ranker scored the clicked item with the rest of its list, before the
list's impressions were logged. Positives attributed to none (imports, ratings) keep their own ts.

Output schema of `samples/` (the ranking trainers code against exactly this):
    user_id string, item_id string, ts timestamp (UTC; the features' as-of time), label tinyint (int8),
    label_source string (click/rating/purchase/impression/sampled/... event types),
    split string (train/validation/test: by time quantiles of the positives, never random),
    hist_item_ids array<string> (user's positive items strictly before ts, most recent LAST, at most
    batch.max_seq_len), hist_categories array<string> (primary category of each, aligned),
    item_category string, and float32: item_popularity (item's positives before ts), item_ctr
    (smoothed clicks/impressions before ts, prior from feature_store.definitions), user_event_count,
    user_positive_count (user's events / positives before ts), user_category_affinity (share of the
    user's positives before ts in item_category).
`samples/_manifest.json` records the sampling ratio (configured and effective), split boundaries,
the watermark (latest event time covered) and row counts per label_source and split.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from feature_store.definitions import CTR_PRIOR_ALPHA, CTR_PRIOR_BETA, POSITIVE, EventFilter
from feature_store.settings import BatchSettings, Settings
from pipelines.spark.common import (
    BatchPaths, JobSummary, Stopwatch, newest_ts, positive_condition, read_item_categories, read_parquet,
    utc_of, with_category,
)  # fmt: skip
from pipelines.spark.hadoop_files import write_text
from pipelines.spark.jobs.attribution import match_outcomes, with_context_columns
from pipelines.spark.point_in_time import as_of, history_facts, stack

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

JOB = "ranking_samples"
SAMPLE_KEYS = ["user_id", "item_id", "ts", "label", "label_source", "event_id"]
DENSE_FEATURES = ["item_popularity", "item_ctr", "user_event_count", "user_positive_count", "user_category_affinity"]
OUTPUT_COLUMNS = [
    "user_id", "item_id", "ts", "label", "label_source", "split", "hist_item_ids", "hist_categories",
    "item_category", *DENSE_FEATURES,
]  # fmt: skip


@dataclass(frozen=True)
class SampleParams:
    batch: BatchSettings
    attribution_seconds: float
    positive: EventFilter = POSITIVE

    @classmethod
    def from_settings(cls, settings: Settings) -> "SampleParams":
        return cls(batch=settings.batch, attribution_seconds=settings.batch.session_gap_minutes * 60)


@dataclass
class SampleBuild:
    """What `transform` built: the rows (lazy), manifest facts, and the cached inputs they read,
    kept in memory until `release()` (call it after the rows are written)."""

    rows: DataFrame
    info: dict[str, Any]
    cached: list[DataFrame] = field(default_factory=list)

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()


def extract(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    """Master-table events with their item's category."""
    events = with_context_columns(read_parquet(spark, paths.events, produced_by="compact"), ["request_id"]).select(
        "event_id", "user_id", "item_id", "type", "value", "ts", "request_id"
    )
    return with_category(events, read_item_categories(spark, paths))


def labelled_rows(events: DataFrame, params: SampleParams) -> DataFrame:
    """Positives, low-rating negatives and unclicked-impression negatives (SAMPLE_KEYS columns)."""
    from pyspark.sql import functions as F

    positive = positive_condition(params.positive)
    positives = at_scoring_time(events.where(positive), events, params).select(*_keys(F.lit(1), F.col("type")))
    low_ratings = events.where((F.col("type") == "rating") & ~positive).select(*_keys(F.lit(0), F.lit("rating")))
    unclicked = unclicked_impressions(events, params).select(*_keys(F.lit(0), F.lit("impression")))
    return positives.unionByName(low_ratings).unionByName(unclicked)


def at_scoring_time(positives: DataFrame, events: DataFrame, params: SampleParams) -> DataFrame:
    """`positives` with `ts` moved to the impression each is attributed to (`match_outcomes` within
    `attribution_seconds`), so their features are as of when the ranker scored the item; the others
    keep their own ts."""
    from pyspark.sql import functions as F

    window_ms = int(params.attribution_seconds * 1000)
    matches = match_outcomes(with_context_columns(events, ["request_id"]), window_ms)
    scored = matches.where(F.col("impression_ts").isNotNull()).select(F.col("outcome_id").alias("event_id"), "impression_ts")
    return positives.join(scored, "event_id", "left").withColumn("ts", F.coalesce("impression_ts", "ts")).drop("impression_ts")


def unclicked_impressions(events: DataFrame, params: SampleParams) -> DataFrame:
    """Impressions with no positive on the same (user, item) within `attribution_seconds` at or after them.

    A running minimum over each (user, item)'s impressions and positives in descending time gives
    every impression the earliest positive at or after its ts, in one sort: linear in the rows,
    where a range join on (user, item) is quadratic in a heavy pair's rows (a user who sees and
    clicks one item thousands of times).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    positive = positive_condition(params.positive)
    candidates = events.where(positive | (F.col("type") == "impression")).withColumn(
        "_is_positive", positive
    )
    # Descending ts, positives first at equal ts: the running frame of an impression holds every
    # positive at or after it, including one at the same ts.
    later_first = (
        Window.partitionBy("user_id", "item_id")
        .orderBy(F.col("ts").desc(), F.col("_is_positive").desc())
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    next_positive = F.min(F.when(F.col("_is_positive"), F.col("ts"))).over(later_first)
    deadline = F.col("ts") + F.expr(f"make_dt_interval(0, 0, 0, {params.attribution_seconds})")
    return (
        candidates.withColumn("_next_positive", next_positive)
        .where((F.col("type") == "impression") & (F.col("_next_positive").isNull() | (F.col("_next_positive") > deadline)))
        .drop("_is_positive", "_next_positive")
    )


def _keys(label: Any, source: Any) -> list[Any]:

    return ["user_id", "item_id", "ts", label.cast("tinyint").alias("label"), source.alias("label_source"), "event_id"]


def sampled_negatives(events: DataFrame, labelled: DataFrame, params: SampleParams) -> tuple[DataFrame, int]:
    """`negative_sampling_ratio` uniform negatives per positive of each user without impressions,
    and the number of such positives (the anchors the ratio applies to)."""
    from pyspark.sql import functions as F

    ratio = params.batch.negative_sampling_ratio
    with_impressions = events.where(F.col("type") == "impression").select("user_id").distinct()
    anchors = labelled.where(F.col("label") == 1).join(with_impressions, "user_id", "left_anti")
    items = indexed_items(events)
    item_count = items.count()
    if ratio == 0 or item_count == 0:
        return labelled.limit(0), 0
    draws = anchors.select(
        "user_id", "ts", "event_id", F.explode(F.sequence(F.lit(1), F.lit(ratio))).alias("_draw")
    ).withColumn("_index", F.pmod(F.xxhash64(F.lit(params.batch.seed), "event_id", "_draw"), F.lit(item_count)))
    drawn = draws.join(items, "_index")
    liked = labelled.where(F.col("label") == 1).select("user_id", "item_id").distinct()
    negatives = drawn.join(liked, ["user_id", "item_id"], "left_anti").select(*_keys(F.lit(0), F.lit("sampled")))
    return negatives, anchors.count()


def indexed_items(events: DataFrame) -> DataFrame:
    """Each distinct item with a dense index in item-id order (`_index`, `item_id`), numbered on
    the executors (a sort, then `zipWithIndex`): the item set never passes through the driver (it
    was collected there, 159 MiB of Python per million items), nor a global window's one task.
    Not cached: its count and the join that `transform` persists are its only two reads, and the
    id order makes the numbering the same each time."""
    ordered = events.select("item_id").distinct().orderBy("item_id")
    numbered = ordered.rdd.zipWithIndex().map(lambda pair: (pair[1], pair[0][0]))
    return events.sparkSession.createDataFrame(numbered, "_index long, item_id string")


def with_point_in_time_features(samples: DataFrame, events: DataFrame, params: SampleParams) -> DataFrame:
    """Join history and dense features, each computed from events strictly before the row's ts.

    Three passes over samples stacked with events (see `pipelines/spark/point_in_time.py`): by item
    (popularity, clicks, impressions), by user (event and positive counts, history facts) and by
    (user, category) over the positives (for the affinity). History fact rows have no `type`, so
    no event condition counts them.
    """
    from pyspark.sql import functions as F

    positive_sql = params.positive.sql_condition()
    positives = events.where(F.expr(positive_sql))
    history = history_facts(positives, params.batch.max_seq_len)
    events = events.select("user_id", "item_id", "ts", "type", "value", "category")
    by_item = as_of(
        stack(samples.withColumnRenamed("item_category", "category"), events), ["item_id"],
        counts={"_item_pos": positive_sql, "_item_clicks": "type = 'click'", "_item_imps": "type = 'impression'"},
    )  # fmt: skip
    by_user = as_of(
        stack(by_item, events, history), ["user_id"],
        counts={"_user_events": "type IS NOT NULL", "_user_pos": positive_sql},
        latest={"_hist_items": "hist_item_ids", "_hist_categories": "hist_categories"},
    )  # fmt: skip
    joined = as_of(stack(by_user, positives.select(*events.columns)), ["user_id", "category"], counts={"_uc_pos": positive_sql})
    empty = F.array().cast("array<string>")
    user_pos = F.col("_user_pos")
    return joined.select(
        *SAMPLE_KEYS,
        F.col("category").alias("item_category"),
        F.coalesce("_hist_items", empty).alias("hist_item_ids"),
        F.coalesce("_hist_categories", empty).alias("hist_categories"),
        F.col("_item_pos").cast("float").alias("item_popularity"),
        ((F.col("_item_clicks") + CTR_PRIOR_ALPHA)
         / (F.col("_item_imps") + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA)).cast("float").alias("item_ctr"),
        F.col("_user_events").cast("float").alias("user_event_count"),
        user_pos.cast("float").alias("user_positive_count"),
        F.when(user_pos > 0, F.col("_uc_pos") / user_pos).otherwise(0.0).cast("float").alias("user_category_affinity"),
    )  # fmt: skip


class Boundary(NamedTuple):
    """Where a split starts: at `micros`, with the first `share_before` of the rows at exactly that
    time (by a hash of the row) still in the split before it."""

    micros: int
    share_before: float


TIE_BUCKETS = 1 << 20


def split_boundaries(samples: DataFrame, batch: BatchSettings) -> tuple[Boundary, Boundary]:
    """Event-time boundaries of validation and test: quantiles of the positives' ts.

    Times tie (exports at day or second granularity, a backfill at one instant): a quantile then
    lands on a timestamp that holds many rows, and `ts < quantile` would put all of them on one
    side, down to an empty validation split. So the rows at the boundary's own time are shared: the
    earlier split keeps the part of them that brings it to its quantile."""
    from pyspark.sql import functions as F

    positives = samples.where(F.col("label") == 1).select(F.unix_micros("ts").alias("t"))
    levels = [1 - batch.validation_fraction - batch.test_fraction, 1 - batch.test_fraction]
    quantiles = positives.select(F.col("t").cast("double").alias("t")).approxQuantile("t", levels, 1e-4)
    if not quantiles:
        return Boundary(0, 0.0), Boundary(0, 0.0)
    at = [int(q) for q in quantiles]
    counts = positives.agg(
        F.count("*").alias("n"),
        *[F.sum((F.col("t") < b).cast("long")).alias(f"below{k}") for k, b in enumerate(at)],
        *[F.sum((F.col("t") == b).cast("long")).alias(f"at{k}") for k, b in enumerate(at)],
    ).first()
    bounds = []
    for k, (b, level) in enumerate(zip(at, levels)):
        tied = counts[f"at{k}"] or 0
        share = 0.0 if tied == 0 else min(max((level * counts["n"] - counts[f"below{k}"]) / tied, 0.0), 1.0)
        bounds.append(Boundary(b, share))
    return bounds[0], bounds[1]


def split_column(validation: Boundary, test: Boundary) -> Column:
    """`train` / `validation` / `test` by `ts`, rows at a boundary's own time shared by a hash of the row."""
    from pyspark.sql import functions as F

    micros = F.unix_micros("ts")
    bucket = F.pmod(F.xxhash64("user_id", "item_id", "ts", "label"), F.lit(TIE_BUCKETS)) / TIE_BUCKETS

    def before(boundary: Boundary) -> Column:
        return (micros < boundary.micros) | ((micros == boundary.micros) & (bucket < boundary.share_before))

    return F.when(before(validation), "train").when(before(test), "validation").otherwise("test")


def transform(events: DataFrame, params: SampleParams) -> SampleBuild:
    """All sample rows with features and split, plus what the manifest records about them.

    `events` and the sample rows are read several times (labels, sampling plan, split quantiles,
    features): they are persisted once here and released by `SampleBuild.release()`.
    """
    from pyspark import StorageLevel

    events = events.persist(StorageLevel.MEMORY_AND_DISK)
    labelled = labelled_rows(events, params).persist(StorageLevel.MEMORY_AND_DISK)
    negatives, anchors = sampled_negatives(events, labelled, params)
    categories = events.select("item_id", "category").dropDuplicates(["item_id"])
    samples = with_category(labelled.unionByName(negatives), categories, name="item_category")
    samples = samples.persist(StorageLevel.MEMORY_AND_DISK)
    validation_from, test_from = split_boundaries(samples, params.batch)
    labelled.unpersist()  # now held by `samples`
    split = split_column(validation_from, test_from)
    featured = with_point_in_time_features(samples, events, params).withColumn("split", split)
    info = {"validation_from": _iso(validation_from.micros), "test_from": _iso(test_from.micros),
            "validation_tie_share": validation_from.share_before, "test_tie_share": test_from.share_before,
            "sampling_anchors": anchors}
    return SampleBuild(featured.select(*OUTPUT_COLUMNS), info, [samples, events])


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, tz=timezone.utc).isoformat()


def load(samples: DataFrame, paths: BatchPaths) -> None:
    samples.sortWithinPartitions("user_id", "ts").write.mode("overwrite").parquet(paths.samples)


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    from pyspark.sql import functions as F

    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    events = extract(spark, paths)
    watch.step("building samples from %s", paths.events)
    build = transform(events, SampleParams.from_settings(settings))
    try:
        load(build.rows, paths)
        watch.step("written to %s; counting", paths.samples)
        totals = events.select(F.count("*").alias("rows"), newest_ts().alias("newest")).first()
    finally:
        build.release()
    counts = spark.read.parquet(paths.samples).groupBy("label_source", "split").count().collect()
    by_source: dict[str, int] = {}
    by_split: dict[str, int] = {}
    for row in counts:
        by_source[row.label_source] = by_source.get(row.label_source, 0) + row["count"]
        by_split[row.split] = by_split.get(row.split, 0) + row["count"]
    manifest = {
        **build.info,
        "negative_sampling_ratio": settings.batch.negative_sampling_ratio,
        "effective_sampling_ratio": by_source.get("sampled", 0) / max(build.info["sampling_anchors"], 1),
        "max_seq_len": settings.batch.max_seq_len,
        "watermark": utc_of(totals.newest),
        "rows_by_label_source": by_source,
        "rows_by_split": by_split,
    }
    write_text(spark, f"{paths.samples}/_manifest.json", json.dumps(manifest, indent=2, default=str))
    return JobSummary(
        job=JOB, rows_in=totals.rows, rows_out=sum(by_source.values()), seconds=watch.elapsed(),
        outputs=[paths.samples], details={"by_label_source": by_source, "by_split": by_split},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/ranking_samples.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
