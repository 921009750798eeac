"""`recsys run`: the all-in-one local command behind `make run`.

It brings up what exists of the stack on embedded defaults, one stage after another, and ends
with a summary: Redis (embedded unless a URL is configured), then the data import (MovieLens
from a path, or synthetic data).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import redis
import typer
from rich.table import Table

from feature_store.redis_server import redis_url
from services.cli.common import StateDirOption, console, fail, load_settings


def run(
    movielens: Annotated[
        Path | None, typer.Option(help="MovieLens directory (ml-100k, ml-1m or ml-latest-small); synthetic data if omitted.")
    ] = None,
    synth_events: Annotated[int, typer.Option(help="Events to generate when no MovieLens path is given.")] = 100_000,
    state_dir: StateDirOption = None,
) -> None:
    """Run the stack locally on embedded defaults and print a summary."""
    settings = load_settings(state_dir)
    if movielens is not None and not movielens.is_dir():
        fail(f"{movielens} is not a directory")
    started = time.perf_counter()
    summary = Table(title="recsys run", show_header=False)
    with redis_url(settings) as url:
        client = redis.Redis.from_url(url, socket_timeout=settings.redis.socket_timeout_s)
        client.ping()
        summary.add_row("redis", url + ("" if settings.redis.url else " (embedded)"))
        summary.add_row("state directory", str(settings.state_dir.resolve()))
        _import_data(settings.state_dir, movielens, synth_events)
    summary.add_row("wall time", f"{time.perf_counter() - started:.1f} s")
    console.print(summary)


def _import_data(state_dir: Path, movielens: Path | None, synth_events: int) -> None:
    from services.cli import data

    if movielens is not None:
        data.import_movielens(movielens, strict=False, state_dir=state_dir)
    else:
        data.synth(events=synth_events, state_dir=state_dir)
