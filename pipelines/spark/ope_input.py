"""The input of off-policy evaluation: each request that logged its candidates, with its shown slots.

A request sampled by `explore.log_candidates_share` carries, on its first impression, the ranked
candidates the explore stage chose from (`candidates`, `candidate_scores`, `candidate_count`; kept
by `compact` in the master table). Those rows are joined by user and request id (two users may send
one request id) with the request's rows of `attributed_impressions/` (the `attribution` job),
grouped into one row per request:

    request_id, user_id, candidates, candidate_scores, candidate_count,
    slots: [(position, item_id, policy, propensity, click)] sorted by position

Requests whose first impression falls in [since, until) are kept (naive times are UTC). The rows are streamed to the
driver one partition at a time (`toLocalIterator`), never collected whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from feature_store.schemas import as_utc
from feature_store.settings import Settings
from pipelines.spark.common import BatchJobError, BatchPaths, read_parquet
from pipelines.spark.jobs.attribution import IMPRESSION, IMPRESSIONS, extract

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

CANDIDATE_COLUMNS = ("candidates", "candidate_scores", "candidate_count")


def logged_requests(spark: SparkSession, settings: Settings, since: datetime | None = None,
                    until: datetime | None = None) -> DataFrame:
    """One row per request with logged candidates and attributed slots (see the module docstring)."""
    from pyspark.sql import functions as F

    paths = BatchPaths.from_settings(settings)
    events = extract(spark, paths)
    missing = [name for name in CANDIDATE_COLUMNS if name not in events.columns]
    if missing:
        raise BatchJobError(f"{paths.events} has no {', '.join(missing)} column: run `recsys batch compact` again")
    lists = events.where((F.col("type") == IMPRESSION) & F.col("candidates").isNotNull()).select(
        "user_id", "request_id", *CANDIDATE_COLUMNS, F.col("ts").alias("_served"))
    if since is not None:
        lists = lists.where(F.col("_served") >= F.lit(as_utc(since)))
    if until is not None:
        lists = lists.where(F.col("_served") < F.lit(as_utc(until)))
    impressions = read_parquet(spark, paths.output(IMPRESSIONS), produced_by="attribution")
    slots = impressions.where(F.col("request_id").isNotNull()).groupBy("user_id", "request_id").agg(
        F.sort_array(F.collect_list(F.struct(
            F.col("position"), F.col("item_id"), F.col("policy"), F.col("propensity"), F.col("click"),
        ))).alias("slots"),
    )  # fmt: skip
    return lists.dropDuplicates(["user_id", "request_id"]).join(slots, ["user_id", "request_id"]).select(
        "request_id", "user_id", *CANDIDATE_COLUMNS, "slots")


def iterate(requests: DataFrame) -> Iterator[dict[str, Any]]:
    """The rows of `logged_requests` as dicts (slots as dicts), one partition at a time."""
    for row in requests.toLocalIterator():
        record = row.asDict()
        record["slots"] = [slot.asDict() for slot in record["slots"]]
        yield record
