"""The report's statistics against independent computations and their coverage on planted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from services.experiments import analysis


def test_wilson_matches_scipy_and_handles_no_impressions() -> None:
    for clicks, n in ((0, 10), (3, 10), (10, 10), (123, 4567)):
        ci = stats.binomtest(clicks, n).proportion_ci(method="wilson")
        got = analysis.wilson(clicks, n)
        assert (got.estimate, got.low, got.high) == pytest.approx((clicks / n, ci.low, ci.high))
    assert analysis.wilson(0, 0) == analysis.Interval(0.0, 0.0, 1.0)


def test_lift_interval_covers_the_planted_lift() -> None:
    rng = np.random.default_rng(0)
    p0, p1, n, runs = 0.10, 0.12, 20_000, 400
    covered = 0
    for _ in range(runs):
        c0, c1 = rng.binomial(n, p0), rng.binomial(n, p1)
        lift, p = analysis.relative_lift(int(c1), n, int(c0), n)
        covered += lift.low <= p1 / p0 - 1 <= lift.high
        z = (c1 / n - c0 / n) / math.sqrt((c0 + c1) / (2 * n) * (1 - (c0 + c1) / (2 * n)) * 2 / n)
        assert p == pytest.approx(2 * stats.norm.sf(abs(z)))
    assert abs(covered / runs - 0.95) < 0.035
    assert math.isnan(analysis.relative_lift(0, 100, 5, 100)[0].estimate)


def test_srm_alarms_on_a_skewed_split_only() -> None:
    assert analysis.srm_p([5000, 5050], [0.5, 0.5]) > 0.1
    assert analysis.srm_p([5000, 5400], [0.5, 0.5]) < analysis.SRM_ALPHA
    assert analysis.srm_p([3000, 7000], [0.3, 0.7]) == pytest.approx(1.0)


def _msprt_p(p_t: float, n_t: int, p_0: float, n_0: int, drop: float, d_t: float = 1.0, d_0: float = 1.0) -> float:
    """Johari et al.'s normal-mixture SPRT of `p_t - b` against 0, `b = (1 - drop) p_0`, mixing
    N(0, (drop p_0)²), written out from the paper's likelihood ratio."""
    b = (1 - drop) * p_0
    v = d_t * b * (1 - b) / n_t + d_0 * (1 - drop) ** 2 * p_0 * (1 - p_0) / n_0
    tau2 = (drop * p_0) ** 2
    ratio = stats.norm.pdf(p_t - b, 0, math.sqrt(v + tau2)) / stats.norm.pdf(p_t - b, 0, math.sqrt(v))
    return min(1.0, 1 / ratio)


def test_guardrail_p_is_small_only_past_the_allowed_drop() -> None:
    # CTR 0.16 vs 0.20: a 20% drop. Past a 10% allowance: significant; within a 30% one: not.
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.10) < 0.01
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.30) == 1.0
    # The variance at the null's boundary, not at the arm's own CTR, in the mixture's ratio.
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.10) == pytest.approx(
        _msprt_p(0.16, 10_000, 0.2, 10_000, 0.10))
    # Design effects scale each arm's variance: 20 (MovieLens-like users) leaves the same counts
    # far from a stop.
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.10, 20.0, 15.0) == pytest.approx(
        _msprt_p(0.16, 10_000, 0.2, 10_000, 0.10, 20.0, 15.0))
    assert analysis.guardrail_p(1600, 10_000, 2000, 10_000, 0.10, 20.0, 20.0) > 0.1
    # An arm without a click yet, 0 of 20 at a boundary of 0.09 (15% likely there): under 5
    # expected clicks, no verdict (the arm's own variance, 0, had given p = 1e-26).
    assert analysis.guardrail_p(0, 20, 100, 1000, 0.10) == 1.0
    assert analysis.guardrail_p(0, 60, 100, 1000, 0.10) == pytest.approx(_msprt_p(0.0, 60, 0.1, 1000, 0.10))


def test_the_design_effect_is_the_per_user_variance_over_the_binomial() -> None:
    rng = np.random.default_rng(6)
    clicks, shown = _users(rng, 400, 0.1)
    ratio, variance = analysis.ratio_of_means(clicks, shown)
    assert analysis.design_effect(clicks, shown) == pytest.approx(variance / (ratio * (1 - ratio) / shown.sum()))
    assert analysis.design_effect(clicks, shown) > 5  # heavy users with their own propensities
    one_each = rng.binomial(1, 0.1, 5000).astype(float)  # a user per impression: the binomial itself
    assert analysis.design_effect(one_each, np.ones(5000)) == pytest.approx(1.0, abs=0.01)
    assert math.isnan(analysis.design_effect(clicks[:19], shown[:19]))  # too few users
    assert math.isnan(analysis.design_effect(np.zeros(30), np.ones(30)))  # nothing clicked


def _looks(rng: np.random.Generator, ctr_t: float, effects: bool, looks: int = 50) -> bool:
    """One experiment of 4,000 heterogeneous users arriving in order, half in each arm, the arm's
    clicks at `ctr_t / 0.1` of each user's own propensity; the guardrail (10% allowed, alpha 0.01)
    looked at `looks` times, with each arm's design effect from the users so far or without any.
    Whether it stopped the arm."""
    shown = 1 + rng.poisson(20 * rng.lognormal(0.0, 1.0, 4000))
    propensity = np.clip(0.1 * rng.lognormal(-0.5, 1.0, 4000), 0, 1)
    arm = rng.random(4000) < 0.5
    propensity[arm] = np.clip(propensity[arm] * ctr_t / 0.1, 0, 1)
    clicks = rng.binomial(shown, propensity).astype(float)
    for look in range(1, looks + 1):
        upto = np.arange(4000) < 4000 * look // looks
        t, c = upto & arm, upto & ~arm
        d_t = analysis.design_effect(clicks[t], shown[t]) if effects else 1.0
        d_0 = analysis.design_effect(clicks[c], shown[c]) if effects else 1.0
        if math.isnan(d_t) or math.isnan(d_0):
            continue
        if analysis.guardrail_p(int(clicks[t].sum()), int(shown[t].sum()), int(clicks[c].sum()), int(shown[c].sum()),
                                0.10, d_t, d_0) < 0.01:
            return True
    return False


def test_the_guardrail_holds_its_level_over_many_looks_at_heterogeneous_users() -> None:
    """Looked at 50 times as users arrive: with the users' design effects, a healthy arm (A/A) is
    not stopped and one sitting exactly on the allowed drop no more often than alpha allows (the
    one-sided mixture is conservative: 0 of 200 here); the binomial variance alone stopped healthy
    arms by the dozen. An arm 40% down is still stopped."""
    rng = np.random.default_rng(7)
    runs = 200
    healthy = np.mean([_looks(rng, 0.1, effects=True) for _ in range(runs)])
    boundary = np.mean([_looks(rng, 0.09, effects=True) for _ in range(runs)])
    binomial = np.mean([_looks(rng, 0.1, effects=False) for _ in range(runs)])
    broken = np.mean([_looks(rng, 0.06, effects=True) for _ in range(runs)])
    assert healthy <= 0.01, healthy
    assert boundary <= 0.03, boundary  # alpha 0.01 plus the binomial noise of 200 runs
    assert binomial > 0.1, binomial
    assert broken > 0.8, broken


def test_preference_units_sum_rows_and_the_bootstrap_interval_covers() -> None:
    outcomes = analysis.unit_outcomes(["u1", "u1", "u2", "u3", "u4"], np.array([1, 0, 0, 2, 0.0]),
                                      np.array([0, 2, 1, 2, 0.0]))
    assert sorted(outcomes.tolist()) == [-1, -1, 0]  # u1: 1 vs 2; u2: 0 vs 1; u3 tie; u4 no clicks
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(200):
        draws = rng.choice([1, -1, 0], size=400, p=[0.35, 0.25, 0.40])
        covered += (pref := analysis.preference(draws, rng, 500)).delta.low <= 0.05 <= pref.delta.high
    assert abs(covered / 200 - 0.95) < 0.05
    assert pref.sign_p == pytest.approx(stats.binomtest(pref.wins_a, pref.wins_a + pref.wins_b).pvalue)


def _users(rng: np.random.Generator, m: int, ctr: float) -> tuple[np.ndarray, np.ndarray]:
    """m heterogeneous users: heavy-tailed impressions, click propensity lognormal around `ctr`."""
    shown = 1 + rng.poisson(20 * rng.lognormal(0.0, 1.0, m))
    propensity = np.clip(ctr * rng.lognormal(-0.5, 1.0, m), 0, 1)
    return rng.binomial(shown, propensity).astype(float), shown.astype(float)


def test_user_level_test_is_welch_with_equal_impressions_and_bootstrap_otherwise() -> None:
    rng = np.random.default_rng(2)
    shown = np.full(300, 40.0)
    c_t, c_0 = rng.binomial(40, rng.beta(2, 8, 300)).astype(float), rng.binomial(40, rng.beta(2, 9, 300)).astype(float)
    _, p = analysis.user_level_lift(c_t, shown, c_0, shown)
    welch = stats.ttest_ind(c_t / 40, c_0 / 40, equal_var=False)
    assert p == pytest.approx(2 * stats.norm.sf(abs(welch.statistic)), rel=1e-9)
    clicks, shown = _users(rng, 400, 0.1)
    ratio, variance = analysis.ratio_of_means(clicks, shown)
    assert ratio == clicks.sum() / shown.sum()
    picks = rng.integers(400, size=(4000, 400))
    boot = clicks[picks].sum(1) / shown[picks].sum(1)
    assert variance == pytest.approx(boot.var(), rel=0.1)
    assert math.isnan(analysis.user_level_lift(clicks[:1], shown[:1], clicks, shown)[1])


def test_a_a_user_level_holds_alpha_where_per_impression_does_not() -> None:
    rng = np.random.default_rng(3)
    runs, user_fp, impression_fp, covered = 400, 0, 0, 0
    for _ in range(runs):
        clicks, shown = _users(rng, 1000, 0.1)
        arm = rng.random(1000) < 0.5
        lift, p = analysis.user_level_lift(clicks[arm], shown[arm], clicks[~arm], shown[~arm])
        user_fp += p < 0.05
        covered += lift.low <= 0 <= lift.high
        c = (int(clicks[arm].sum()), int(shown[arm].sum()), int(clicks[~arm].sum()), int(shown[~arm].sum()))
        impression_fp += analysis.two_proportion_p(*c) < 0.05
    assert abs(user_fp / runs - 0.05) < 0.025
    assert abs(covered / runs - 0.95) < 0.025
    assert impression_fp / runs > 0.3  # impressions of one user are not independent draws


def test_credit_difference_is_a_t_test_over_units_with_credit() -> None:
    rng = np.random.default_rng(4)
    units = rng.integers(300, size=2000).astype(str)
    a, b = rng.poisson(0.4, 2000).astype(float), rng.poisson(0.3, 2000).astype(float)
    mean, p = analysis.credit_difference(units, a, b)
    totals = {}
    for unit, x, y in zip(units, a, b):
        s = totals.setdefault(unit, [0.0, 0.0])
        s[0], s[1] = s[0] + x, s[1] + y
    d = np.array([x - y for x, y in totals.values() if x + y > 0])
    expected = stats.ttest_1samp(d, 0.0)
    assert p == pytest.approx(expected.pvalue, rel=1e-9)
    ci = expected.confidence_interval()
    assert (mean.estimate, mean.low, mean.high) == pytest.approx((d.mean(), ci.low, ci.high))
    assert math.isnan(analysis.credit_difference(["x", "y"], np.zeros(2), np.zeros(2))[1])  # no unit with credit


def test_small_and_degenerate_samples_give_no_interval_rather_than_a_false_one() -> None:
    # Five users who all prefer A: the sign test says p = 0.0625; a bootstrap interval said [0.5, 0.5].
    few = analysis.preference(np.ones(5, dtype=np.int64), np.random.default_rng(0))
    assert few.delta.estimate == 0.5 and math.isnan(few.delta.low) and math.isnan(few.delta.high)
    assert few.sign_p == pytest.approx(stats.binomtest(5, 5).pvalue)
    # Three users with the same credit difference: the t-test is undefined, not p = 0.
    same, p = analysis.credit_difference(["u1", "u2", "u3"], np.ones(3), np.zeros(3))
    assert same.estimate == 1.0 and math.isnan(same.low) and math.isnan(p)
    # An arm without a click: the lift is undefined, the two-proportion test is not.
    lift, p = analysis.relative_lift(0, 1000, 100, 1000)
    assert math.isnan(lift.estimate) and p == pytest.approx(analysis.two_proportion_p(0, 1000, 100, 1000)) and p < 1e-20
    # Marginalised credits equal up to rounding are a tie, for the sign test and the count credit.
    a, b = np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1])  # 0.6 against 0.6000000000000001
    assert analysis.unit_outcomes(["u", "u", "u"], a, b).tolist() == [0]
    users = [f"u{n // 3}" for n in range(60)]
    difference, p = analysis.credit_difference(users, np.tile(a, 20), np.tile(b, 20))
    assert difference.estimate == 0.0 and math.isnan(p)  # all ties: no variance, no t-test
    # Every unit with the same outcome: a resample can only repeat it, so no interval.
    same = analysis.preference(np.zeros(40, dtype=np.int64), np.random.default_rng(0))
    assert same.delta.estimate == 0.0 and math.isnan(same.delta.low)


def _delta_method_p(clicks_t: np.ndarray, shown_t: np.ndarray, clicks_0: np.ndarray, shown_0: np.ndarray) -> float:
    """The per-user z-test written out: each arm's CTR `R = Σc / Σn` with the variance of its
    linearisation `c − R n` over users, `Var(R) = s²(c − R n) / (m n̄²)`."""
    def ratio_and_variance(clicks: np.ndarray, shown: np.ndarray) -> tuple[float, float]:
        ratio = clicks.sum() / shown.sum()
        return ratio, np.var(clicks - ratio * shown, ddof=1) / (len(shown) * shown.mean() ** 2)

    (r_t, v_t), (r_0, v_0) = ratio_and_variance(clicks_t, shown_t), ratio_and_variance(clicks_0, shown_0)
    return float(2 * stats.norm.sf(abs(r_t - r_0) / math.sqrt(v_t + v_0)))


def test_the_user_level_p_value_stands_where_an_arm_has_no_click() -> None:
    """z = (R_t − R_0) / sqrt(V_t + V_0) needs only a variance: an arm without a click has none of
    its own, the other arm's carries the test. Only the lift (a ratio over 0, or a log of 0) is left out."""
    rng = np.random.default_rng(6)
    shown = 1.0 + rng.poisson(12, 80)
    clicks = rng.binomial(shown.astype(int), 0.15).astype(float)
    none = np.zeros(60)
    for treatment, control in (((clicks, shown), (none, shown[:60])), ((none, shown[:60]), (clicks, shown))):
        lift, p = analysis.user_level_lift(*treatment, *control)
        assert p == pytest.approx(_delta_method_p(*treatment, *control), rel=1e-9) and 0 < p < 1e-6
        assert math.isnan(lift.estimate) and math.isnan(lift.low) and math.isnan(lift.high)
    _, p = analysis.user_level_lift(none, shown[:60], none, shown[:60])  # no variance at all: no test
    assert math.isnan(p)
    _, p = analysis.user_level_lift(clicks, shown, clicks[:1], shown[:1])  # a single user: no variance of its own arm
    assert math.isnan(p)


def test_the_count_credit_has_no_p_value_when_every_user_has_the_same_difference() -> None:
    """A t-test with zero variance is undefined, whatever the common difference, 0 included."""
    users = [f"u{n}" for n in range(30)]
    ones = np.ones(30)
    for a, b, mean in ((2 * ones, ones, 1.0), (ones, ones, 0.0), (ones, 3 * ones, -2.0)):
        difference, p = analysis.credit_difference(users, a, b)
        assert difference.estimate == mean and math.isnan(difference.low) and math.isnan(difference.high)
        assert math.isnan(p), (mean, p)
    for few in (0, 1):  # no units or one with credit: nothing to estimate a variance from
        assert math.isnan(analysis.credit_difference(users[:few], ones[:few], np.zeros(few))[1])
