"""`recsys models …`: the registry's published, blessed and current versions; promote; rollback."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from services.cli.common import StateDirOption, add_id_column, console, fail, load_settings, printable

app = typer.Typer(help="Model versions: list, promote a blessed one, roll back.", no_args_is_help=True)

RoleOption = Annotated[str, typer.Option(help="recall or ranker.")]


def _registry(state_dir: object):  # type: ignore[no-untyped-def]
    from models.registry import ModelRegistry

    return ModelRegistry(load_settings(state_dir).model_registry_dir)  # type: ignore[arg-type]


@app.command("list")
def list_versions(state_dir: StateDirOption = None) -> None:
    """Every published version per role, with whether the gate blessed it and which one serves."""
    from models.registry import ROLES

    registry = _registry(state_dir)
    table = Table(title=f"models in {registry.root}")
    table.add_column("role")
    add_id_column(table, "version")  # `recsys models promote` takes it
    for column in ("created", "blessed", "current"):
        table.add_column(column)
    for role in ROLES:
        for row in registry.overview(role):
            blessed = "revoked" if row["revoked"] else "yes" if row["blessed"] else "-"
            created = str(row["created_at"]) if row["problem"] is None else printable(f"unreadable: {row['problem']}")
            table.add_row(role, row["version"], created, blessed, "*" if row["current"] else "")
    console.print(table)


@app.command("promote")
def promote(version: Annotated[str, typer.Argument(help="A blessed version (see `recsys models list`).")],
            state_dir: StateDirOption = None) -> None:  # fmt: skip
    """Make a blessed version current; every API worker swaps to it at its next registry poll."""
    from models.registry import RegistryError

    registry = _registry(state_dir)
    try:
        role = registry.role_of(version)
        registry.promote(role, version)
    except RegistryError as exc:
        fail(str(exc))
        return
    console.print(f"{role}: {version} is current")


@app.command("rollback")
def rollback(role: RoleOption = "ranker", state_dir: StateDirOption = None) -> None:
    """Make the previously current version of ROLE current again and revoke the current one's blessing."""
    from models.registry import ROLES, RegistryError

    if role not in ROLES:
        fail(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
    try:
        version = _registry(state_dir).rollback(role)
    except RegistryError as exc:
        fail(str(exc))
        return
    console.print(f"{role}: rolled back to {version}")
