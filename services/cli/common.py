"""Helpers shared by CLI commands: settings loading and error reporting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from feature_store.settings import Settings

# Scripts grep what commands print: long lines (paths) stay whole instead of wrapping at the width.
console = Console(stderr=True, soft_wrap=True)

StateDirOption = Annotated[
    Path | None, typer.Option("--state-dir", help="State directory (default: $RECSYS_STATE_DIR or .recsys).")
]


def load_settings(state_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings object, turning a validation error into a one-line CLI error."""
    if state_dir is not None:
        overrides["state_dir"] = state_dir
    try:
        return Settings(**overrides)
    except (ValidationError, FileNotFoundError) as exc:
        fail(f"invalid settings: {exc}")
        raise  # unreachable, for type checkers


def print_error(message: str) -> None:
    """Print `error: <message>` to stderr as one plain line (no markup, never wrapped)."""
    typer.secho("error:", fg="red", bold=True, err=True, nl=False)
    typer.echo(f" {message}", err=True)


def fail(message: str) -> None:
    """`print_error(message)` and exit 2."""
    print_error(message)
    raise typer.Exit(code=2)
