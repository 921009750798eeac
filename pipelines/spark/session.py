"""Builds the SparkSession every batch job runs in, from settings."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from feature_store.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Configuration every job relies on: UTC everywhere and Parquet timestamps readable by Arrow.
BASE_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.sources.partitionOverwriteMode": "static",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
}


def launched_by_spark_submit() -> bool:
    """True when spark-submit started this Python process (it then owns the master setting)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session_conf(settings: Settings) -> dict[str, str]:
    """Every job's Spark configuration from settings: `BASE_CONF`, driver memory, shuffle
    partitions, then `settings.spark.extra_conf` (infra/spark/submit.sh passes it to spark-submit,
    since what the driver's JVM reads at start would come too late from the session builder)."""
    return {
        **BASE_CONF,
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        **settings.spark.extra_conf,
    }


def build_session(settings: Settings, app_name: str, extra_conf: dict[str, str] | None = None) -> SparkSession:
    """A SparkSession with master, driver memory and shuffle partitions from `settings.spark`.

    Under spark-submit the submitted `--master` wins; everywhere else `settings.spark.master`
    (default `local[*]`) is used. `extra_conf` (then `settings.spark.extra_conf`) overrides the rest.
    """
    from pyspark.sql import SparkSession

    conf = {**session_conf(settings), **(extra_conf or {})}
    builder = SparkSession.builder.appName(app_name)
    if not launched_by_spark_submit():
        builder = builder.master(settings.spark.master)
        # Python workers (foreachPartition, UDFs) must use this interpreter and its packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
