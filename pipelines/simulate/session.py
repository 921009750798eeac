"""One simulation as `recsys simulate` runs it: draw the truth, record it, load the tenant, run.

The population's ids carry a fingerprint of its parameters and the click model's eta
(`service_population`), so a rerun of the same simulation finds its own tenant while any other
population, of the same seed or not, gets its own ids and truth file. The truth file
(`<state_dir>/simulate/<prefix>truth.npz`, `click_model.load_truth` reads it) is written before any
request, so a later benchmark can score logged lists against it; with `out`, the summary, the
parameters and the truth file's path are written there as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import httpx

from pipelines.datasets import OnProgress, no_progress
from pipelines.simulate.click_model import GroundTruth, PositionBasedModel
from pipelines.simulate.population import PopulationParams, make_population
from pipelines.simulate.runner import RunParams, SimulationResult, run_simulation
from pipelines.simulate.tenant import TenantReport, load_tenant


@dataclass(frozen=True)
class SimulationSpec:
    """Everything a simulation needs besides the service's address."""

    population: PopulationParams
    run: RunParams
    eta: float = 1.0
    load: bool = True
    history_sessions: int = 2


@dataclass
class SimulationReport:
    truth_path: Path
    tenant: TenantReport | None
    result: SimulationResult


def service_population(spec: SimulationSpec) -> PopulationParams:
    """The population as it goes into a service: without an explicit `id_prefix`, its ids start with
    `sim<seed>-<h>-`, `<h>` the first 6 hex digits of a SHA-256 over its other parameters and eta.

    Event ids derive from the ids, so posting a rerun's history again is dropped as duplicates,
    while another population (or eta) of the same seed neither collides with it in the service nor
    overwrites its truth file."""
    params = spec.population
    if params.id_prefix is not None:
        return params
    knobs = {name: value for name, value in asdict(params).items() if name != "id_prefix"}
    text = json.dumps({**knobs, "eta": float(spec.eta)}, sort_keys=True)
    return replace(params, id_prefix=f"sim{params.seed}-{hashlib.sha256(text.encode()).hexdigest()[:6]}-")


def truth_path(state_dir: Path, params: PopulationParams) -> Path:
    """Where the truth of a population (as `service_population` gives it) is recorded."""
    return state_dir / "simulate" / f"{params.prefix}truth.npz"


def simulate(
    api_url: str, spec: SimulationSpec, state_dir: Path, *, api_key: str | None = None, out: Path | None = None,
    timeout_s: float = 10.0, on_progress: OnProgress = no_progress,
) -> SimulationReport:
    """Record the truth, load the tenant (when `spec.load`), run the loop, write `out`. The
    population's ids are `service_population(spec)`'s."""
    spec = replace(spec, population=service_population(spec))
    truth = GroundTruth(make_population(spec.population), PositionBasedModel(spec.eta))
    path = truth.save(truth_path(state_dir, spec.population))
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=api_url, headers=headers, timeout=timeout_s) as client:
        tenant = None
        if spec.load:
            tenant = load_tenant(client, truth, sessions_per_user=spec.history_sessions, on_progress=on_progress)
        result = run_simulation(client, truth, spec.run, on_progress=on_progress)
    report = SimulationReport(path, tenant, result)
    if out is not None:
        _write_json(out, report, spec, api_url)
    return report


def _write_json(out: Path, report: SimulationReport, spec: SimulationSpec, api_url: str) -> None:
    document = {
        "api_url": api_url,
        "truth_path": str(report.truth_path),
        "spec": asdict(spec),
        "tenant": asdict(report.tenant) if report.tenant else None,
        "summary": report.result.summary.to_dict(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, out)
