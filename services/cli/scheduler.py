"""`recsys scheduler`: the training DAG on the cron schedule of `training.schedule`, under a Redis
lock (services/scheduler); Prometheus metrics on `scheduler.metrics_port`. Registered as a single
command in `services/cli/__init__.py`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer

from services.cli.common import StateDirOption, console, fail, load_settings, long_running, serve_metrics


def scheduler(
    state_dir: StateDirOption = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also start a run at once (then follow the schedule).")] = False,
) -> None:
    """Run the training DAG on its cron schedule (UTC) until Ctrl-C or SIGTERM. Every scheduler
    sharing a Redis (set REDIS_URL) takes the same lock, so one run goes at a time."""
    from services.scheduler.service import TrainingScheduler

    settings = load_settings(state_dir)
    with long_running(settings) as (client, stop, url):
        try:
            service = TrainingScheduler(settings, client, redis_url=url)
        except ValueError as exc:
            fail(str(exc))
        serve_metrics(settings.scheduler.metrics_port, service.metrics.registry, "scheduler.metrics_port")
        service.start()
        if run_now:
            service.run_now()
        # The schedule's next tick: `next_run()` is the run just asked for (or owed) until it fires.
        tick = service.trigger.get_next_fire_time(None, datetime.now(timezone.utc))
        console.print(f"scheduler: '{settings.training.schedule}' (UTC), next run {tick}; Ctrl-C to stop")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            service.shutdown()
    console.print("scheduler stopped")
