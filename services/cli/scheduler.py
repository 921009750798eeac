"""`recsys scheduler`: the training DAG on the cron schedule of `training.schedule`, under a Redis
lock (services/scheduler); Prometheus metrics on `scheduler.metrics_port`. Registered as a single
command in `services/cli/__init__.py`."""

from __future__ import annotations

import logging
import signal
import threading

from typing import Annotated

import typer

from services.cli.common import StateDirOption, console, load_settings


def scheduler(
    state_dir: StateDirOption = None,
    run_now: Annotated[bool, typer.Option("--run-now", help="Also start a run at once (then follow the schedule).")] = False,
) -> None:
    """Run the training DAG on its cron schedule (UTC) until Ctrl-C or SIGTERM. Every scheduler
    sharing a Redis (set REDIS_URL) takes the same lock, so one run goes at a time."""
    from dataclasses import replace

    from prometheus_client import start_http_server

    from feature_store.redis_client import ConnectionSpec
    from feature_store.redis_server import redis_url
    from services.scheduler.service import TrainingScheduler

    settings = load_settings(state_dir)
    # Plain lines on stderr: a rich log handler wraps messages (paths) at the terminal width.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with redis_url(settings) as url:
        spec = ConnectionSpec.from_settings(settings, url)
        client = replace(spec, socket_timeout_s=spec.socket_timeout_s * 20).client()  # redis+cluster:// too
        service = TrainingScheduler(settings, client)
        if settings.scheduler.metrics_port:
            start_http_server(settings.scheduler.metrics_port, registry=service.metrics.registry)
            console.print(f"metrics: http://0.0.0.0:{settings.scheduler.metrics_port}/metrics")
        service.start()
        if run_now:
            service.run_now()
        console.print(f"scheduler: '{settings.training.schedule}' (UTC), next run {service.next_run()}; Ctrl-C to stop")
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            service.shutdown()
            client.close()
    console.print("scheduler stopped")
