"""Point-in-time ("as of") joins on Spark without driver-side collection.

`as_of(samples, facts, keys, values)` gives each sample row the values of the latest fact row with
the same keys and a timestamp *strictly before* the sample's `ts`. Both tables are unioned,
ordered by (ts, sample-before-fact), and each value is carried forward with
`last(value, ignorenulls)` over a running frame: one shuffle and sort, memory bounded by Spark's
external sorter, no range join. Facts must be unique per (keys, ts); the builders below are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

_ORDER = "_pit_order"


def as_of(samples: DataFrame, facts: DataFrame, keys: Sequence[str], values: Sequence[str]) -> DataFrame:
    """`samples` plus `values` taken from the latest `facts` row (same `keys`) with ts < sample ts.

    A value is null when no earlier fact exists. Each value column is carried separately, so a
    fact row may leave some values null (they then come from an earlier fact).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    sample_rows = samples.withColumn(_ORDER, F.lit(0))
    fact_rows = facts.select(*keys, "ts", *values).withColumn(_ORDER, F.lit(1))
    for name in values:
        sample_rows = sample_rows.withColumn(name, F.lit(None).cast(facts.schema[name].dataType))
    running = (
        Window.partitionBy(*keys)
        .orderBy("ts", _ORDER)
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    unioned = sample_rows.unionByName(fact_rows, allowMissingColumns=True)
    carried = unioned.select(
        *[c for c in unioned.columns if c not in values],
        *[F.last(name, ignorenulls=True).over(running).alias(name) for name in values],
    )
    return carried.where(F.col(_ORDER) == 0).drop(_ORDER)


def running_counts(events: DataFrame, keys: Sequence[str], counts: dict[str, str]) -> DataFrame:
    """Facts (keys, ts, <name>...) holding cumulative counts up to and including each ts.

    `counts` maps an output name to a boolean SQL expression over the event columns.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    per_ts = events.groupBy(*keys, "ts").agg(
        *[F.sum(F.expr(f"CAST(({condition}) AS INT)")).alias(name) for name, condition in counts.items()]
    )
    running = Window.partitionBy(*keys).orderBy("ts").rowsBetween(Window.unboundedPreceding, Window.currentRow)
    return per_ts.select(*keys, "ts", *[F.sum(name).over(running).cast("long").alias(name) for name in counts])


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
