"""What every batch job shares: where its inputs and outputs live, the positive-interaction rule,
readers of the master table and catalog, and the job summary."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from feature_store.definitions import POSITIVE, UNKNOWN_CATEGORY, EventFilter
from feature_store.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

log = logging.getLogger("pipelines.spark")

CONTROL_CHARACTER = r"\p{Cc}"  # Java regex for what feature_store.schemas.CONTROL_CHARACTERS matches


class BatchJobError(ValueError):
    """A batch job cannot run: a missing input, bad configuration. The message says which.

    A ValueError: the same input fails the same way, so the training DAG does not retry it."""


@dataclass(frozen=True)
class BatchPaths:
    """Input and output locations (URIs or local paths) of the batch layer."""

    root: str
    event_log: str
    catalog: str

    @classmethod
    def from_settings(cls, settings: Settings) -> "BatchPaths":
        return cls(
            root=settings.batch_uri.rstrip("/"),
            event_log=(settings.batch.events_uri or str(settings.event_log_dir)).rstrip("/"),
            catalog=(settings.batch.catalog_uri or str(settings.catalog_dir)).rstrip("/"),
        )

    @property
    def items(self) -> str:
        return f"{self.catalog}/items.parquet"

    def output(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def events(self) -> str:
        return self.output("events")

    @property
    def rejects(self) -> str:
        return self.output("rejects")

    @property
    def sequences(self) -> str:
        return self.output("sequences")

    @property
    def item_graph(self) -> str:
        return self.output("item_graph")

    @property
    def samples(self) -> str:
        return self.output("samples")

    @property
    def features(self) -> str:
        return self.output("features")


def positive_condition(positive: EventFilter = POSITIVE) -> Column:
    """True for a positive interaction (`feature_store.definitions.POSITIVE` unless a test injects
    another rule), over the master table's `type` and `value` columns."""
    from pyspark.sql import functions as F

    return F.expr(positive.sql_condition())


def newest_ts() -> Column:
    """The newest `ts` as epoch microseconds, for `utc_of` on the driver: PySpark turns a collected
    timestamp into a naive datetime in the driver's local time zone."""
    from pyspark.sql import functions as F

    return F.unix_micros(F.max("ts"))


def utc_of(micros: int | None) -> datetime | None:
    """An aware UTC datetime from epoch microseconds (None stays None)."""
    return None if micros is None else datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)


def read_parquet(spark: SparkSession, path: str, produced_by: str) -> DataFrame:
    """Read a batch output, with an error that names the job to run first when it is missing."""
    from pyspark.errors import AnalysisException

    try:
        return spark.read.parquet(path)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise BatchJobError(f"{path} does not exist: run `recsys batch {produced_by}` first") from None
        raise


def read_item_categories(spark: SparkSession, paths: BatchPaths) -> DataFrame:
    """item_id → category (the item's first catalog category), from the catalog's items.parquet.

    Empty when there is no catalog yet; callers treat a missing category as `UNKNOWN_CATEGORY`.
    """
    from pyspark.errors import AnalysisException

    try:
        items = spark.read.parquet(paths.items)
    except AnalysisException:
        log.warning("no item catalog at %s: every item's category is %r", paths.items, UNKNOWN_CATEGORY)
        return spark.createDataFrame([], "item_id string, category string")
    return item_categories(items)


def item_categories(items: DataFrame, missing: str | None = UNKNOWN_CATEGORY) -> DataFrame:
    """item_id → category (the first of the item's `categories`, else `missing`)."""
    from pyspark.sql import functions as F

    return items.select(
        "item_id", F.coalesce(F.get(F.col("categories"), 0), F.lit(missing)).alias("category")
    ).dropDuplicates(["item_id"])


def with_category(df: DataFrame, categories: DataFrame, item_column: str = "item_id", name: str = "category",
                  missing: str | None = UNKNOWN_CATEGORY) -> DataFrame:
    """`df` plus the category of its item column (`missing` when the catalog lacks it or it has
    none: `UNKNOWN_CATEGORY`, a feature value for the rankers, or None where "no category" must
    stay apart from a real category of that name, as ml-100k's genre "unknown")."""
    from pyspark.sql import functions as F

    lookup = categories.select(F.col("item_id").alias("_cat_item"), F.col("category").alias("_cat"))
    joined = df.join(F.broadcast(lookup), F.col(item_column) == F.col("_cat_item"), "left")
    return joined.withColumn(name, F.coalesce("_cat", F.lit(missing))).drop("_cat_item", "_cat")


@dataclass
class JobSummary:
    """What one job run did: printed at its end and returned to callers."""

    job: str
    rows_in: int = 0
    rows_out: int = 0
    rejects: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job, "rows_in": self.rows_in, "rows_out": self.rows_out, "rejects": self.rejects,
            "seconds": round(self.seconds, 3), "outputs": self.outputs, **self.details,
        }  # fmt: skip


class Stopwatch:
    """Measures a job's wall time and logs its phases as progress."""

    def __init__(self, job: str) -> None:
        self.job = job
        self.started = time.perf_counter()

    def step(self, message: str, *args: object) -> None:
        log.info("%s [%6.1fs] " + message, self.job, self.elapsed(), *args)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
