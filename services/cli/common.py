"""Helpers shared by CLI commands: settings loading and error reporting."""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from feature_store.schemas import error_message
from feature_store.settings import Settings

if TYPE_CHECKING:
    import redis

# Scripts grep what commands print: long lines (paths) stay whole instead of wrapping at the width.
# No markup: commands print stored and given text (errors, triggers, paths, titles), whose "[...]"
# Rich read as tags (an error's "[/data/x]" raised MarkupError: the DAG's retry line failed the
# step it retried). Styles are passed as `Text`.
console = Console(stderr=True, soft_wrap=True, markup=False)
# C0 and C1 control characters but tab and newline: an ESC in an error or a title drives the terminal.
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(c) not in "\t\n"}

StateDirOption = Annotated[
    Path | None, typer.Option("--state-dir", help="State directory (default: $RECSYS_STATE_DIR or .recsys).")
]


def load_settings(state_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings object, turning a validation error into a one-line CLI error."""
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    _warn_unknown_variables()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        fail(f"invalid settings: {error_message(exc)}")
    except SettingsError as exc:  # a value the environment source cannot parse (a list that is not JSON)
        fail(f"invalid settings: {exc}" + (f": {exc.__cause__}" if exc.__cause__ else ""))
    except FileNotFoundError as exc:
        fail(f"invalid settings: {exc}")
    except (yaml.YAMLError, ValueError) as exc:  # RECSYS_CONFIG that is not YAML, or not a mapping
        fail(f"invalid settings in {os.environ.get('RECSYS_CONFIG')}: {' '.join(str(exc).split())}")
    raise AssertionError("unreachable: fail exits")


#: `RECSYS_` variables that are not settings: the config file's path, `recsys simulate --api-key`.
OTHER_VARIABLES = {"RECSYS_CONFIG", "RECSYS_API_KEY"}


def _warn_unknown_variables() -> None:
    """A warning line per `RECSYS_` variable that names no setting. Inside a section a wrong name is
    an error (unknown keys are rejected), but pydantic-settings cannot tell a misspelled top-level
    name (`RECSYS_SPARK_MASTER` for `RECSYS_SPARK__MASTER`) from another program's and ignores it."""
    known = {f"RECSYS_{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    for name in sorted(os.environ):
        if name.startswith("RECSYS_") and name.split("__")[0] not in known:
            typer.echo(f"warning: {name} is not a setting and is ignored (nested names use __, "
                       "e.g. RECSYS_SPARK__MASTER)", err=True)


def printable(text: object) -> str:
    """`text` with its control characters written as `\\xNN` escapes, for a terminal."""
    return str(text).translate(_CONTROLS)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain parts and (text, style) pairs, control characters escaped."""
    return Text.assemble(*(printable(p) if isinstance(p, str) else (printable(p[0]), p[1]) for p in parts))


def add_id_column(table: Table, header: str) -> None:
    """A column of ids that other commands take (a model version, a run): whole at any width and
    when piped, never cut short with an ellipsis; the other columns give way."""
    table.add_column(header, no_wrap=True, overflow="fold")


def print_error(message: str) -> None:
    """Print `error: <message>` to stderr as one plain line (no markup, never wrapped)."""
    typer.secho("error:", fg="red", bold=True, err=True, nl=False)
    typer.echo(f" {message}", err=True)


def fail(message: str) -> None:
    """`print_error(message)` and exit 2."""
    print_error(message)
    raise typer.Exit(code=2)


def serve_metrics(port: int, registry: Any, setting: str) -> None:
    """Prometheus metrics of `registry` on `port` (0: none); a port in use is a one-line error naming `setting`."""
    from prometheus_client import start_http_server

    if not port:
        return
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        fail(f"metrics port {port} ({setting}): {exc.strerror or exc}; set another, or 0 for none")
    console.print(f"metrics: http://0.0.0.0:{port}/metrics")


def ensure_port_free(host: str, port: int) -> None:
    """`fail` unless a server could listen on `host`:`port` now, checked before anything starts
    (Redis, models, workers). SO_REUSEADDR as uvicorn sets it: a port in TIME_WAIT is no conflict."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]  # fmt: skip
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as exc:
        hint = "; stop what holds it or pass --port" if exc.errno == errno.EADDRINUSE else ""
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}")


@contextmanager
def long_running(settings: Settings) -> Iterator[tuple[redis.Redis, threading.Event, str]]:
    """What a long-running process (scheduler, learner) needs: plain log lines on stderr (a rich
    handler wraps paths at the terminal width), an event SIGTERM sets, and a Redis client for
    `settings` (an embedded server when no URL is set; `redis+cluster://` too) with a timeout long
    enough for background work, closed on exit, with the URL it talks to."""
    from dataclasses import replace

    from feature_store.redis_client import ConnectionSpec
    from feature_store.redis_server import redis_url

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with redis_url(settings) as url:
        spec = ConnectionSpec.from_settings(settings, url)
        client = replace(spec, socket_timeout_s=spec.socket_timeout_s * 20).client()
        try:
            yield client, stop, url
        finally:
            client.close()
