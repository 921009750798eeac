"""batch_features: the item, user, user×category and global batch views, published with their watermark.

The feature list, event filters, windows, caps and CTR prior all come from
`feature_store.definitions.FEATURES` (the same definitions the speed layer and the online read
use). The views cover events with ts < watermark exactly, and the speed layer owns everything
after it. The watermark comes from the latest event time that is not in the future (a future-dated
event in a log written before the API bounded event time would otherwise move it past every live
event to come), on the `WATERMARK_ALIGNMENT` (an hour) grid: floored to its hour, unless that hour
is wholly older than the speed layer's replay window (`feature_store.dedup_ttl_s`), then the hour
after it, so the views cover every event. The live writer drops events that old, and an imported
log (which only appends to the event log) would otherwise never serve its last hour.

Rows the online store cannot hold (an id or category with a control character, which its value
encoding uses as separators: rows written before the API rejected them) are quarantined, not
fatal: they are left out of the views and written to `quarantine/batch_features/` with where they
are (source_file, 1-based row in that Parquet file), their key and the reason.

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
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Callable, NamedTuple

from feature_store.definitions import (
    FEATURES, POSITIVE, UNKNOWN_CATEGORY, WATERMARK_ALIGNMENT, DType, Entity, FeatureDef, Kind, Member,
)  # fmt: skip
from feature_store.linucb_store import CONTEXT_FEATURE
from feature_store.settings import Settings
from pipelines.spark.common import (
    CONTROL_CHARACTER, BatchJobError, BatchPaths, JobSummary, Stopwatch, item_categories, newest_ts,
    read_parquet, utc_of, with_category,
)  # fmt: skip
from pipelines.spark.hadoop_files import write_text

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

JOB = "batch_features"
SPARK_TYPES = {DType.FLOAT: "double", DType.INT: "bigint", DType.STRING: "string",
               DType.VECTOR: "array<float>", DType.SEQUENCE: "array<string>"}  # fmt: skip


class Inputs(NamedTuple):
    events: DataFrame  # the master table's events, with their item's category (None: it has none)
    catalog: DataFrame  # item_id, categories
    quarantined: DataFrame  # source_file, row, key, reason


def watermark_of(events: DataFrame, now: datetime, replay_window: timedelta) -> datetime:
    """The hour of the latest event time not after `now` (floored to the watermark alignment), or
    the next hour, covering every event, when the speed layer can take no event of that hour any
    more: its end is at least `replay_window` (the live writer's oldest accepted age) before `now`.
    """
    from pyspark.sql import functions as F

    latest = utc_of(events.where(F.col("ts") <= F.lit(now)).select(newest_ts()).first()[0])
    if latest is None:
        raise BatchJobError("the master table holds no event up to now: nothing to compute features from")
    step = int(WATERMARK_ALIGNMENT.total_seconds())
    hour = datetime.fromtimestamp(int(latest.timestamp()) // step * step, tz=timezone.utc)
    past_latest = hour + WATERMARK_ALIGNMENT
    return past_latest if past_latest <= now - replay_window else hour


def extract(spark: SparkSession, paths: BatchPaths) -> tuple[DataFrame, DataFrame]:
    """(master-table events, catalog items), each row with its `source_file` and `row`."""
    from pyspark.errors import AnalysisException
    from pyspark.sql import functions as F

    events = read_parquet(spark, paths.events, produced_by="compact")
    events = events.select("event_id", "user_id", "item_id", "type", "value", "ts", *_location())
    try:
        catalog = spark.read.parquet(paths.items)
    except AnalysisException:
        return events, spark.createDataFrame([], "item_id string, categories array<string>, source_file string, row long")
    categories = F.coalesce("categories", F.array().cast("array<string>")).alias("categories")
    return events, catalog.select("item_id", categories, *_location())


def _location() -> list[Column]:
    from pyspark.sql import functions as F

    return [F.col("_metadata.file_path").alias("source_file"), (F.col("_metadata.row_index") + 1).alias("row")]


def _control_character_in(checks: dict[str, Column]) -> Column:
    """`<name> contains a control character` for the first check that holds, else null."""
    from pyspark.sql import functions as F

    return F.coalesce(*[F.when(found, F.lit(f"{name} contains a control character")) for name, found in checks.items()])


def quarantine(events: DataFrame, catalog: DataFrame) -> Inputs:
    """Set aside events and catalog rows whose ids or categories hold a control character."""
    from pyspark.sql import functions as F

    def has_control(name: str) -> Column:
        return F.col(name).rlike(CONTROL_CHARACTER)

    in_categories = F.exists("categories", lambda category: category.rlike(CONTROL_CHARACTER))
    events = events.withColumn("reason", _control_character_in({n: has_control(n) for n in ("user_id", "item_id")}))
    catalog = catalog.withColumn("reason", _control_character_in({"item_id": has_control("item_id"), "categories": in_categories}))
    quarantined = events.where(F.col("reason").isNotNull()).select("source_file", "row", F.col("event_id").alias("key"), "reason")
    quarantined = quarantined.unionByName(
        catalog.where(F.col("reason").isNotNull()).select("source_file", "row", F.col("item_id").alias("key"), "reason")
    )
    clean = [frame.where(F.col("reason").isNull()).drop("reason", "source_file", "row") for frame in (events, catalog)]
    return Inputs(with_category(clean[0], item_categories(clean[1], missing=None), missing=None), clean[1], quarantined)


def _filtered(feature: FeatureDef) -> Column:
    """The feature's events; for a category feature, only those whose item has a category (the
    live writes skip the others)."""
    from pyspark.sql import functions as F

    condition = F.expr(feature.events.sql_condition()) if feature.events else F.lit(True)
    return condition & F.col("category").isNotNull() if feature.member is Member.CATEGORY else condition


def _newest(events: DataFrame, key: str, feature: FeatureDef, member: str) -> DataFrame:
    """Per key: the newest `cap` distinct members of the feature's events, newest first (each
    member at its newest event, as the live zset keeps it)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    members = events.where(_filtered(feature)).groupBy(key, member).agg(F.max(F.struct("ts", "event_id")).alias("_newest"))
    newest_first = Window.partitionBy(key).orderBy(F.desc("_newest"))
    recent = members.withColumn("_rank", F.row_number().over(newest_first)).where(F.col("_rank") <= (feature.cap or 1))
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
    metadata = catalog.select(
        "item_id", "categories", F.get("categories", 0).alias("primary_category"),
        category_signature("categories", FEATURES.get(Entity.ITEM, CONTEXT_FEATURE).dim or 0).alias(CONTEXT_FEATURE),
    )
    return _assemble(Entity.ITEM, keys, [_counts(events, "item_id", features, watermark), metadata])


def category_signature(categories: str, dim: int) -> Column:
    """LinUCB's item context: the item's categories hashed into `dim` buckets (CRC-32 of the UTF-8
    name modulo `dim`; none: `UNKNOWN_CATEGORY`), counted and scaled to unit length. It depends on
    the catalog alone, so it is there from the first batch run and keeps its meaning across
    retrains (LinUCB's statistics live in this space)."""
    from pyspark.sql import functions as F

    named = f"if(coalesce(size({categories}), 0) = 0, array('{UNKNOWN_CATEGORY}'), {categories})"
    counts = f"transform(sequence(0, {dim - 1}), j -> cast(size(filter({named}, c -> pmod(crc32(encode(c, 'UTF-8')), {dim}) = j)) as double))"
    norm = f"sqrt(aggregate({counts}, 0D, (total, x) -> total + x * x))"
    return F.expr(f"transform({counts}, x -> cast(x / {norm} as float))")


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
    """affinity: the share of all the user's positive events (the feature's filter, else
    `POSITIVE`) in each category, those on an item without a category in `UNKNOWN_CATEGORY`, as
    the training rows (`ranking_samples`) compute it."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    affinity = FEATURES.get(Entity.USER_CATEGORY, "affinity")
    positive = affinity.events or POSITIVE
    category = F.coalesce("category", F.lit(UNKNOWN_CATEGORY)).alias("category")
    positives = events.where(F.expr(positive.sql_condition())).select("user_id", category)
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


def write_quarantine(quarantined: DataFrame, paths: BatchPaths, watch: Stopwatch) -> int:
    """Overwrite `quarantine/batch_features/`; returns the rows set aside (logging a few)."""
    target = f"{paths.output('quarantine')}/{JOB}"
    quarantined.write.mode("overwrite").parquet(target)
    written = quarantined.sparkSession.read.parquet(target)
    for row in written.limit(5).collect():
        watch.step("quarantined %s row %s (%r): %s", row.source_file, row.row, row.key, row.reason)
    return written.count()


def run(spark: SparkSession, settings: Settings) -> JobSummary:
    from pyspark import StorageLevel

    watch = Stopwatch(JOB)
    paths = BatchPaths.from_settings(settings)
    inputs = quarantine(*extract(spark, paths))
    quarantined = write_quarantine(inputs.quarantined, paths, watch)
    # Every view, the watermark and the row count read the events: scan and join them once.
    events = inputs.events.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        replay_window = timedelta(seconds=settings.feature_store.dedup_ttl_s)
        watermark = watermark_of(events, datetime.now(timezone.utc), replay_window)
        watch.step("computing batch views up to watermark %s", watermark.isoformat())
        rows = load(transform(events, inputs.catalog, watermark), paths, settings, watermark)
        rows_in = events.count()
    finally:
        events.unpersist()
    manifest = {"watermark": watermark.isoformat(), "rows": rows}
    write_text(spark, f"{paths.features}/_manifest.json", json.dumps(manifest, indent=2))
    return JobSummary(
        job=JOB, rows_in=rows_in, rows_out=sum(rows.values()), rejects=quarantined, seconds=watch.elapsed(),
        outputs=[paths.features, f"{paths.output('quarantine')}/{JOB}"],
        details={"watermark": watermark.isoformat(), "rows": rows, "quarantined": quarantined},
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """spark-submit entry point: `spark-submit pipelines/spark/jobs/batch_features.py`."""
    from pipelines.spark.runner import submit_main

    submit_main(JOB, argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    main()
