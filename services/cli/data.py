"""`recsys data …`: dataset import and synthetic data generation."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from services.cli.common import StateDirOption, console, fail, load_settings, styled

app = typer.Typer(help="Import datasets into the event log and catalogs, or generate synthetic data.", no_args_is_help=True)


@contextmanager
def _progress_hook() -> Iterator[object]:
    """A rich progress bar driven by the library's `(phase, done, total)` callbacks."""
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    ) as progress:  # fmt: skip

        def on_progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            progress.update(tasks[phase], completed=done, total=total)

        yield on_progress


def _summary(title: str, rows: dict[str, str]) -> None:
    table = Table(title=title, show_header=False)
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)


@app.command("import-movielens")
def import_movielens(
    path: Annotated[Path, typer.Argument(help="A MovieLens directory: ml-100k, ml-1m or ml-latest-small.")],
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on the first malformed line, before writing anything.")
    ] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Import MovieLens ratings as events, movies and users into the catalogs (idempotent)."""
    from pipelines.datasets import movielens

    settings = load_settings(state_dir)
    try:
        with _progress_hook() as on_progress:
            report = movielens.import_movielens(path, settings, strict=strict, on_progress=on_progress)  # type: ignore[arg-type]
    except (movielens.UnknownLayout, movielens.MalformedLine) as exc:
        fail(str(exc))
        return
    _import_summary("MovieLens import", report)


@app.command("import")
def import_file(
    path: Annotated[Path, typer.Argument(help="An interactions file (CSV, TSV, JSON lines, or user item item ... lines).")],
    fmt: Annotated[str, typer.Option("--format", help="csv, tsv, jsonl or sequences.")] = "csv",
    user: Annotated[str, typer.Option("--user", help="Column (or JSON key) of the user id.")] = "user_id",
    item: Annotated[str, typer.Option("--item", help="Column (or JSON key) of the item id.")] = "item_id",
    time_column: Annotated[str, typer.Option("--time", help="Column of the event time (unix seconds or ISO 8601; '' for file order).")] = "timestamp",
    rating: Annotated[str, typer.Option("--rating", help="Column of a rating value ('' for none: every row is an --event-type event).")] = "",
    event_type: Annotated[str, typer.Option("--event-type", help="Event type of rows without a rating.")] = "click",
    categories: Annotated[Path | None, typer.Option("--categories", help="JSON object item -> list of categories, for the catalog.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Name used in event ids (default: the file's name without its extension).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first malformed line, before writing anything.")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """Import interactions from any export, columns mapped by name; bad lines are reported as file:line."""
    from feature_store.schemas import EventType
    from pipelines.datasets.interactions import Columns, import_interactions
    from pipelines.datasets.movielens_formats import MalformedLine

    settings = load_settings(state_dir)
    if event_type not in set(EventType):
        fail(f"--event-type {event_type!r} is not an event type: one of {', '.join(EventType)}")
    try:
        columns = Columns(user=user, item=item, time=time_column or None, rating=rating or None)
        with _progress_hook() as on_progress:
            report = import_interactions(path, settings, fmt, columns, dataset=dataset, event_type=EventType(event_type),
                                         categories=categories, strict=strict, on_progress=on_progress)  # type: ignore[arg-type]  # fmt: skip
    except (MalformedLine, ValueError, OSError) as exc:
        fail(str(exc))
        return
    _import_summary("Interactions import", report)


@app.command("synth")
def synth(
    users: Annotated[int, typer.Option("--users", min=1, help="Number of users.")] = 1_000,
    items: Annotated[int, typer.Option("--items", min=10, help="Number of items.")] = 2_000,
    events: Annotated[int, typer.Option("--events", min=1, help="Number of events to generate.")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: same seed, same data.")] = 0,
    categories: Annotated[int | None, typer.Option(
        "--categories", min=1, help="Number of item categories [default: 20, or --items when fewer].")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Generate synthetic events with planted structure, catalogs and a ground-truth file."""
    from pipelines.datasets import synthetic

    settings = load_settings(state_dir)
    categories = min(20, items) if categories is None else categories
    params = {"users": users, "items": items, "events": events, "seed": seed, "categories": categories}
    try:
        synthetic.SynthParams(**params)
    except ValueError as exc:
        fail(str(exc))
        return
    with _progress_hook() as on_progress:
        report = synthetic.generate(settings, on_progress=on_progress, **params)  # type: ignore[arg-type]
    rows = {
        "status": "already generated: skipped, nothing written" if report.skipped else "generated",
        "events written": "0" if report.skipped else f"{report.events:,}",
        "by type": ", ".join(f"{name} {count:,}" for name, count in sorted(report.by_type.items())),
        "users": f"{report.users:,}",
        "items": f"{report.items:,}",
        "sessions": f"{report.sessions:,}",
        "ground truth": str(report.truth_path),
        "time": f"{report.seconds:.1f} s",
    }
    _summary("Synthetic data", rows)


def _import_summary(title: str, report: Any) -> None:
    """The first rejected lines, then the summary table of an import (MovieLens or interactions)."""
    for line in report.first_rejects:
        console.print(styled(("rejected", "yellow"), f" {line}"))
    _summary(title, {
        "dataset": f"{report.dataset} ({report.source})",
        "status": "already imported: skipped, nothing written" if report.skipped else "imported",
        "events written": "0" if report.skipped else f"{report.events:,}",
        "users": f"{report.users:,}",
        "items": f"{report.items:,}",
        "rejected lines": f"{report.rejects:,}" + (f" (see {report.rejects_file})" if report.rejects_file else ""),
        "time": f"{report.seconds:.1f} s",
    })  # fmt: skip
