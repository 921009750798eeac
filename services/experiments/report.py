"""An experiment's report, from the counts attribution already made (no second attribution).

- A/B: impressions and clicks per arm from the attribution store's counts per (policy, arm)
  (`feature_store.attribution_store`, filled by the Flink speed layer; 7 days of hourly buckets),
  summed over the hours since the experiment started. The arm key is `<experiment>:<arm>`. The
  test to decide with is per user, the unit that was randomised (`analysis.user_level_lift`):
  clicks and impressions per user from the Spark attribution job's `attributed_impressions/`
  (`users`, `user_lift*`, `user_p_value`; None until `recsys batch attribution` has run).
- Interleaving: credit needs the impressions themselves, so it comes from the Spark attribution
  job's `attributed_impressions/` (one row per impression with its `team`, `ranks`,
  `ranker_propensities` and a 0/1 `click`), read with pyarrow; `recsys batch attribution`
  refreshes it. Each method's credit rule (`credit`: team for team-draft, Joachims' for balanced,
  the marginalised credit for probabilistic) feeds both the per-user preference with its sign test
  and the count credit's mean difference with its t-test; the arms' impressions and clicks are the
  slots each team placed and their clicks.

Reading the report applies the guardrail: an A/B arm past it is stopped (`ExperimentManager.stop_arm`).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from feature_store.attribution import BUCKET_MS, Dimension
from feature_store.attribution_store import AttributionStore
from services.experiments import analysis, credit
from services.experiments.manager import ExperimentManager
from services.experiments.model import Experiment, Kind
from services.experiments.per_user import (CLICK, CachedDesignEffects, DesignEffects, PerUser, counted_since_ms,
                                           design_effects, experiment_rows, per_user_counts)
from services.experiments.serving import qualified_arm

REPEATED_LOOKS = (
    "Fixed-horizon tests (all but the guardrail's, which holds its level over any number of looks): "
    "every look at p < 0.05 is another chance of a false positive. Decide the "
    "sample size before starting (benchmarks/RESULTS.md, issue 16, gives the users each method needed "
    "for 80% power on the simulator; benchmarks/experiments.py measures it) and read the result once there."
)
IMPRESSIONS = "attributed_impressions"
MAX_TIMELINE_POINTS = 100  # per comparison: the page draws them, a week of hours is 168
#: Columns of `attributed_impressions/` that a table written before them lacks.
OPTIONAL_COLUMNS = ("request_id", "position", "ranks", "ranker_propensities")


class ArmReport(BaseModel):
    name: str
    version: str | None
    impressions: int
    clicks: int
    ctr: float
    ctr_low: float
    ctr_high: float
    lift: float | None = None
    lift_low: float | None = None
    lift_high: float | None = None
    p_value: float | None = None
    users: int | None = None
    user_lift: float | None = None
    user_lift_low: float | None = None
    user_lift_high: float | None = None
    user_p_value: float | None = None
    guardrail_p: float | None = None
    stopped: str | None = None


class Comparison(BaseModel):
    a: str
    b: str
    units: str
    credit: str = "team"  # the credit rule (`credit.RULES`) both statistics use
    wins_a: int
    wins_b: int
    ties: int
    preference: float
    low: float | None  # None below `analysis.MIN_BOOTSTRAP_UNITS` units
    high: float | None
    sign_p: float
    credit_difference: float | None = None  # mean per-user credit of a minus b, over users with credit
    credit_low: float | None = None
    credit_high: float | None = None
    credit_p: float | None = None


class TimelinePoint(BaseModel):
    at: datetime
    series: str
    value: float
    low: float
    high: float


class ExperimentReport(BaseModel):
    experiment: Experiment
    generated_at: datetime
    arms: list[ArmReport]
    srm_p: float | None = None
    srm_alarm: bool = False
    srm_withheld: str | None = None  # why there is no sample-ratio test (A/B only)
    comparisons: list[Comparison] = []
    interleaved_impressions: int = 0
    timeline: list[TimelinePoint] = []
    caveat: str = REPEATED_LOOKS


def build_report(manager: ExperimentManager, attribution: AttributionStore, batch_root: Path,
                 experiment_id: str, now: datetime | None = None) -> ExperimentReport:
    now = now or datetime.now(timezone.utc)
    experiment = manager.get(experiment_id)
    if experiment.kind == Kind.AB:
        return _ab_report(manager, attribution, experiment, now, Path(batch_root) / IMPRESSIONS)
    return _interleaving_report(experiment, Path(batch_root) / IMPRESSIONS, now)


def enforce_guardrail(manager: ExperimentManager, attribution: AttributionStore, experiment: Experiment,
                      effects: DesignEffects) -> Experiment:
    """Stop every arm of an A/B experiment whose CTR breaches its guardrail, from the attributed
    counts and the arms' design `effects`; the experiment as it stands after. What the report does
    on every read, for a process that must act without anyone reading it (the API's monitor, the
    online learner)."""
    if experiment.kind != Kind.AB or experiment.guardrail is None:
        return experiment
    buckets = _arm_buckets(attribution, experiment)
    totals = {arm.name: _sum(buckets.get(arm.name, {})) for arm in experiment.arms}
    return _stop_breaching(manager, experiment, totals, effects(experiment))


def _stop_breaching(manager: ExperimentManager, experiment: Experiment, totals: dict[str, tuple[int, int]],
                    effects: dict[str, float]) -> Experiment:
    """Stop each arm not stopped yet whose CTR fell below `(1 − max_ctr_drop)` × the first arm's
    (`analysis.guardrail_p` < the guardrail's p-value), with the reason."""
    guardrail = experiment.guardrail
    if guardrail is None:
        return experiment
    control = experiment.arms[0].name
    c_0, n_0 = totals[control]
    for arm in experiment.arms[1:]:
        clicks, shown = totals[arm.name]
        p = _guardrail_p(experiment, totals, effects, arm.name)
        if p < guardrail.p_value and arm.name not in experiment.stopped_arms:
            why = (f"guardrail: CTR {analysis.wilson(clicks, shown).estimate:.4f} below {1 - guardrail.max_ctr_drop:g} x "
                   f"control's {c_0 / max(n_0, 1):.4f} (always-valid p = {p:.2g}; design effects "
                   f"{effects[arm.name]:.3g} and {effects[control]:.3g})")
            experiment = manager.stop_arm(experiment.id, arm.name, why)
    return experiment


def _guardrail_p(experiment: Experiment, totals: dict[str, tuple[int, int]], effects: dict[str, float],
                 arm: str) -> float:
    control = experiment.arms[0].name
    assert experiment.guardrail is not None
    return analysis.guardrail_p(*totals[arm], *totals[control], experiment.guardrail.max_ctr_drop, effects[arm],
                                effects[control])


def _ab_report(manager: ExperimentManager, attribution: AttributionStore, experiment: Experiment,
               now: datetime, impressions: Path) -> ExperimentReport:
    buckets = _arm_buckets(attribution, experiment)
    per_user = per_user_counts(impressions, experiment)
    totals = {arm.name: _sum(buckets.get(arm.name, {})) for arm in experiment.arms}
    effects = design_effects(per_user, experiment)
    experiment = _stop_breaching(manager, experiment, totals, effects)
    control = experiment.arms[0].name
    c_0, n_0 = totals[control]
    reports = []
    for arm in experiment.arms:
        clicks, shown = totals[arm.name]
        ctr = analysis.wilson(clicks, shown)
        report = ArmReport(name=arm.name, version=arm.version, impressions=shown, clicks=clicks, ctr=ctr.estimate,
                           ctr_low=ctr.low, ctr_high=ctr.high, stopped=experiment.stopped_arms.get(arm.name))
        if arm.name in per_user:
            report.users = len(per_user[arm.name][0])
        if arm.name != control and arm.name in per_user and control in per_user:
            user_lift, user_p = analysis.user_level_lift(*per_user[arm.name], *per_user[control])
            report.user_lift, report.user_lift_low, report.user_lift_high, report.user_p_value = (
                _finite(user_lift.estimate), _finite(user_lift.low), _finite(user_lift.high), _finite(user_p))
        if arm.name != control:
            lift, p = analysis.relative_lift(clicks, shown, c_0, n_0)
            report.lift, report.lift_low, report.lift_high, report.p_value = (
                _finite(lift.estimate), _finite(lift.low), _finite(lift.high), _finite(p))
            if experiment.guardrail is not None:
                report.guardrail_p = _guardrail_p(experiment, totals, effects, arm.name)
        reports.append(report)
    srm, withheld = _srm_p(experiment, per_user)
    return ExperimentReport(experiment=experiment, generated_at=now, arms=reports, srm_p=srm,
                            srm_alarm=srm is not None and srm < analysis.SRM_ALPHA, srm_withheld=withheld,
                            timeline=_ab_timeline(experiment, buckets))


def batch_design_effects(batch_root: Path) -> CachedDesignEffects:
    """The arms' design effects from the batch layer's per-user rows under `batch_root`, for the
    processes that apply guardrails on a schedule."""
    return CachedDesignEffects(Path(batch_root) / IMPRESSIONS)


def _srm_p(experiment: Experiment, per_user: PerUser) -> tuple[float | None, str | None]:
    """The sample-ratio test on the users of each arm (the randomised unit; the batch layer's
    attributed impressions), or why there is none: before those rows exist, and once an arm is
    stopped (its users are served outside the experiment from then on, so its count stops while
    the others grow)."""
    if experiment.stopped_arms:
        return None, "an arm is stopped"
    if not per_user:
        return None, "no per-user rows yet (recsys batch attribution)"
    counts = [len(per_user[arm.name][0]) if arm.name in per_user else 0 for arm in experiment.arms]
    return analysis.srm_p(counts, experiment.shares()), None


def _arm_buckets(attribution: AttributionStore, experiment: Experiment) -> dict[str, dict[int, list[int]]]:
    """arm -> hour bucket ms -> [clicks, impressions], over every policy that served the arm."""
    prefix = qualified_arm(experiment.id, "")
    since = counted_since_ms(experiment)
    out: dict[str, dict[int, list[int]]] = {}
    for row in attribution.scan_counts(Dimension.POLICY_ARM):
        arm = _unescape(row.key.rsplit("|", 1)[-1])
        if not arm.startswith(prefix) or row.bucket_ms < since or row.measure not in (CLICK, "impression"):
            continue
        cell = out.setdefault(arm[len(prefix):], {}).setdefault(row.bucket_ms, [0, 0])
        cell[0 if row.measure == CLICK else 1] += row.value
    return out


def _ab_timeline(experiment: Experiment, buckets: dict[str, dict[int, list[int]]]) -> list[TimelinePoint]:
    """Cumulative CTR per arm, and each arm's cumulative lift over the first, per hour."""
    hours = sorted({b for arm in buckets.values() for b in arm})
    control = experiment.arms[0].name
    points = []
    running = {arm.name: [0, 0] for arm in experiment.arms}
    for hour in hours:
        at = datetime.fromtimestamp((hour + BUCKET_MS) / 1000, timezone.utc)
        for arm in experiment.arms:
            cell = buckets.get(arm.name, {}).get(hour, [0, 0])
            running[arm.name] = [running[arm.name][0] + cell[0], running[arm.name][1] + cell[1]]
            ctr = analysis.wilson(*running[arm.name])
            points.append(TimelinePoint(at=at, series=f"ctr:{arm.name}", value=ctr.estimate, low=ctr.low, high=ctr.high))
        for arm in experiment.arms[1:]:
            lift, _ = analysis.relative_lift(*running[arm.name], *running[control])
            if math.isfinite(lift.estimate):
                points.append(TimelinePoint(at=at, series=f"lift:{arm.name}", value=lift.estimate, low=lift.low,
                                            high=lift.high))
    return points


def _interleaving_report(experiment: Experiment, path: Path, now: datetime) -> ExperimentReport:
    rows = _interleaved_rows(path, experiment)
    teams = [arm.name for arm in experiment.arms]
    logged = credit.Logged(rows["user_id"], rows["team"], rows[CLICK], rows["request_id"], rows["position"], rows["ranks"],
                           rows["ranker_propensities"])
    credited = credit.credit(experiment.method, logged, teams)
    arms = []
    for arm in experiment.arms:
        shown = sum(1 for t in rows["team"] if t == arm.name)
        clicks = sum(c for t, c in zip(rows["team"], rows[CLICK]) if t == arm.name)
        ctr = analysis.wilson(clicks, shown)
        arms.append(ArmReport(name=arm.name, version=arm.version, impressions=shown, clicks=clicks,
                              ctr=ctr.estimate, ctr_low=ctr.low, ctr_high=ctr.high))
    comparisons, timeline = [], []
    rng = np.random.default_rng(0)  # the report's bootstrap: the same numbers on every read
    for j, other in enumerate(teams[1:], start=1):
        outcomes = analysis.unit_outcomes(rows["user_id"], credited[:, 0], credited[:, j])
        pref = analysis.preference(outcomes, rng)
        difference, p = analysis.credit_difference(rows["user_id"], credited[:, 0], credited[:, j])
        comparisons.append(Comparison(
            a=teams[0], b=other, units="users", credit=credit.RULES[experiment.method], wins_a=pref.wins_a,
            wins_b=pref.wins_b, ties=pref.ties, preference=pref.delta.estimate, low=_finite(pref.delta.low),
            high=_finite(pref.delta.high), sign_p=pref.sign_p, credit_difference=_finite(difference.estimate),
            credit_low=_finite(difference.low), credit_high=_finite(difference.high), credit_p=_finite(p),
        ))  # fmt: skip
        timeline += _preference_timeline(rows, credited[:, 0], credited[:, j], other, rng)
    return ExperimentReport(experiment=experiment, generated_at=now, arms=arms, comparisons=comparisons,
                            interleaved_impressions=len(rows["team"]), timeline=timeline)


def _preference_timeline(rows: dict[str, list], credit_a: np.ndarray, credit_b: np.ndarray, name: str,
                         rng: np.random.Generator) -> list[TimelinePoint]:
    """Cumulative preference of the first team over `name` with its interval at the end of each
    hour with rows, from the first with units enough for an interval, thinned (`_thinned`)."""
    hours = np.asarray(rows["ts_ms"], dtype=np.int64)
    hours -= hours % BUCKET_MS
    order = np.argsort(hours, kind="stable")
    ends = [*(np.flatnonzero(np.diff(hours[order])) + 1).tolist(), len(order)] if len(order) else []
    users = np.asarray(rows["user_id"])[order]
    points = []
    for end, counts in zip(ends, analysis.cumulative_outcomes(users, credit_a[order], credit_b[order], ends)):
        # Every hour draws its bootstrap, kept or not: the kept points are those of the unthinned
        # timeline, and the report's random stream goes on as it did.
        pref = analysis.preference_of_counts(*counts, rng, 500)
        if math.isfinite(pref.delta.low):
            at = datetime.fromtimestamp((int(hours[order[end - 1]]) + BUCKET_MS) / 1000, timezone.utc)
            points.append(TimelinePoint(at=at, series=f"preference:{name}", value=pref.delta.estimate,
                                        low=pref.delta.low, high=pref.delta.high))
    return _thinned(points)


def _thinned(points: list[TimelinePoint]) -> list[TimelinePoint]:
    """At most `MAX_TIMELINE_POINTS` of `points`, evenly spread over them, the first and the last
    (the whole report) kept."""
    if len(points) <= MAX_TIMELINE_POINTS:
        return points
    keep = np.unique(np.linspace(0, len(points) - 1, MAX_TIMELINE_POINTS).round().astype(int))
    return [points[i] for i in keep]


def _interleaved_rows(path: Path, experiment: Experiment) -> dict[str, list]:
    """user_id, team, click, ts_ms, request_id, position, ranks and ranker_propensities of the
    experiment's attributed impressions (`per_user.experiment_rows`: empty if none yet; None where
    a column predates the row)."""
    columns: dict[str, list] = {name: [] for name in ("user_id", "team", CLICK, "ts_ms", *OPTIONAL_COLUMNS)}
    table = experiment_rows(path, experiment, ["user_id", "team", CLICK, "ts"], OPTIONAL_COLUMNS)
    if table is None:
        return columns
    import pyarrow.compute as pc

    present = [name for name in OPTIONAL_COLUMNS if name in table.column_names]
    table = table.filter(pc.is_valid(table["team"]))
    columns["user_id"] = table["user_id"].to_pylist()
    columns["team"] = table["team"].to_pylist()
    columns[CLICK] = [int(c or 0) for c in table[CLICK].to_pylist()]
    columns["ts_ms"] = [int(t.timestamp() * 1000) for t in table["ts"].to_pylist()]
    for name in OPTIONAL_COLUMNS:
        values = table[name].to_pylist() if name in present else [None] * table.num_rows
        columns[name] = [dict(v) if isinstance(v, list) else v for v in values]  # pyarrow maps: (key, value) pairs
    return columns


def _sum(buckets: dict[int, list[int]]) -> tuple[int, int]:
    return sum(c for c, _ in buckets.values()), sum(n for _, n in buckets.values())


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None

