"""Point-in-time ("as of") features on Spark without driver-side collection or range joins.

Sample rows and event (or fact) rows are stacked into one table, ordered by (ts, sample before
event), and every feature is a running aggregate over that order: a count is the running sum of an
event condition, a carried value is `last(value, ignorenulls)`. At a sample row the running frame
holds exactly the rows with ts strictly before the sample's ts (rows at the same ts that are events
sort after it), so a sample never sees its own future. One shuffle and sort per partition key;
memory bounded by Spark's external sorter.

Windows whose keys extend the previous one's (user_id, then user_id + category) reuse its
shuffle: Spark only sorts again. Facts fed in (e.g. `history_facts`) must be unique per
(keys, ts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, WindowSpec

#: 0 on sample rows, 1 on event and fact rows: the tie-break that keeps same-ts events out.
ROW_KIND = "_pit_kind"
SAMPLE, EVENT = 0, 1


def stack(samples: DataFrame, *others: DataFrame) -> DataFrame:
    """Samples (ROW_KIND 0) and event/fact rows (ROW_KIND 1) in one table; missing columns null."""
    from pyspark.sql import functions as F

    stacked = samples.withColumn(ROW_KIND, F.lit(SAMPLE))
    for other in others:
        stacked = stacked.unionByName(other.withColumn(ROW_KIND, F.lit(EVENT)), allowMissingColumns=True)
    return stacked


def running(keys: Sequence[str]) -> WindowSpec:
    """All rows of the same keys up to the current one, in (ts, sample-before-event) order."""
    from pyspark.sql import Window

    return (
        Window.partitionBy(*keys)
        .orderBy("ts", ROW_KIND)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )


def count_before(condition: str, keys: Sequence[str]) -> Column:
    """Number of event rows with the same keys, before the row's ts, where the SQL `condition` holds."""
    from pyspark.sql import functions as F

    hit = F.when(F.col(ROW_KIND) == EVENT, F.coalesce(F.expr(f"CAST(({condition}) AS INT)"), F.lit(0)))
    return F.coalesce(F.sum(hit.otherwise(0)).over(running(keys)), F.lit(0)).cast("long")


def last_before(column: str, keys: Sequence[str]) -> Column:
    """The latest non-null `column` of a row with the same keys before the row's ts (null if none)."""
    from pyspark.sql import functions as F

    return F.last(column, ignorenulls=True).over(running(keys))


def samples_only(stacked: DataFrame) -> DataFrame:
    """Back from a stacked table to its sample rows."""
    from pyspark.sql import functions as F

    return stacked.where(F.col(ROW_KIND) == SAMPLE).drop(ROW_KIND)


def history_facts(positives: DataFrame, max_len: int) -> DataFrame:
    """Facts (user_id, ts, hist_item_ids, hist_categories): the user's last `max_len` positive items
    up to and including ts, oldest first (most recent LAST), ties at one ts ordered by event_id.

    Positives at one ts are grouped first, so a frame of `max_len` groups always holds at least
    `max_len` items when the user has that many: memory per row is bounded by the cap.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    groups = positives.groupBy("user_id", "ts").agg(
        F.array_sort(F.collect_list(F.struct("event_id", "item_id", "category"))).alias("_group")
    )
    frame = Window.partitionBy("user_id").orderBy("ts").rowsBetween(-max_len, Window.currentRow)
    recent = F.flatten(F.collect_list("_group").over(frame))
    capped = F.slice("_recent", F.greatest(F.size("_recent") - max_len + 1, F.lit(1)), max_len)
    return (
        groups.withColumn("_recent", recent)
        .withColumn("_recent", capped)
        .select(
            "user_id", "ts",
            F.col("_recent.item_id").alias("hist_item_ids"), F.col("_recent.category").alias("hist_categories"),
        )  # fmt: skip
    )
