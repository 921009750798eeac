"""batch_features: the item, user, user×category and global batch views, published with their watermark.

The feature list, event filters, windows, caps and CTR prior all come from
`feature_store.definitions.FEATURES` (the same definitions the speed layer and the online read
use). The watermark is the latest event time floored to `WATERMARK_ALIGNMENT` (an hour): the views
cover events with ts < watermark exactly, and the speed layer owns everything after it.

The global view is one row of top-k lists (`global.popular`: the serving popular list up to the
watermark). Outputs: `features/<entity>/` Parquet (key columns + one column per batch feature of the entity,
`FEATURES.batch_view_ddl(entity)`), `features/_manifest.json` (watermark, rows per entity), and a
new version of each batch view in the online store, switched atomically
(`OnlineStore.publish_batch_view`, written from the executors with `foreachPartition`).
Vector features (the item embedding) are not computed here: they are left null (readers use the
default) and filled by the training pipeline.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from feature_store.definitions import (
    FEATURES, WATERMARK_ALIGNMENT, DType, Entity, FeatureDef, Kind, Member,
)  # fmt: skip
from feature_store.settings import Settings
from pipelines.spark.common import (
    BatchJobError, BatchPaths, JobSummary, Stopwatch, read_item_categories, read_parquet, with_category,
)  # fmt: skip
from pipelines.spark.hadoop_files import write_text

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

JOB = "batch_features"
SPARK_TYPES = {DType.FLOAT: "double", DType.INT: "bigint", DType.STRING: "string",
               DType.VECTOR: "array<float>", DType.SEQUENCE: "array<string>"}  # fmt: skip


def watermark_of(events: DataFrame) -> datetime:
    """The latest event time, floored to the watermark alignment (an hour)."""
    latest = events.selectExpr("max(ts)").first()[0]
    if latest is None:
        raise BatchJobError("the master table is empty: nothing to compute features from")
    step = int(WATERMARK_ALIGNMENT.total_seconds())
    seconds = int(latest.replace(tzinfo=timezone.utc).timestamp()) // step * step
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def extract(spark: SparkSession, paths: BatchPaths) -> tuple[DataFrame, DataFrame]:
    """(events with their item's category, catalog items with primary category and categories)."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    events = read_parquet(spark, paths.events, produced_by="compact").select("event_id", "user_id", "item_id", "type", "value", "ts")
    events = with_category(events, read_item_categories(spark, paths))
    try:
        catalog = spark.read.parquet(paths.items).select("item_id", F.coalesce("categories", F.array().cast("array<string>")).alias("categories"))
    except AnalysisException:
        catalog = spark.createDataFrame([], "item_id string, categories array<string>")
    return events, catalog


def _filtered(feature: FeatureDef) -> Column:
    from pyspark.sql import functions as F

    return F.expr(feature.events.sql_condition()) if feature.events else F.lit(True)


def _newest(events: DataFrame, key: str, feature: FeatureDef, member: str) -> DataFrame:
    """Per key: the newest `cap` members of the feature's events, newest first."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest_first = Window.partitionBy(key).orderBy(F.desc("ts"), F.desc("event_id"))
    recent = events.where(_filtered(feature)).withColumn("_rank", F.row_number().over(newest_first))
    recent = recent.where(F.col("_rank") <= (feature.cap or 1))
    listed = F.transform(F.array_sort(F.collect_list(F.struct("_rank", member))), lambda s: s[member])
    return recent.groupBy(key).agg(listed.alias(feature.name))


def _top_k(events: DataFrame, key: str, feature: FeatureDef, member: str) -> DataFrame:
    """Per key: the `cap` members with most of the feature's events, strongest first."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = events.where(_filtered(feature)).groupBy(key, member).count()
    ranked = counts.withColumn("_rank", F.row_number().over(Window.partitionBy(key).orderBy(F.desc("count"), member)))
    listed = F.transform(F.array_sort(F.collect_list(F.struct("_rank", member))), lambda s: s[member])
    return ranked.where(F.col("_rank") <= (feature.cap or 1)).groupBy(key).agg(listed.alias(feature.name))


def _counts(events: DataFrame, key: str, features: list[FeatureDef], watermark: datetime) -> DataFrame:
    from pyspark.sql import functions as F

    def count(feature: FeatureDef) -> Column:
        condition = _filtered(feature)
        if feature.window is not None:
            condition = condition & (F.col("ts") >= F.lit(watermark - feature.window))
        return F.sum(condition.cast("long")).alias(feature.name)

    return events.groupBy(key).agg(*[count(f) for f in features if f.kind is Kind.COUNT])


def _assemble(entity: Entity, keys: DataFrame, parts: list[DataFrame]) -> DataFrame:
    """Join per-key parts onto `keys` and select exactly the batch view's columns, typed."""
    from pyspark.sql import functions as F

    view = keys
    for part in parts:
        view = view.join(part, [c for c in keys.columns], "left")
    columns = []
    for column in FEATURES.batch_view_columns(entity):
        value = F.col(column.name) if column.name in view.columns else F.lit(None)
        columns.append(value.cast(SPARK_TYPES[column.dtype]).alias(column.name))
    return view.select(*columns)


def item_view(events: DataFrame, catalog: DataFrame, watermark: datetime) -> DataFrame:
    from pyspark.sql import functions as F

    features = FEATURES.batch_features(Entity.ITEM)
    keys = events.select("item_id").unionByName(catalog.select("item_id")).distinct()
    metadata = catalog.select("item_id", "categories", F.get("categories", 0).alias("primary_category"))
    return _assemble(Entity.ITEM, keys, [_counts(events, "item_id", features, watermark), metadata])


def user_view(events: DataFrame, watermark: datetime) -> DataFrame:
    features = FEATURES.batch_features(Entity.USER)
    parts = [_counts(events, "user_id", features, watermark)]
    for feature in features:
        member = "category" if feature.member is Member.CATEGORY else "item_id"
        if feature.kind is Kind.SEQUENCE:
            parts.append(_newest(events, "user_id", feature, member))
        elif feature.kind is Kind.TOP_K:
            parts.append(_top_k(events, "user_id", feature, member))
        elif feature.kind is Kind.LATEST:
            parts.append(_newest(events, "user_id", feature, member).selectExpr("user_id", f"{feature.name}[0] AS {feature.name}"))
    return _assemble(Entity.USER, events.select("user_id").distinct(), parts)


def user_category_view(events: DataFrame) -> DataFrame:
    """affinity: the share of the user's positive events (the feature's filter) in each category."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    affinity = FEATURES.get(Entity.USER_CATEGORY, "affinity")
    positives = events.where(_filtered(affinity) if affinity.events else F.expr(FEATURES.get(Entity.USER, "positive_count").events.sql_condition()))
    counts = positives.groupBy("user_id", "category").count()
    share = F.col("count") / F.sum("count").over(Window.partitionBy("user_id"))
    return _assemble(Entity.USER_CATEGORY, counts.select("user_id", "category"), [counts.select("user_id", "category", share.alias("affinity"))])


def global_view(events: DataFrame) -> DataFrame:
    """One row: each global top-k feature (e.g. `popular`), the `cap` items with most of its events."""
    from pyspark.sql import functions as F

    columns = []
    for feature in FEATURES.batch_features(Entity.GLOBAL):
        counts = events.where(_filtered(feature)).groupBy("item_id").count()
        top = counts.orderBy(F.desc("count"), "item_id").limit(feature.cap or 1)
        # Sort by (-count, item_id) so the list is strongest first with a deterministic tie order.
        listed = F.array_sort(F.collect_list(F.struct((-F.col("count")).alias("_order"), "item_id")))
        columns.append(top.agg(F.transform(listed, lambda s: s["item_id"]).alias(feature.name)))
    view = columns[0]
    for column in columns[1:]:
        view = view.crossJoin(column)
    return _assemble(Entity.GLOBAL, view, [])


BUILDERS: dict[Entity, Callable[[DataFrame, DataFrame, datetime], DataFrame]] = {
    Entity.ITEM: item_view,
    Entity.USER: lambda events, catalog, wm: user_view(events, wm),
    Entity.USER_CATEGORY: lambda events, catalog, wm: user_category_view(events),
    Entity.GLOBAL: lambda events, catalog, wm: global_view(events),
}


def transform(events: DataFrame, catalog: DataFrame, watermark: datetime) -> dict[Entity, DataFrame]:
    """One batch view per entity, from events strictly before `watermark`."""
    from pyspark.sql import functions as F

    covered = events.where(F.col("ts") < F.lit(watermark))
    return {entity: build(covered, catalog, watermark) for entity, build in BUILDERS.items()}


def load(views: dict[Entity, DataFrame], paths: BatchPaths, settings: Settings, watermark: datetime) -> dict[str, int]:
    """Write each view to Parquet, then publish it from the Parquet copy as a new online version."""
    from feature_store.online_store import RedisOnlineStore
    from feature_store.redis_server import redis_url

    rows: dict[str, int] = {}
    with redis_url(settings) as url:
        store = RedisOnlineStore.from_settings(settings, url)
        try:
            for entity, view in views.items():
                target = f"{paths.features}/{entity.value}"
                view.write.mode("overwrite").parquet(target)
                written = view.sparkSession.read.parquet(target)
                with store.publish_batch_view(entity, watermark) as writer:
                    written.foreachPartition(writer)
                rows[entity.value] = written.count()
        finally:
            store.close()
    return rows


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    from pyspark import StorageLevel

    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    events, catalog = extract(spark, paths)
    # Every view, the watermark and the row count read the events: scan and join them once.
    events = events.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        watermark = watermark_of(events)
        watch.step("computing batch views up to watermark %s", watermark.isoformat())
        rows = load(transform(events, catalog, watermark), paths, settings, watermark)
        rows_in = events.count()
    finally:
        events.unpersist()
    manifest = {"watermark": watermark.isoformat(), "rows": rows}
    write_text(spark, f"{paths.features}/_manifest.json", json.dumps(manifest, indent=2))
    return JobSummary(
        job=JOB, rows_in=rows_in, rows_out=sum(rows.values()), seconds=watch.elapsed(),
        outputs=[paths.features], details={"watermark": watermark.isoformat(), "rows": rows},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/batch_features.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
