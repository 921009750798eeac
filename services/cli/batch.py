"""`recsys batch …`: the Spark batch layer (`pipelines/spark`), one command per job plus `all`.

Runs on `settings.spark.master` (default `local[*]`); the same jobs run on a cluster with
`spark-submit pipelines/spark/jobs/<job>.py`.
"""

from __future__ import annotations

import logging
from typing import Callable

import typer
from rich.table import Table

from pipelines.spark.runner import CHAIN, ON_DEMAND
from services.cli.common import StateDirOption, console, fail, load_settings

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
    from pipelines.spark.session import build_session

    # Plain lines on stderr: a rich log handler wraps messages (paths) at the terminal width.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pyspark.sql import SparkSession

    settings = load_settings(state_dir)  # type: ignore[arg-type]
    # A caller that already runs Spark (a notebook, the tests) keeps its session: stop only ours.
    owns_session = SparkSession.getActiveSession() is None
    spark = build_session(settings, f"recsys-batch-{'-'.join(names) if len(names) == 1 else 'all'}")
    table = Table(title="batch summary")
    for column in ("job", "rows in", "rows out", "rejects", "seconds", "details"):
        table.add_column(column)
    try:
        for summary in run_jobs(spark, settings, names):
            details = ", ".join(f"{key}={value}" for key, value in summary.details.items())
            table.add_row(summary.job, f"{summary.rows_in:,}", f"{summary.rows_out:,}", f"{summary.rejects:,}",
                          f"{summary.seconds:.1f}", details)  # fmt: skip
    except BatchJobError as exc:
        fail(str(exc))
    finally:
        console.print(table)
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
