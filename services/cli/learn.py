"""`recsys learn online`: the online learner as its own process beside the API (services/learner)."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import asdict
from typing import Annotated

import typer

from services.cli.common import StateDirOption, console, fail, load_settings

app = typer.Typer(help="Online learning: DRN-style minor updates of the ranker between retrains.", no_args_is_help=True)


@app.command("online")
def online(
    state_dir: StateDirOption = None,
    interval_s: Annotated[float, typer.Option(min=0.05, help="Seconds between reads of the event log.")] = 1.0,
    report_every_s: Annotated[float, typer.Option(min=1.0, help="Seconds between progress lines.")] = 60.0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps (default: until SIGTERM).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the explore draws.")] = 0,
) -> None:
    """Learn the current ranker's output layer from interleaved feedback (DBGD) and publish online
    revisions every API worker serves to `learner.share` of users, until Ctrl-C or SIGTERM."""
    from dataclasses import replace

    from feature_store.redis_client import ConnectionSpec
    from feature_store.redis_server import redis_url
    from services.learner.process import build, run

    settings = load_settings(state_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with redis_url(settings) as url:
        spec = ConnectionSpec.from_settings(settings, url)
        client = replace(spec, socket_timeout_s=spec.socket_timeout_s * 20).client()  # redis+cluster:// too
        try:
            process = build(settings, client, seed)
        except ValueError as exc:
            fail(str(exc))
        console.print(f"learner: {settings.learner.algorithm}, event log {settings.event_log_dir}; Ctrl-C to stop")
        try:
            summary = run(process, stop, interval_s, report_every_s, max_steps)
        except KeyboardInterrupt:
            summary = process.summary
        finally:
            client.close()
    console.print(f"learner stopped: base {process.base}, revision {process.revision.id if process.revision else None}, "
                  f"{asdict(summary)}")
