"""`recsys learn online`: the online learner as its own process beside the API (services/learner)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from services.cli.common import StateDirOption, console, fail, load_settings, long_running, serve_metrics

app = typer.Typer(help="Online learning: DRN-style minor updates of the ranker between retrains.", no_args_is_help=True)


@app.command("online")
def online(
    state_dir: StateDirOption = None,
    interval_s: Annotated[float, typer.Option(min=0.05, help="Seconds between reads of the event log.")] = 1.0,
    report_every_s: Annotated[float, typer.Option(min=1.0, help="Seconds between progress lines.")] = 60.0,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Stop after this many steps (default: until SIGTERM).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the explore draws.")] = 0,
) -> None:
    """Learn the current ranker's output layer from interleaved feedback (DBGD) or from clicks on
    Plackett–Luce lists (PDGD, `learner.algorithm=pdgd`) and publish online
    revisions every API worker serves to `learner.share` of users, until Ctrl-C or SIGTERM."""
    from services.learner.metrics import learner_registry
    from services.learner.process import build, run

    settings = load_settings(state_dir)
    with long_running(settings) as (client, stop, url):
        try:
            process = build(settings, client, seed, url)
        except ValueError as exc:
            fail(str(exc))
        serve_metrics(settings.learner.metrics_port, learner_registry(process), "learner.metrics_port")
        console.print(f"learner: {settings.learner.algorithm}, event log {settings.event_log_dir}; Ctrl-C to stop")
        try:
            summary = run(process, stop, interval_s, report_every_s, max_steps)
        except KeyboardInterrupt:
            summary = process.summary
    console.print(f"learner stopped: base {process.base}, revision {process.revision.id if process.revision else None}, "
                  f"{asdict(summary)}")
