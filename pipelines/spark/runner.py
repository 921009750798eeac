"""Runs batch jobs by name, alone or as the whole chain, and reports their summaries.

Used by `recsys batch <job>` (one local session for the whole chain) and by each job's `main()`
under spark-submit.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from typing import TYPE_CHECKING, Callable, Iterator

from feature_store.settings import Settings
from pipelines.spark.common import JobSummary, log
from pipelines.spark.session import build_session

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Every job, in the order `all` runs them (each reads what the ones before it wrote).
CHAIN: tuple[str, ...] = ("compact", "attribution", "sequences", "item_graph", "batch_features", "ranking_samples")
#: Jobs run only by name, not by `all` (random_walks: only `recsys train embeddings --walks` needs it).
ON_DEMAND: tuple[str, ...] = ("random_walks",)

JobRun = Callable[["SparkSession", Settings], JobSummary]


def job_runner(name: str) -> JobRun:
    """The `run(spark, settings)` function of the job called `name`."""
    if name not in CHAIN + ON_DEMAND:
        raise ValueError(f"unknown batch job {name!r}; jobs: {', '.join(CHAIN + ON_DEMAND)}")
    module = importlib.import_module(f"pipelines.spark.jobs.{name}")
    return module.run  # type: ignore[no-any-return]


def run_jobs(spark: SparkSession, settings: Settings, names: list[str]) -> Iterator[JobSummary]:
    """Run `names` in order in one session, yielding each summary as its job ends."""
    runners = [(name, job_runner(name)) for name in names]  # fail on a bad name before running any
    for position, (name, run) in enumerate(runners, start=1):
        log.info("job %d/%d: %s", position, len(runners), name)
        summary = run(spark, settings)
        log.info("%s done: %s", name, json.dumps(summary.as_dict(), default=str))
        yield summary


def submit_main(name: str, argv: list[str]) -> None:
    """Entry point of `spark-submit pipelines/spark/jobs/<name>.py`: settings from the environment
    (`RECSYS_*`, `RECSYS_CONFIG`), master from spark-submit; prints the summary as JSON."""
    if argv:
        raise SystemExit(f"{name} takes no arguments; configure it with RECSYS_* variables or RECSYS_CONFIG")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = Settings()
    spark = build_session(settings, f"recsys-batch-{name}")
    try:
        for summary in run_jobs(spark, settings, [name]):
            print(json.dumps(summary.as_dict(), default=str), file=sys.stdout)
    finally:
        spark.stop()
