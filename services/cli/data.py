"""`recsys data …`: dataset import and synthetic data generation."""

from __future__ import annotations

import typer

app = typer.Typer(help="Import datasets into the event log and catalogs, or generate synthetic data.", no_args_is_help=True)
