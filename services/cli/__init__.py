"""`recsys`: the one command line that fronts every process.

Each command group lives in its own module and imports heavy libraries (Spark, Flink,
TensorFlow) inside its commands, so `recsys --help` and the API stay light.
"""

from __future__ import annotations

import typer

from services.cli import batch, data, evaluate, experiments, learn, models, run, scheduler, serve, simulate, stream, train
from services.cli.common import print_error

app = typer.Typer(
    name="recsys",
    help="A production recommender service: events → Spark/Flink → Redis features → "
    "TensorFlow recall and ranking → FastAPI.",
    no_args_is_help=True,
    # Plain click errors and Python tracebacks: rich's boxes wrap them at the terminal width.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
app.add_typer(batch.app, name="batch")
app.add_typer(data.app, name="data")
app.command("evaluate")(evaluate.evaluate)
app.add_typer(experiments.app, name="experiments")
app.add_typer(learn.app, name="learn")
app.add_typer(models.app, name="models")
app.add_typer(stream.app, name="stream")
app.command("run")(run.run)
app.command("scheduler")(scheduler.scheduler)
app.command("serve")(serve.serve)
app.command("simulate")(simulate.simulate)
app.add_typer(train.app, name="train")

#: Modules that come from the `cpu` or `gpu` extra (pyproject.toml), not from the base install.
EXTRA_MODULES = ("tensorflow", "faiss")


def main() -> None:
    """The `recsys` entry point: the app, with a missing cpu/gpu extra named instead of a traceback."""
    try:
        app()
    except ModuleNotFoundError as exc:
        module = (exc.name or "").split(".")[0]
        if module not in EXTRA_MODULES:
            raise
        print_error(f"{module} is not installed: it comes from the cpu or gpu extra; install one with "
                    "`pip install -c constraints.txt -e '.[cpu]'` (or '.[gpu]' for NVIDIA GPUs), or `make test VARIANT=cpu|gpu`")  # fmt: skip
        raise SystemExit(2) from None
