"""`recsys simulate`: drive a running API with a simulated population and report against truth."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import httpx
import typer

from feature_store.settings import Settings
from services.cli.common import StateDirOption, console, fail, load_settings, styled
from services.cli.data import _progress_hook, _summary

if TYPE_CHECKING:
    from pipelines.simulate.population import PopulationParams


def simulate(
    api_url: Annotated[str, typer.Option("--api-url", help="Base URL of the API.")] = "http://127.0.0.1:8000",
    users: Annotated[int, typer.Option("--users", min=1, help="Simulated users.")] = 200,
    items: Annotated[int, typer.Option("--items", min=10, help="Items in the catalog at the start.")] = 500,
    categories: Annotated[int, typer.Option("--categories", min=1, help="Item categories.")] = 10,
    requests: Annotated[int, typer.Option("--requests", min=0, help="Stop after this many requests.")] = 1_000,
    seconds: Annotated[float, typer.Option("--seconds", min=0, help="Stop after this many seconds.")] = 60.0,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Same seed, same population and clicks.")] = 0,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="Items asked per request.")] = 10,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight.")] = 1,
    eta: Annotated[float, typer.Option("--eta", min=0, help="Position bias: e_k = 1/(k+1)^eta.")] = 1.0,
    load: Annotated[bool, typer.Option("--load/--no-load", help="Load catalog, users and history first.")] = True,
    synthetic: Annotated[bool, typer.Option(
        "--synthetic", help="Simulate the users of the synthetic data in the state directory (`recsys data synth`, "
        "`make run DATA=`): its ids, planted preferences and seed; implies --no-load; --users/--items/--categories/--seed ignored."
    )] = False,
    drift_at: Annotated[int | None, typer.Option("--drift-at", min=0, help="Step at which preferences drift.")] = None,
    new_items_at: Annotated[int | None, typer.Option("--new-items-at", min=1, help="Step at which new items arrive.")] = None,
    new_items: Annotated[int, typer.Option("--new-items", min=0, help="How many items arrive then.")] = 0,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="RECSYS_API_KEY", help="X-API-Key for writes.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the summary as JSON here.")] = None,
    state_dir: StateDirOption = None,
) -> None:
    """Simulate users with planted preferences and a position-based click model against the API."""
    from pipelines.simulate.population import PopulationParams
    from pipelines.simulate.runner import RunParams
    from pipelines.simulate.session import SimulationSpec, simulate as run
    from pipelines.simulate.tenant import TenantLoadError

    settings = load_settings(state_dir)
    try:
        if synthetic:
            population, load = _synthetic_population(settings, drift_at, new_items), False
        else:
            population = PopulationParams(users=users, items=items, seed=seed, categories=min(categories, items),
                                          drift_at=drift_at, new_items_at=new_items_at, new_items=new_items)  # fmt: skip
        spec = SimulationSpec(
            population, RunParams(requests=requests, seconds=seconds, k=k, concurrency=concurrency, put_arrivals=load),
            eta=eta, load=load,
        )  # fmt: skip
        with _progress_hook() as on_progress:
            report = run(api_url, spec, settings.state_dir, api_key=api_key, out=out, on_progress=on_progress)  # type: ignore[arg-type]
    except (ValueError, TenantLoadError, OSError) as exc:  # OSError: the truth file or --out cannot be written
        fail(str(exc))
        return
    except httpx.HTTPError as exc:
        fail(f"cannot talk to {api_url}: {exc}")
        return
    summary = report.result.summary
    rows = {
        "requests": f"{summary.requests:,} in {summary.seconds:.1f} s ({summary.errors:,} errors)",
        "impressions": f"{summary.impressions:,}",
        "clicks": f"{summary.clicks:,} (events accepted {summary.events.accepted:,}, duplicates {summary.events.duplicates:,})",
        "CTR": f"{summary.ctr:.4f}",
        "expected CTR (truth)": f"{summary.expected_ctr:.4f}",
        "oracle CTR (truth)": f"{summary.oracle_ctr:.4f}",
        "regret (expected clicks)": f"{summary.regret:,.1f}",
        "degraded responses": f"{summary.degraded_responses:,}",
        "ground truth": str(report.truth_path),
    }
    if report.tenant:
        rows["tenant loaded"] = (f"{report.tenant.items:,} items, {report.tenant.users:,} users, "
                                 f"{report.tenant.history.accepted:,} history events")  # fmt: skip
    _summary("Simulation", rows)
    for sample in summary.error_samples:
        console.print(styled(("error", "yellow"), f" {sample}"))
    if summary.requests == 0 and requests > 0 and seconds > 0:
        fail("no request succeeded")


def _synthetic_population(settings: Settings, drift_at: int | None, new_items: int) -> PopulationParams:
    """The population of the synthetic data `recsys data synth` wrote into this state directory."""
    from pipelines.datasets.synthetic import load_truth, truth_path
    from pipelines.simulate.population import PopulationParams

    path = truth_path(settings)
    if not path.is_file():
        fail(f"--synthetic: no synthetic data in {settings.state_dir} ({path} is missing): "
             "run `recsys data synth` (or `make run DATA=`) with this state directory first")  # fmt: skip
    if new_items:
        fail("--synthetic: --new-items is not supported (arrivals would change the planted structure)")
    return PopulationParams.of_synthetic(load_truth(path).params, drift_at=drift_at)
