"""`recsys serve`: the recommendation API under uvicorn.

Redis: the configured URL, or an embedded server started here once and shared by every worker.
Each worker process builds its own app (`create_app_from_env`), so models load once per worker;
with several workers, each listens on its own SO_REUSEPORT socket (`services.api.server`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from feature_store.redis_server import redis_url
from services.cli.common import StateDirOption, console, ensure_port_free, load_settings, styled


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default: settings.api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings.api.port).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes (default: settings.api.workers).")] = None,
    state_dir: StateDirOption = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the recommendation API (recall → filter → rank → explain) with uvicorn."""
    from services.api.server import ServerOptions, serve_app

    settings = load_settings(state_dir)
    host = host or settings.api.host
    port = port or settings.api.port
    workers = workers or settings.api.workers
    ensure_port_free(host, port)  # before Redis starts and the workers load their models
    with redis_url(settings) as url:
        # Workers are fresh processes: hand them the resolved settings through the environment.
        os.environ["RECSYS_REDIS__URL"] = url
        os.environ["RECSYS_STATE_DIR"] = str(Path(settings.state_dir).resolve())
        console.print(styled(
            ("recsys serve", "bold"), f" http://{host}:{port}  workers={workers}  redis={url}"
            f"{'' if settings.redis.url else ' (embedded)'}  registry={settings.model_registry_dir}  "
            f"docs: http://{host}:{port}/docs"
        ))
        options = ServerOptions(
            "services.api.app:create_app_from_env", host, port, factory=True, log_level=log_level,
            keep_alive_timeout_s=settings.api.keep_alive_timeout_s,
            request_read_timeout_s=settings.api.request_read_timeout_s,
        )  # fmt: skip
        exit_code = serve_app(options, workers)
    console.print(styled(("recsys serve", "bold"), " stopped"))
    if exit_code:
        raise typer.Exit(exit_code)
