"""`recsys experiments …`: create, list, get, stop and report experiments (services/experiments), and
estimate an explore policy off-policy from the logs (`ope`, services/explore/ope).

Commands work on the state directory and Redis directly, as the API does (the same store and
checks); a running API serves a change from its next request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError

from services.cli.common import StateDirOption, fail, load_settings

if TYPE_CHECKING:
    from feature_store.online_store import RedisOnlineStore
    from feature_store.settings import Settings
    from services.experiments.manager import ExperimentManager
    from services.experiments.report import ArmReport

T = TypeVar("T")

app = typer.Typer(help="A/B and interleaving experiments between rankers.", no_args_is_help=True)


@contextmanager
def _manager(state_dir: Path | None) -> Iterator[tuple[ExperimentManager, RedisOnlineStore, Settings]]:
    """The manager on the state directory's store and Redis, its feature store and the settings."""
    from feature_store.online_store import RedisOnlineStore
    from feature_store.redis_client import ConnectionSpec
    from feature_store.redis_server import redis_url
    from models.registry import ModelRegistry
    from services.experiments.manager import ExperimentManager
    from services.experiments.store import ExperimentStore

    settings = load_settings(state_dir)
    with redis_url(settings) as url:
        client = ConnectionSpec.from_settings(settings, url).client()
        features = RedisOnlineStore.from_settings(settings, url)
        try:
            store = ExperimentStore(settings.state_dir / "experiments", client, settings.redis.key_prefix)
            yield ExperimentManager(store, ModelRegistry(settings.model_registry_dir)), features, settings
        finally:
            features.close()
            client.close()


def _fail_on_errors(run: Callable[[], T]) -> T:
    """`run()`, an experiment error (or Redis not answering) turned into the CLI's one-line error."""
    import redis

    from feature_store.redis_server import RedisUnavailableError
    from services.experiments.errors import ExperimentError
    from services.experiments.store import redis_failure

    try:
        return run()
    except ExperimentError as exc:
        fail(str(exc))
    except (RedisUnavailableError, redis.RedisError) as exc:
        fail(f"{redis_failure(exc)}; retry when it does")
    raise AssertionError("unreachable: fail exits")


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
    except UnicodeDecodeError as exc:
        fail(f"{definition}: not valid utf-8 (byte {exc.start})")
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
                manager, attribution, settings.batch_dir, experiment_id))
        finally:
            attribution.close()
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    for arm in result.arms:
        lift = "" if arm.lift is None else f"  lift {arm.lift:+.4f} [{arm.lift_low:+.4f}, {arm.lift_high:+.4f}]"
        lift += "" if arm.p_value is None else f"  p={arm.p_value:.3g}"
        typer.echo(f"{arm.name}: {arm.impressions} impressions, {arm.clicks} clicks, CTR {arm.ctr:.4f} "
                   f"[{arm.ctr_low:.4f}, {arm.ctr_high:.4f}]{lift}{'  STOPPED: ' + arm.stopped if arm.stopped else ''}")
        if arm is not result.arms[0] and (arm.users is not None or arm.user_p_value is not None):
            typer.echo(_per_user_line(arm, result.arms[0]))
    if result.srm_p is not None:
        typer.echo(f"sample ratio: p = {result.srm_p:.3g}{'  SRM ALARM' if result.srm_alarm else ''}")
    elif result.srm_withheld:
        typer.echo(f"sample ratio: withheld, {result.srm_withheld}")
    for c in result.comparisons:
        interval = "" if c.low is None else f" [{c.low:+.4f}, {c.high:+.4f}]"
        typer.echo(f"{c.a} vs {c.b} ({c.units}): {c.wins_a} / {c.wins_b} / {c.ties} ties, "
                   f"preference {c.preference:+.4f}{interval}, sign test p = {c.sign_p:.3g}")
        if c.credit_difference is not None:
            interval = "" if c.credit_low is None else f" [{c.credit_low:+.4f}, {c.credit_high:+.4f}]"
            p = "" if c.credit_p is None else f", t-test p = {c.credit_p:.3g}"
            typer.echo(f"  {c.credit} credit per user, {c.a} − {c.b}: {c.credit_difference:+.4f}{interval}{p}")
    typer.echo(result.caveat)


def _per_user_line(arm: ArmReport, control: ArmReport) -> str:
    """The per-user test of `arm` against the first arm (both arms' users); its p-value also where
    an arm has no click, the lift then being undefined (docs/experiments.md)."""
    if arm.user_lift is None and arm.user_p_value is None:  # analysis.user_level_lift: no variance to test
        lift = "no test (an arm has fewer than two users, or neither varies)"
    elif arm.user_lift is None:
        lift = "lift undefined (an arm has no click)"
    else:
        lift = f"lift {arm.user_lift:+.4f} [{arm.user_lift_low:+.4f}, {arm.user_lift_high:+.4f}]"
    p = "" if arm.user_p_value is None else f" p={arm.user_p_value:.3g}"
    return f"  per user ({arm.users or 0} users; {control.name}: {control.users or 0}): {lift}{p}"


@app.command("ope")
def ope(
    policy: Annotated[str, typer.Option("--policy", help="Target policy: greedy, epsilon_greedy, ucb1 or thompson.")],
    param: Annotated[list[str] | None, typer.Option("--param", help="A target parameter of the explore settings, k=v (e.g. epsilon=0.05).")] = None,
    since: Annotated[datetime | None, typer.Option(help="Requests served at or after this time (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Requests served before this time (UTC).")] = None,
    bootstrap: Annotated[int, typer.Option(min=10, help="Bootstrap resamples of the CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap and of randomised targets.")] = 0,
    state_dir: StateDirOption = None,
) -> None:
    """Off-policy CTR estimates (IPS, SNIPS, DR, 95% bootstrap CIs) of a target explore policy from the
    logged candidates and the Spark attributed impressions (docs/exploration.md)."""
    from feature_store.settings import ExploreSettings
    from pipelines.spark.common import BatchJobError
    from pipelines.spark.ope_input import iterate, logged_requests
    from services.cli.batch import _session
    from services.explore.factory import explore_stage_from_settings, policy_from_settings
    from services.explore.ope.logged import OpeError, check_target, evaluate
    from services.explore.stats import StatsUnavailable

    if since is not None and until is not None and since >= until:
        fail(f"--since {since.isoformat()} is not before --until {until.isoformat()}: no request is served in [since, until)")
    settings = load_settings(state_dir)
    values: dict[str, str] = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--param {item!r}: expected name=value")
        if name.strip() == "policy":
            fail(f"--param {item!r}: the target policy is --policy's ({policy!r}); give its parameters with --param")
        values[name.strip()] = value.strip()
    try:
        explore = ExploreSettings.model_validate({**settings.explore.model_dump(), **values, "policy": policy})
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"--policy/--param: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}")
    target = policy_from_settings(explore)
    try:
        check_target(target)
    except OpeError as exc:
        fail(str(exc))
    with _session(settings, "recsys-experiments-ope") as spark, ExitStack() as resources:
        stats = None
        if target.needs is not None:
            features = resources.enter_context(_manager(state_dir))[1]
            stage = explore_stage_from_settings(settings.model_copy(update={"explore": explore}), features)
            resources.callback(stage.close)
            assert stage.stats is not None
            stats = stage.stats.counts  # the counts at OPE time, not at each request (docs/exploration.md)
        try:
            result = evaluate(iterate(logged_requests(spark, settings, since, until)), target, stats, bootstrap, seed)
        except (BatchJobError, OpeError, StatsUnavailable) as exc:
            fail(str(exc))
    typer.echo(f"target: {target.label}")
    typer.echo(f"requests: {result.requests}")
    typer.echo("logging policy: " + ", ".join(f"{label} ({n} requests)" for label, n in sorted(result.logging.items())))
    for why, n in sorted(result.skipped.items()):
        typer.echo(f"skipped: {n} requests: {why}")
    for name, e in result.estimates.items():
        typer.echo(f"{name.upper()}: CTR per slot {e.value:.4f} [{e.low:.4f}, {e.high:.4f}]")
