"""`recsys stream …`: the speed layer (PyFlink) in a local mini-cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from services.cli.common import StateDirOption, console, fail, load_settings

app = typer.Typer(help="The speed layer: event log → Flink → live features in Redis.", no_args_is_help=True)


@app.command("run")
def run(
    state_dir: StateDirOption = None,
    resume: Annotated[bool, typer.Option(help="Restore from the latest retained checkpoint.")] = False,
    from_checkpoint: Annotated[
        Path | None, typer.Option(help="Restore from this checkpoint directory (chk-N).")
    ] = None,
) -> None:
    """Run the streaming job until Ctrl-C / SIGTERM, then cancel it cleanly (checkpoints kept)."""
    from feature_store.redis_server import redis_url
    from pipelines.flink import job
    from pipelines.flink.runner import latest_checkpoint

    settings = load_settings(state_dir)
    if from_checkpoint is not None and not (from_checkpoint / "_metadata").is_file():
        fail(f"{from_checkpoint} is not a completed checkpoint (no _metadata in it)")
    restore_from = from_checkpoint or (latest_checkpoint(settings.flink_checkpoint_dir) if resume else None)
    if resume and restore_from is None:
        console.print(f"no checkpoint under {settings.flink_checkpoint_dir}: starting fresh")
    with redis_url(settings) as url:
        console.print(f"speed layer: {settings.event_log_dir} → {url}; checkpoints in {settings.flink_checkpoint_dir}")
        job.run(settings, url, restore_from)
    console.print("speed layer stopped")


@app.command("upgrade-counts")
def upgrade_counts(state_dir: StateDirOption = None) -> None:
    """Fold the attributed (item, position) counts of the old layout into the item hashes and index
    the (policy, arm) count keys (once, after the old stream job has stopped; docs/exploration.md)."""
    from feature_store.attribution_upgrade import fold_item_positions, index_policy_arms
    from feature_store.errors import FeatureStoreUnavailableError
    from feature_store.redis_client import ConnectionSpec
    from feature_store.redis_server import redis_url

    settings = load_settings(state_dir)
    with redis_url(settings) as url:
        try:
            spec = ConnectionSpec.from_settings(settings, url)
            folded, indexed = fold_item_positions(spec), index_policy_arms(spec)
        except FeatureStoreUnavailableError as exc:
            fail(str(exc))
    console.print(f"folded {folded} (item, position) count keys into their item hashes; indexed {indexed} (policy, arm) count keys")
