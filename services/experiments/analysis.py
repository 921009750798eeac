"""The statistics of an experiment's report: pure functions over counts.

A/B (per arm: impressions `n`, clicks `c`, CTR `p = c / n`):
- CTR interval: Wilson score interval (Wilson, JASA 1927) at 95%.
- Relative lift of arm `t` over the first arm `0`: `p_t / p_0 - 1`, with the delta-method interval
  on the log ratio, `se = sqrt((1 - p_t)/c_t + (1 - p_0)/c_0)` (Katz et al., Biometrics 1978), and
  the two-proportion z-test's two-sided p-value (pooled variance).
- Sample-ratio mismatch: Pearson's chi-square of the arms' counts of the randomised unit, users,
  against their shares (alarm at p < 0.001; Fabijan et al., KDD 2019). Not of impressions: a user
  brings many, and the chi-square of impressions alarmed on two thirds of healthy simulated splits.
- Guardrail: one-sided test of `p_t < b`, `b = (1 - X) p_0`, looked at again and again (every
  `experiments.guardrail_interval_s`, every learner step), so always valid (mSPRT: Johari, Pekelis
  & Walsh, "Always valid inference", 2017/2022): with `d = p_t − b`, its variance at the boundary
  `V = D_t b (1 − b) / n_t + D_0 (1 − X)^2 p_0 (1 − p_0) / n_0` (a score test's choice, as
  Farrington & Manning, Stat. Med. 1990, restrict the variance to the null) and a normal mixture
  of effects of scale `τ = X p_0` (the allowed drop), `p = 1 / Λ`, `Λ = sqrt(V / (V + τ²))
  exp(d² τ² / (2 V (V + τ²)))` where `d < 0`. Rejecting when `p < α` at any look holds `α`
  over all looks (Ville's inequality). `D` is each arm's design effect, the variance of its
  per-user CTR over the impressions' binomial variance (`design_effect`): a user's impressions are
  not independent (MovieLens 100k's users: `D` = 27). The fixed-horizon z on impression counts,
  looked at 50 times, stopped 10–39% of simulated healthy arms and 74–82% of arms on the boundary
  at α = 0.01 (benchmarks/guardrail.py). No stop before `GUARDRAIL_MIN_EXPECTED` clicks are
  expected at the boundary: with the arm's own `p_t`, an arm without a click yet had no variance.

The impression-level tests treat impressions as independent; a user's impressions are not, so
once users differ in click propensity or activity these intervals are too narrow. Users are the
unit that was randomised, so `user_level_lift` is the honest A/B test: the CTR `R = Σc / Σn`
over an arm's users with the delta-method variance of a ratio of means (Deng, Knoblich & Lu,
"Applying the delta method in metric analytics", KDD 2018), the z-test of `R_t − R_0` and the
lift's interval on `log R_t − log R_0`.

Interleaving: per unit (user, or request), each team's credited clicks; a unit prefers the team
with more credit, else ties. Preference `Δ = (w_A + t/2) / (w_A + w_B + t) - 1/2` over units with
any credit (Chapelle et al., "Large-scale validation and analysis of interleaved search
evaluation", TOIS 2012), a percentile bootstrap interval over units, and the sign test
(two-sided binomial test of `w_A` among `w_A + w_B`). `credit_difference` keeps every click
(Chapelle et al.'s count credit, not only the winner): the mean per-unit difference
`d = c_A − c_B` with its t interval and the one-sample t-test of `E[d] = 0`.

The other tests are fixed-horizon: looking again and again until p < 0.05 inflates the false-positive
rate, so the report says so and the sample size should be fixed in advance (benchmarks give it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

Z95 = 1.959963984540054
GUARDRAIL_MIN_EXPECTED = 5.0  # clicks expected at the guardrail's boundary before a stop is considered
MIN_BOOTSTRAP_UNITS = 20  # fewer units: no preference interval (a bootstrap of a few collapses)
TIE_TOLERANCE = 1e-9  # relative: marginalised (float) credits this close are a tie
SRM_ALPHA = 0.001
#: An arm's design effect until its per-user rows give its own: MovieLens 100k's (a rating of 4 or
#: more as the click, each rating an impression, users the units) is 27.1 over its 943 users
#: (benchmarks/guardrail.py prints it); resamples of 5-20% of them have medians of 19.5-24.
DEFAULT_DESIGN_EFFECT = 20.0
MIN_DESIGN_EFFECT_USERS = 20  # fewer users: their variance says too little, the default is used


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


def wilson(clicks: int, n: int, z: float = Z95) -> Interval:
    """CTR with its Wilson score interval; (0, 0, 1) without impressions."""
    if n <= 0:
        return Interval(0.0, 0.0, 1.0)
    p = clicks / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def relative_lift(c_t: int, n_t: int, c_0: int, n_0: int, z: float = Z95) -> tuple[Interval, float]:
    """(lift of t over 0 with its interval, two-sided p-value of the two-proportion z-test); the
    lift is NaN where a CTR is 0, the p-value only where an arm has no impressions."""
    if min(n_t, n_0) <= 0:
        return Interval(math.nan, math.nan, math.nan), math.nan
    if min(c_t, c_0) <= 0:
        return Interval(math.nan, math.nan, math.nan), two_proportion_p(c_t, n_t, c_0, n_0)
    p_t, p_0 = c_t / n_t, c_0 / n_0
    log_ratio = math.log(p_t / p_0)
    se = math.sqrt((1 - p_t) / c_t + (1 - p_0) / c_0)
    lift = Interval(math.exp(log_ratio) - 1, math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1)
    return lift, two_proportion_p(c_t, n_t, c_0, n_0)


def two_proportion_p(c_t: int | np.ndarray, n_t: int | np.ndarray, c_0: int | np.ndarray,
                     n_0: int | np.ndarray) -> float | np.ndarray:
    """Two-sided p-value of the pooled two-proportion z-test (vectorised over arrays)."""
    pooled = (c_t + c_0) / (n_t + n_0)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (c_t / n_t - c_0 / n_0) / np.where(se > 0, se, 1), 0.0)
    p = 2 * stats.norm.sf(np.abs(z))
    return float(p) if np.ndim(p) == 0 else p


def srm_p(counts: Sequence[int], shares: Sequence[float]) -> float:
    """p-value of Pearson's chi-square of `counts` against the expected `shares`; 1 without counts."""
    total = sum(counts)
    if total == 0:
        return 1.0
    expected = np.asarray(shares, dtype=float) / sum(shares) * total
    return float(stats.chisquare(np.asarray(counts, dtype=float), expected).pvalue)


def guardrail_p(c_t: int, n_t: int, c_0: int, n_0: int, max_drop: float, design_t: float = 1.0,
                design_0: float = 1.0) -> float:
    """Always-valid one-sided p-value of H0 `p_t >= (1 - max_drop) p_0` (mSPRT, module docstring),
    the arms' binomial variances inflated by their design effects: small when the arm fell
    further; 1 until `GUARDRAIL_MIN_EXPECTED` clicks are expected at the boundary."""
    if n_t <= 0 or n_0 <= 0:
        return 1.0
    p_t, p_0 = c_t / n_t, c_0 / n_0
    keep = 1 - max_drop
    boundary = keep * p_0
    if n_t * boundary < GUARDRAIL_MIN_EXPECTED or p_t >= boundary:
        return 1.0
    variance = design_t * boundary * (1 - boundary) / n_t + design_0 * keep * keep * p_0 * (1 - p_0) / n_0
    tau2 = (max_drop * p_0) ** 2  # the boundary is above 0 here: so are the variance and tau
    d = p_t - boundary
    log_ratio = 0.5 * math.log(variance / (variance + tau2)) + d * d * tau2 / (2 * variance * (variance + tau2))
    return min(1.0, math.exp(-log_ratio))


def design_effect(clicks: np.ndarray, shown: np.ndarray) -> float:
    """The variance of the per-user CTR `Σc / Σn` (`ratio_of_means`, users the units) over the
    binomial variance `R (1 − R) / Σn` that counting impressions assumes, at least 1; NaN below
    `MIN_DESIGN_EFFECT_USERS` users or where every impression or none was clicked."""
    if len(shown) < MIN_DESIGN_EFFECT_USERS:
        return math.nan
    ratio, variance = ratio_of_means(clicks, shown)
    binomial = ratio * (1 - ratio) / float(np.sum(shown))
    if not binomial > 0:
        return math.nan
    return max(1.0, variance / binomial)


def ratio_of_means(clicks: np.ndarray, shown: np.ndarray) -> tuple[float, float]:
    """CTR `R = Σc / Σn` over users and its variance with users as the independent units, by the
    delta method: `Var(R) ≈ (s_c² − 2 R s_cn + R² s_n²) / (m · n̄²)`, sample (co)variances over
    the `m` users. (NaN, NaN) with fewer than two users or no impressions."""
    clicks, shown = np.asarray(clicks, dtype=float), np.asarray(shown, dtype=float)
    m = len(shown)
    if m < 2 or shown.sum() <= 0:
        return math.nan, math.nan
    ratio = clicks.sum() / shown.sum()
    cov = np.cov(clicks, shown)  # ddof 1
    variance = (cov[0, 0] - 2 * ratio * cov[0, 1] + ratio * ratio * cov[1, 1]) / (m * shown.mean() ** 2)
    return float(ratio), float(variance)


def user_level_lift(clicks_t: np.ndarray, shown_t: np.ndarray, clicks_0: np.ndarray, shown_0: np.ndarray,
                    z: float = Z95) -> tuple[Interval, float]:
    """(lift of arm t's CTR over arm 0's with its interval, two-sided p-value), users as units:
    per user of each arm its clicks and impressions. `z = (R_t − R_0) / sqrt(V_t + V_0)`; the
    interval is `exp(log R_t − log R_0 ± z sqrt(V_t / R_t² + V_0 / R_0²)) − 1`. As `relative_lift`:
    the lift is NaN where a CTR is 0, the p-value only where an arm has fewer than two users or
    neither varies (`V_t + V_0 = 0`)."""
    r_t, v_t = ratio_of_means(clicks_t, shown_t)
    r_0, v_0 = ratio_of_means(clicks_0, shown_0)
    if not v_t + v_0 > 0:  # NaN too: an arm with fewer than two users or no impressions
        return Interval(math.nan, math.nan, math.nan), math.nan
    p = float(2 * stats.norm.sf(abs(r_t - r_0) / math.sqrt(v_t + v_0)))
    if not (r_t > 0 and r_0 > 0):
        return Interval(math.nan, math.nan, math.nan), p
    log_ratio, se = math.log(r_t / r_0), math.sqrt(v_t / r_t**2 + v_0 / r_0**2)
    return Interval(r_t / r_0 - 1, math.exp(log_ratio - z * se) - 1, math.exp(log_ratio + z * se) - 1), p


@dataclass(frozen=True)
class Preference:
    """Interleaving outcome of team A against team B over units (users or requests)."""

    wins_a: int
    wins_b: int
    ties: int
    delta: Interval  # Δ in [-1/2, 1/2]: > 0 means A is preferred
    sign_p: float


def unit_outcomes(units: Sequence[str] | np.ndarray, credit_a: np.ndarray, credit_b: np.ndarray) -> np.ndarray:
    """Per unit with any credit: +1 (A has more credit), -1 (B), 0 (tie). `units` names the unit
    of each row (a user id, or a request id); rows of a unit are summed first."""
    return np.sign(_unit_differences(units, credit_a, credit_b)).astype(np.int64)


def _unit_differences(units: Sequence[str] | np.ndarray, credit_a: np.ndarray, credit_b: np.ndarray) -> np.ndarray:
    """`c_A − c_B` per unit with any credit, rows of a unit summed; 0 where the two are equal up to
    `TIE_TOLERANCE` (marginalised credits are sums of floats)."""
    names, index = np.unique(np.asarray(units), return_inverse=True)
    a = np.bincount(index, weights=credit_a, minlength=len(names))
    b = np.bincount(index, weights=credit_b, minlength=len(names))
    return _tied(a, b)[(a + b) > 0]


def _tied(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a − b` of units' summed credits, 0 where they are equal up to `TIE_TOLERANCE`."""
    return np.where(np.abs(a - b) <= TIE_TOLERANCE * np.maximum(1.0, a + b), 0.0, a - b)


def cumulative_outcomes(units: Sequence[str] | np.ndarray, credit_a: np.ndarray, credit_b: np.ndarray,
                        ends: Sequence[int]) -> Iterator[tuple[int, int, int]]:
    """(units preferring A, preferring B, tied), as `unit_outcomes` counts them, of the rows before
    each of `ends` in turn (increasing): each row is added to its unit's sums once, and only the
    units it touches are classified again, so all the counts cost about the rows' number."""
    names, index = np.unique(np.asarray(units), return_inverse=True)
    a, b = np.zeros(len(names)), np.zeros(len(names))
    outcome = np.full(len(a), 3)  # per unit: 0 prefers A, 1 prefers B, 2 tie, 3 no credit yet
    counts = np.bincount(outcome, minlength=4)
    start = 0
    for end in ends:
        rows = index[start:end]
        np.add.at(a, rows, credit_a[start:end])
        np.add.at(b, rows, credit_b[start:end])
        touched = np.unique(rows)
        counts -= np.bincount(outcome[touched], minlength=4)
        difference = _tied(a[touched], b[touched])
        outcome[touched] = np.select([a[touched] + b[touched] <= 0, difference > 0, difference < 0], [3, 0, 1], 2)
        counts += np.bincount(outcome[touched], minlength=4)
        start = end
        yield int(counts[0]), int(counts[1]), int(counts[2])


def preference(outcomes: np.ndarray, rng: np.random.Generator, resamples: int = 2000) -> Preference:
    """Δ with its 95% percentile-bootstrap interval over units (NaN below `MIN_BOOTSTRAP_UNITS` or
    when every unit has the same outcome: five units that all prefer A gave [0.5, 0.5] where the
    sign test says p = 0.06), and the sign test's p-value."""
    wins_a, wins_b = int((outcomes > 0).sum()), int((outcomes < 0).sum())
    return preference_of_counts(wins_a, wins_b, int(len(outcomes) - wins_a - wins_b), rng, resamples)


def preference_of_counts(wins_a: int, wins_b: int, ties: int, rng: np.random.Generator,
                         resamples: int = 2000) -> Preference:
    """`preference` of units of which `wins_a` prefer A, `wins_b` B and `ties` neither."""
    units = wins_a + wins_b + ties
    sign_p = float(stats.binomtest(wins_a, wins_a + wins_b, 0.5).pvalue) if wins_a + wins_b else 1.0
    delta = (wins_a + ties / 2) / units - 0.5 if units else 0.0
    if units < MIN_BOOTSTRAP_UNITS or max(wins_a, wins_b, ties) == units:  # a resample could only repeat it
        return Preference(wins_a, wins_b, ties, Interval(delta, math.nan, math.nan), sign_p)
    # Units are exchangeable and each is one of three outcomes: a bootstrap resample is a
    # multinomial draw of the three counts.
    draws = rng.multinomial(units, [wins_a / units, wins_b / units, ties / units], size=resamples)
    deltas = (draws[:, 0] + draws[:, 2] / 2) / units - 0.5
    low, high = np.percentile(deltas, [2.5, 97.5])
    return Preference(wins_a, wins_b, ties, Interval(delta, float(low), float(high)), sign_p)


def credit_difference(units: Sequence[str] | np.ndarray, credit_a: np.ndarray, credit_b: np.ndarray) -> tuple[Interval, float]:
    """(mean per-unit credit difference `c_A − c_B` over units with any credit, with its 95% t
    interval; two-sided p-value of the one-sample t-test); rows of a unit are summed first. No
    interval and a NaN p-value below two units or where every unit has the same difference (all
    ties included): the t-test is undefined without variance (the sign test still speaks)."""
    d = _unit_differences(units, credit_a, credit_b)
    mean = float(d.mean()) if len(d) else 0.0
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    if se == 0:
        return Interval(mean, math.nan, math.nan), math.nan
    half = float(stats.t.ppf(0.975, len(d) - 1)) * se
    return Interval(mean, mean - half, mean + half), float(2 * stats.t.sf(abs(mean) / se, len(d) - 1))
