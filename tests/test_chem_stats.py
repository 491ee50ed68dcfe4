"""Pre-registered chemistry statistics (mdkl.chem.stats) against hand-computed and scipy values."""

import math

import numpy as np
import pytest
from scipy import stats

from mdkl.chem import stats as chem_stats
from mdkl.stats import paired
from mdkl.chem.stats import (PreRegistration, log_yield_ratios, mara_activity, mara_activity_verdict,
                             min_detectable_effect, noninferiority, paired_log_ratio_test, paired_power, plan_seeds,
                             primary_verdict, seeds_for_power, welch_min_detectable_effect)


def test_paired_test_matches_scipy_one_sided_ttest():
    ym, yr = [110, 120, 105, 90], [100, 108, 95, 92]
    out = paired_log_ratio_test(ym, yr)
    d = np.log(np.array(ym) / np.array(yr))
    ref = stats.ttest_1samp(d, 0.0, alternative="greater")
    assert out["n"] == 4 and out["df"] == 3
    assert out["t"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
    assert out["ratio"] == pytest.approx(math.exp(d.mean()))
    lower = d.mean() - stats.t.ppf(0.95, 3) * d.std(ddof=1) / 2
    assert out["ratio_lower"] == pytest.approx(math.exp(lower))
    assert out["mde"] == pytest.approx(min_detectable_effect(d.std(ddof=1), 4))


def test_identical_pairs_have_no_spread():
    out = paired_log_ratio_test([10, 20], [10, 20])
    assert out["p"] == 1.0 and math.isnan(out["mde"])
    assert paired_log_ratio_test([20, 40], [10, 20])["p"] == 0.0


def test_power_and_seeds_by_hand():
    # normal approximation by hand: n ~ ((1.6449 + 0.8416) * 0.33 / log 1.25)^2 = 13.5; the exact
    # noncentral t needs a little more
    delta = math.log(1.25)
    n_normal = ((stats.norm.ppf(0.95) + stats.norm.ppf(0.8)) * 0.33 / delta) ** 2
    assert n_normal == pytest.approx(13.52, abs=0.01)
    n = seeds_for_power(0.33, 0.25, minimum=2)
    assert n == 15 and paired_power(0.25, 0.33, n) >= 0.8 > paired_power(0.25, 0.33, n - 1)
    ref = stats.nct.sf(stats.t.ppf(0.95, n - 1), n - 1, delta / (0.33 / math.sqrt(n)))
    assert paired_power(0.25, 0.33, n) == pytest.approx(ref)
    assert seeds_for_power(0.01) == 5  # the floor of 5 seeds
    # the minimum detectable effect inverts the power
    mde = min_detectable_effect(0.33, n)
    assert paired_power(mde, 0.33, n) == pytest.approx(0.8, abs=1e-6) and mde < 0.25


def test_welch_mde_reproduces_the_three_seed_figure():
    # sd of log yield 0.33 per arm, 3 seeds each: +127% at 80% power
    assert welch_min_detectable_effect(0.33, 3, 0.33, 3) == pytest.approx(1.27, abs=0.01)


def test_noninferiority_by_hand():
    a, b = [0.80, 0.82, 0.79, 0.81], [0.81, 0.82, 0.80, 0.80]
    out = noninferiority(a, b, 0.02)
    d = np.array(a) - np.array(b)
    ref = stats.ttest_1samp(d, -0.02, alternative="greater")
    assert out["p"] == pytest.approx(ref.pvalue) and out["non_inferior"] == (ref.pvalue < 0.05)
    rel = noninferiority([9, 10, 11], [10, 10, 10], 0.1, relative=True)
    assert rel["margin"] == pytest.approx(1.0) and rel["min_margin"] > 0


def test_activity_verdict():
    act = {"batches": 100, "batches_with_2plus": 30, "augmented": 900}
    idle = {"batches": 100, "batches_with_2plus": 1, "augmented": 16}
    assert mara_activity_verdict([act, act, idle], 10_000) == "tested"
    assert mara_activity_verdict([idle, idle, act], 10_000) == "not tested"


@pytest.mark.parametrize("call, match", [
    (lambda: log_yield_ratios([1, 2], [1]), "equal, non-zero lengths"),
    (lambda: log_yield_ratios([], []), "equal, non-zero lengths"),
    (lambda: log_yield_ratios([0, 2], [1, 2]), "pseudo > 0"),
    (lambda: log_yield_ratios([np.nan, 2], [1, 2]), "NaN"),
    (lambda: log_yield_ratios([-1, 2], [1, 2]), ">= 0"),
    (lambda: paired_log_ratio_test([2], [1]), "needs >= 2"),
    (lambda: seeds_for_power(0.0), "positive, finite sd"),
    (lambda: seeds_for_power(float("nan")), "positive, finite sd"),
    (lambda: seeds_for_power(50.0, maximum=20), "more than 20 seeds"),
    (lambda: min_detectable_effect(0.3, 1), "n >= 2"),
    (lambda: noninferiority([1, 2], [1], 0.1), "equal lengths"),
    (lambda: noninferiority([1, 2], [1, 2], -0.1), "margin"),
    (lambda: mara_activity_verdict([], 100), ">= 1 MARA run"),
    (lambda: mara_activity_verdict([{"batches": 3}], 100), "run_rl"),
    (lambda: PreRegistration(alpha=0.6), "alpha"),
    (lambda: PreRegistration(min_seeds=1), "min_seeds"),
    (lambda: PreRegistration(tau=1.5), "tau"),
    (lambda: paired.t_power(0.1, 0.0, 3), "positive standard error"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plan_seeds_assumes_independent_pairs_and_caps():
    pre = PreRegistration()
    p = plan_seeds(0.2, pre, cap=6)
    assert p["sd_diff"] == pytest.approx(math.sqrt(2) * 0.2)
    assert p["n_powered"] == seeds_for_power(p["sd_diff"], 0.25) and p["n_run"] == min(p["n_powered"], 6)
    assert p["mde_run"] == pytest.approx(min_detectable_effect(p["sd_diff"], p["n_run"]))
    small = plan_seeds(0.01, pre, cap=100)
    assert small["n_powered"] == pre.min_seeds == small["n_run"]  # the floor of 5 seeds
    with pytest.raises(ValueError, match="cap=1"):
        plan_seeds(0.2, pre, cap=1)
    with pytest.raises(ValueError, match="positive, finite sd"):
        plan_seeds(0.0, pre, cap=6)


def test_primary_verdict():
    pre = PreRegistration()
    big = paired_log_ratio_test([130, 126, 128, 131, 125], [100, 101, 99, 100, 102])
    assert primary_verdict(big, "tested", pre) == "holds"
    assert primary_verdict(big, "not tested", pre) == "not tested (MARA inactive)"
    null = paired_log_ratio_test([100, 99, 101, 100, 100], [100, 100, 100, 100, 100])
    assert null["mde"] < 0.25 and primary_verdict(null, "tested", pre) == "FAILS"  # powered, +25% ruled out
    noisy = paired_log_ratio_test([50, 200, 90, 150, 60], [100, 100, 100, 100, 100])
    assert noisy["mde"] > 0.25 and primary_verdict(noisy, "tested", pre) == "not tested (underpowered)"
    with pytest.raises(ValueError, match="activity="):
        primary_verdict(big, "yes", pre)


def test_mara_activity_per_run():
    a = {"batches": 10, "batches_with_2plus": 4, "augmented": 50, "mean_augmentation": -0.01}
    assert mara_activity(a, 640) == {"batches_2plus_frac": 0.4, "changed_frac": 50 / 640, "mean_augmentation": -0.01}
    with pytest.raises(ValueError, match="anchors"):
        mara_activity({"batches": 0}, 640)
