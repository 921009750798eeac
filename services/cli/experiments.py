"""`recsys experiments …`: create, list, get, stop and report experiments (services/experiments).

Commands work on the state directory and Redis directly, as the API does (the same store and
checks); a running API serves a change from its next request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError

from services.cli.common import StateDirOption, fail, load_settings

if TYPE_CHECKING:
    from feature_store.online_store import RedisOnlineStore
    from feature_store.settings import Settings
    from services.experiments.manager import ExperimentManager

T = TypeVar("T")

app = typer.Typer(help="A/B and interleaving experiments between rankers.", no_args_is_help=True)


@contextmanager
def _manager(state_dir: Path | None) -> Iterator[tuple[ExperimentManager, RedisOnlineStore, Settings]]:
    """The manager on the state directory's store and Redis, its feature store and the settings."""
    import redis

    from feature_store.online_store import RedisOnlineStore
    from feature_store.redis_server import redis_url
    from models.registry import ModelRegistry
    from services.experiments.manager import ExperimentManager
    from services.experiments.store import ExperimentStore

    settings = load_settings(state_dir)
    with redis_url(settings) as url:
        client = redis.Redis.from_url(url)
        features = RedisOnlineStore.from_settings(settings, url)
        try:
            store = ExperimentStore(settings.state_dir / "experiments", client, settings.redis.key_prefix)
            yield ExperimentManager(store, ModelRegistry(settings.model_registry_dir)), features, settings
        finally:
            features.close()
            client.close()


def _fail_on_errors(run: Callable[[], T]) -> T:
    """`run()`, an experiment error turned into the CLI's one-line error."""
    from services.experiments.errors import ExperimentError

    try:
        return run()
    except ExperimentError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


@app.command("create")
def create(
    definition: Annotated[Path, typer.Argument(help="The experiment as JSON (the body of POST /v1/experiments).")],
    state_dir: StateDirOption = None,
) -> None:
    """Create and start an experiment."""
    from services.experiments.model import ExperimentSpec

    try:
        spec = ExperimentSpec.model_validate_json(definition.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"{definition}: {exc.strerror}")
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"{definition}: {'.'.join(str(p) for p in first['loc']) or 'experiment'}: {first['msg']}")
    with _manager(state_dir) as (manager, _, _):
        experiment = _fail_on_errors(lambda: manager.create(spec))
    typer.echo(experiment.model_dump_json(indent=2))


@app.command("list")
def list_(state_dir: StateDirOption = None) -> None:
    """Every experiment: id, kind, layer, traffic slice, status."""
    with _manager(state_dir) as (manager, _, _):
        for e in manager.list():
            typer.echo(f"{e.id}\t{e.kind}\t{e.layer}\t[{e.offset:g}, {e.offset + e.traffic:g})\t{e.status}")


@app.command("get")
def get(experiment_id: str, state_dir: StateDirOption = None) -> None:
    """One experiment as JSON."""
    with _manager(state_dir) as (manager, _, _):
        typer.echo(_fail_on_errors(lambda: manager.get(experiment_id)).model_dump_json(indent=2))


@app.command("stop")
def stop(experiment_id: str, state_dir: StateDirOption = None) -> None:
    """Stop an experiment (its users get the default serving)."""
    with _manager(state_dir) as (manager, _, _):
        experiment = _fail_on_errors(lambda: manager.stop(experiment_id))
    typer.echo(f"{experiment.id}: {experiment.status}")


@app.command("report")
def report(
    experiment_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON (as GET /v1/experiments/{id}/report).")] = False,
    state_dir: StateDirOption = None,
) -> None:
    """The experiment's statistics (applies its guardrail)."""
    from services.experiments.report import build_report

    with _manager(state_dir) as (manager, features, settings):
        attribution = features.attribution()
        try:
            result = _fail_on_errors(lambda: build_report(
                manager, attribution, Path(settings.batch_uri), experiment_id))
        finally:
            attribution.close()
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    for arm in result.arms:
        lift = "" if arm.lift is None else f"  lift {arm.lift:+.4f} [{arm.lift_low:+.4f}, {arm.lift_high:+.4f}] p={arm.p_value:.3g}"
        typer.echo(f"{arm.name}: {arm.impressions} impressions, {arm.clicks} clicks, CTR {arm.ctr:.4f} "
                   f"[{arm.ctr_low:.4f}, {arm.ctr_high:.4f}]{lift}{'  STOPPED: ' + arm.stopped if arm.stopped else ''}")
    if result.srm_p is not None:
        typer.echo(f"sample ratio: p = {result.srm_p:.3g}{'  SRM ALARM' if result.srm_alarm else ''}")
    for c in result.comparisons:
        typer.echo(f"{c.a} vs {c.b} ({c.units}): {c.wins_a} / {c.wins_b} / {c.ties} ties, "
                   f"preference {c.preference:+.4f} [{c.low:+.4f}, {c.high:+.4f}], sign test p = {c.sign_p:.3g}")
    typer.echo(result.caveat)
