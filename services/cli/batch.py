"""`recsys batch …`: the Spark batch layer (`pipelines/spark`), one command per job plus `all`.

Runs on `settings.spark.master` (default `local[*]`); the same jobs run on a cluster with
`spark-submit pipelines/spark/jobs/<job>.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Callable

import typer
from rich.table import Table

from pipelines.spark.runner import CHAIN, ON_DEMAND
from services.cli.common import StateDirOption, console, fail, load_settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from feature_store.settings import Settings

app = typer.Typer(help="Spark batch jobs: compact, attribution, sequences, item_graph, batch_features, ranking_samples, random_walks.",
                  no_args_is_help=True)  # fmt: skip

HELP = {
    "compact": "Event log → Parquet master table by date; duplicates dropped, malformed rows to rejects/.",
    "attribution": "Outcomes attributed to impressions: attributed_impressions/ and the attribution counts.",
    "sequences": "Per-user, time-ordered sessions of positive interactions.",
    "item_graph": "Directed item graph weighted by in-session transitions.",
    "batch_features": "Item, user and user×category batch views, published to the feature store.",
    "ranking_samples": "Labelled ranker training rows with point-in-time features, split by time.",
    "random_walks": "DeepWalk/Node2vec walks over the item graph (walks/<model>), for `recsys train embeddings --walks`.",
}


def _run(names: list[str], state_dir: object) -> None:
    """Run `names` in one Spark session and print one summary table."""
    from pipelines.spark.common import BatchJobError
    from pipelines.spark.runner import run_jobs

    settings = load_settings(state_dir)  # type: ignore[arg-type]
    table = Table(title="batch summary")
    for column in ("job", "rows in", "rows out", "rejects", "seconds", "details"):
        table.add_column(column)
    with _session(settings, f"recsys-batch-{'-'.join(names) if len(names) == 1 else 'all'}") as spark:
        try:
            for summary in run_jobs(spark, settings, names):
                details = ", ".join(f"{key}={value}" for key, value in summary.details.items())
                table.add_row(summary.job, f"{summary.rows_in:,}", f"{summary.rows_out:,}", f"{summary.rejects:,}",
                              f"{summary.seconds:.1f}", details)  # fmt: skip
        except BatchJobError as exc:
            fail(str(exc))
        finally:
            console.print(table)


@contextmanager
def _session(settings: Settings, name: str) -> Iterator[SparkSession]:
    """A Spark session for one command; a caller that already runs Spark (a notebook, the tests)
    keeps its session: only ours is stopped."""
    from pyspark.sql import SparkSession

    from pipelines.spark.session import build_session

    # Plain lines on stderr: a rich log handler wraps messages (paths) at the terminal width.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    owns_session = SparkSession.getActiveSession() is None
    spark = build_session(settings, name)
    try:
        yield spark
    finally:
        if owns_session:
            spark.stop()


def _command(name: str) -> Callable[..., None]:
    def command(state_dir: StateDirOption = None) -> None:
        _run([name], state_dir)

    command.__doc__ = HELP[name]
    return command


for _name in CHAIN + ON_DEMAND:
    app.command(_name)(_command(_name))
    if "_" in _name:
        app.command(_name.replace("_", "-"), hidden=True)(_command(_name))


@app.command("all")
def run_all(state_dir: StateDirOption = None) -> None:
    """Run the whole chain in order: compact, attribution, sequences, item_graph, batch_features, ranking_samples."""
    _run(list(CHAIN), state_dir)


TimeOption = Annotated[
    datetime | None, typer.Option(formats=["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"], help="UTC.")
]


@app.command("check-attribution")
def check_attribution(
    state_dir: StateDirOption = None,
    since: TimeOption = None,
    until: TimeOption = None,
    margin_s: Annotated[
        float | None, typer.Option(help="Distance from the newest impression or outcome (default: flink.out_of_orderness_ms).")
    ] = None,
    open_buckets: Annotated[bool, typer.Option(
        "--open-buckets", help="Also compare the buckets not closed yet: only when no event is arriving and the "
        "stream job has caught up on the log (outcomes without a request id may still be pending there)."
    )] = False,
) -> None:
    """Compare Spark's attribution counts (run `attribution` first) with the speed layer's in Redis
    on closed hour buckets in [since, until); print every difference; exit 1 when any."""
    from feature_store.redis_server import redis_url
    from pipelines.spark.attribution_check import RedisCounts, differences
    from pipelines.spark.attribution_check import check_attribution as check
    from pipelines.spark.common import BatchJobError

    def ms(moment: datetime | None) -> int | None:
        return None if moment is None else int(moment.replace(tzinfo=timezone.utc).timestamp() * 1000)

    settings = load_settings(state_dir)
    margin_ms = None if margin_s is None else int(margin_s * 1000)
    with _session(settings, "recsys-batch-check-attribution") as spark, redis_url(settings) as url:
        try:
            report = check(spark, settings, RedisCounts(settings, url), ms(since), ms(until), margin_ms,
                           include_open=open_buckets)  # fmt: skip
        except BatchJobError as exc:
            fail(str(exc))
        for difference in differences(spark, report):
            typer.echo(f"difference: {difference}")
    hours = [datetime.fromtimestamp(at / 1000, timezone.utc).isoformat() for at in (report.since_ms, report.until_ms)]
    typer.echo(f"compared {report.compared:,} counts in the {'' if open_buckets else 'closed '}buckets [{hours[0]}, {hours[1]}): "
               f"{report.differences:,} differences (written to {report.output})")  # fmt: skip
    if not report.ok:
        raise typer.Exit(code=1)
