"""Point-in-time ("as of") features on Spark without driver-side collection or range joins.

Sample rows and event (or fact) rows are stacked into one table, ordered by (ts, sample before
event), and every feature is a running aggregate over that order: a count is the running sum of an
event condition, a carried value is the latest non-null value. At a sample row the running frame
holds exactly the rows with ts strictly before the sample's ts (rows at the same ts that are events
sort after it), so a sample never sees its own future.

Running aggregates are split by time bucket so that no window partition holds a key's whole
history: a window partitioned by (keys, bucket) gives the running value inside the row's bucket,
and a small table of per-(keys, bucket) totals, itself run over the buckets of each key, gives what
all earlier buckets contribute; the two are added (counts) or the in-bucket value wins (latest
values). Work is linear in the rows, and a heavy key (a user or item with a large share of all
events) is spread over as many tasks as it has buckets instead of one task buffering, and
spilling, all its rows. Memory per window partition is bounded by a key's rows in one bucket.

Keys must be non-null; facts fed in (e.g. `history_facts`) must be unique per (keys, ts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

#: 0 on sample rows, 1 on event and fact rows: the tie-break that keeps same-ts events out.
ROW_KIND = "_pit_kind"
SAMPLE, EVENT = 0, 1
BUCKET = "_pit_bucket"
#: Width of a time bucket: small enough that a heavy key's rows in one bucket fit a task's memory,
#: large enough that the per-bucket totals table stays small next to the events.
BUCKET_SECONDS = 3600
#: A history row's frame, in multiples of its cap: room for repeated items (`history_facts`).
HISTORY_LOOKBACK = 4


def stack(samples: DataFrame, *others: DataFrame) -> DataFrame:
    """Samples (ROW_KIND 0) and event/fact rows (ROW_KIND 1) in one table; missing columns null."""
    from pyspark.sql import functions as F

    stacked = samples.withColumn(ROW_KIND, F.lit(SAMPLE))
    for other in others:
        stacked = stacked.unionByName(other.withColumn(ROW_KIND, F.lit(EVENT)), allowMissingColumns=True)
    return stacked


def as_of(
    stacked: DataFrame,
    keys: Sequence[str],
    counts: Mapping[str, str] | None = None,
    latest: Mapping[str, str] | None = None,
    bucket_seconds: int = BUCKET_SECONDS,
) -> DataFrame:
    """The sample rows of `stacked`, each with features over the rows of the same `keys` strictly
    before its ts: `counts` (output name → SQL condition; the number of event rows where it holds,
    a long) and `latest` (output name → column; its latest non-null value, null if none).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts, latest = dict(counts or {}), dict(latest or {})
    keyed = [*keys, BUCKET]
    event = F.col(ROW_KIND) == EVENT
    rows = stacked.select(
        "*",
        F.expr(f"unix_micros(ts) div {bucket_seconds * 1_000_000}").alias(BUCKET),
        *(F.when(event, F.coalesce(F.expr(f"CAST(({condition}) AS INT)"), F.lit(0))).otherwise(0).alias(f"_hit_{name}")
          for name, condition in counts.items()),
    )  # fmt: skip
    in_bucket = Window.partitionBy(*keyed).orderBy("ts", ROW_KIND).rowsBetween(Window.unboundedPreceding, Window.currentRow)
    local = rows.select(
        "*",
        *(F.sum(f"_hit_{name}").over(in_bucket).alias(f"_in_{name}") for name in counts),
        *(F.last(column, ignorenulls=True).over(in_bucket).alias(f"_in_{name}") for name, column in latest.items()),
    ).where(F.col(ROW_KIND) == SAMPLE)
    joined = local.join(_earlier_buckets(rows, keys, counts, latest), keyed, "left")
    return joined.select(
        *(c for c in stacked.columns if c != ROW_KIND),
        *((F.col(f"_in_{name}") + F.coalesce(f"_pre_{name}", F.lit(0))).cast("long").alias(name) for name in counts),
        *(F.coalesce(f"_in_{name}", f"_pre_{name}").alias(name) for name in latest),
    )


def _earlier_buckets(rows: DataFrame, keys: Sequence[str], counts: Mapping[str, str], latest: Mapping[str, str]) -> DataFrame:
    """Per (keys, bucket): each count summed over the key's earlier buckets, and each latest value
    as of the end of the previous non-empty bucket that has one."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    totals = rows.groupBy(*keys, BUCKET).agg(
        *(F.sum(f"_hit_{name}").alias(f"_tot_{name}") for name in counts),
        # max_by skips rows whose ordering is null: the latest row that has a value.
        *(F.max_by(column, F.when(F.col(column).isNotNull(), F.col("ts"))).alias(f"_tot_{name}")
          for name, column in latest.items()),
    )  # fmt: skip
    before = Window.partitionBy(*keys).orderBy(BUCKET).rowsBetween(Window.unboundedPreceding, -1)
    return totals.select(
        *keys, BUCKET,
        *(F.sum(f"_tot_{name}").over(before).alias(f"_pre_{name}") for name in counts),
        *(F.last(f"_tot_{name}", ignorenulls=True).over(before).alias(f"_pre_{name}") for name in latest),
    )  # fmt: skip


def history_facts(positives: DataFrame, max_len: int) -> DataFrame:
    """Facts (user_id, ts, hist_item_ids, hist_categories): the user's last `max_len` positive items
    up to and including ts, oldest first (most recent LAST), each item once at its newest positive
    (as the serving history holds it), ties at one ts ordered by event_id.

    Positives at one ts are grouped first, and the frame is `HISTORY_LOOKBACK` × `max_len` groups:
    memory per row is bounded by that. It holds `max_len` distinct items unless the user repeated
    items so often that fewer than `max_len` distinct ones fall in it; then the row holds fewer
    than the serving history (which keeps `user.history`'s 200 distinct items) would.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    groups = positives.groupBy("user_id", "ts").agg(
        F.array_sort(F.collect_list(F.struct("event_id", "item_id", "category"))).alias("_group")
    )
    frame = Window.partitionBy("user_id").orderBy("ts").rowsBetween(-HISTORY_LOOKBACK * max_len, Window.currentRow)
    recent = F.flatten(F.collect_list("_group").over(frame))
    # Each item once, at its newest occurrence: the serving history is a sorted set of items.
    newest = F.filter("_recent", lambda fact, i: ~F.exists(
        F.slice("_recent", i + 2, F.size("_recent")), lambda later: later["item_id"] == fact["item_id"]))
    capped = F.slice("_recent", F.greatest(F.size("_recent") - max_len + 1, F.lit(1)), max_len)
    return (
        groups.withColumn("_recent", recent)
        .withColumn("_recent", newest)
        .withColumn("_recent", capped)
        .select(
            "user_id", "ts",
            F.col("_recent.item_id").alias("hist_item_ids"), F.col("_recent.category").alias("hist_categories"),
        )  # fmt: skip
    )
