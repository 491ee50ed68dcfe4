"""Pre-registered chemistry statistics (mdkl.chem.stats) against hand-computed and scipy values."""

import math

import numpy as np
import pytest
from scipy import stats

from mdkl.chem import stats as chem_stats
from mdkl.stats import paired
from mdkl.chem.stats import (PreRegistration, log_yield_ratios, mara_activity, mara_activity_verdict,
                             min_detectable_effect, noninferiority, paired_log_ratio_test, paired_power, plan_seeds,
                             primary_verdict, seeds_for_power, control_trained, acted_enough, welch_min_detectable_effect)


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
    two_sided = stats.t.interval(0.90, 3, loc=d.mean(), scale=d.std(ddof=1) / 2)
    assert (out["lower"], out["upper"]) == pytest.approx(two_sided)
    assert out["ratio_upper"] == pytest.approx(math.exp(two_sided[1]))
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
    """The rule set on the log scale, gated by the planned MDE (not the measured one)."""
    big = paired_log_ratio_test([140, 136, 138, 141, 135], [100, 101, 99, 100, 102])
    assert primary_verdict(big, 0.36, 0.2, True, True) == "holds"
    assert primary_verdict(big, 0.36, 0.2, False, True) == "not tested (did not act)"
    assert primary_verdict(big, 0.36, 0.2, True, False) == "not tested (control did not train)"
    assert primary_verdict(big, 0.36, 0.5, True, True) == "not tested (underpowered)"  # planned MDE > paper's gain
    small = paired_log_ratio_test([111, 109, 110, 112, 108], [100, 101, 99, 100, 102])
    assert primary_verdict(small, 0.36, 0.2, True, True) == "holds, smaller than the paper's"
    null = paired_log_ratio_test([100, 99, 101, 100, 100], [100, 100, 100, 100, 100])
    assert primary_verdict(null, 0.36, 0.2, True, True) == "FAILS"  # powered, +36% ruled out
    noisy = paired_log_ratio_test([50, 200, 90, 150, 60], [100, 100, 100, 100, 100])
    assert primary_verdict(noisy, 0.36, 0.2, True, True) == "inconclusive"
    with pytest.raises(ValueError, match="pass paired_log_ratio_test"):
        primary_verdict({"mean": 0.1}, 0.36, 0.2, True, True)
    with pytest.raises(ValueError, match="positive paper gain"):
        primary_verdict(big, -0.1, 0.2, True, True)


def test_control_trained_and_acted_enough():
    assert control_trained([0.1, 0.2, 0.15], [0.5, 0.6, 0.55])["trained"]
    assert not control_trained([0.5, 0.2, 0.15], [0.1, 0.25, 0.1])["trained"]
    assert control_trained([0.1], [0.2])["trained"] and not control_trained([0.2], [0.1])["trained"]
    with pytest.raises(ValueError, match="one first and one last"):
        control_trained([0.1, 0.2], [0.3])
    pre = PreRegistration()
    assert acted_enough([0.06, 0.1, 0.0], [0.2, 0.3, 0.0], pre)
    assert not acted_enough([0.06, 0.01, 0.0], [0.2, 0.3, 0.0], pre)
    with pytest.raises(ValueError, match="both shares"):
        acted_enough([0.1], [0.1, 0.2], pre)


def _runs_table(mara_gain=1.4, seeds=6, changed=0.1, rise=0.3):
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = []
    for t in ("synth", "amide"):
        for s in range(seeds):
            base = 1000 * rng.lognormal(0, 0.1)
            for arm, y, ch in (("REINVENT", base, 0.0), ("MARA", base * mara_gain * rng.lognormal(0, 0.05), changed)):
                rows.append({"task": t, "arm": arm, "seed": s, "screen": 0.85, "yield": round(y), "changed_frac": ch,
                             "batches_2plus_frac": 0.5 if ch else 0.0, "reward_first": 0.2,
                             "reward_last": 0.2 + rise + 0.01 * s})
                rows.append({**rows[-1], "screen": 0.8, "yield": round(y * 2)})
    return pd.DataFrame(rows)


def test_primary_tests_from_the_per_run_table():
    from mdkl.chem.stats import paper_gain, primary_statement, primary_tests

    sd = {"synth": 0.1, "amide": 0.1}
    out = primary_tests(_runs_table(), sd).set_index("task")
    assert list(out.verdict) == ["holds", "holds"]
    assert (out.p_holm >= out.p).all() and out.n.tolist() == [6, 6]
    assert out.loc["synth", "paper_gain"] == pytest.approx(paper_gain("synth")) == pytest.approx(2196 / 1614 - 1)
    assert set(primary_tests(_runs_table(changed=0.0), sd).verdict) == {"not tested (did not act)"}
    assert set(primary_tests(_runs_table(rise=-0.3), sd).verdict) == {"not tested (control did not train)"}
    assert set(primary_tests(_runs_table(), {"synth": 0.5, "amide": 0.5}).verdict) == {"not tested (underpowered)"}
    assert set(primary_tests(_runs_table(mara_gain=1.1), sd).verdict) == {"holds, smaller than the paper's"}
    assert "raises the unique-hit yield" in primary_statement("SYNTH")
    with pytest.raises(ValueError, match="lacks columns"):
        primary_tests(_runs_table().drop(columns="reward_first"), sd)
    # a numerically failed run drops its seed's pair (never averaged in); the count is reported
    runs = _runs_table().assign(numeric_failure=False)
    assert out.failed_seeds.tolist() == [0, 0]
    bad = (runs.task == "synth") & (runs.seed == runs.seed.min()) & (runs.arm == "MARA")
    runs.loc[bad, ["numeric_failure", "yield"]] = [True, 10**6]
    f = primary_tests(runs, sd).set_index("task")
    assert f.loc["synth", "n"] == 5 and f.loc["synth", "failed_seeds"] == 1 and f.loc["amide", "n"] == 6
    assert f.loc["synth", "ratio"] == pytest.approx(out.loc["synth", "ratio"], rel=0.2)  # the 10**6 never enters
    with pytest.raises(ValueError, match="no planning sd"):
        primary_tests(_runs_table(), {"synth": 0.1})


def test_mara_activity_per_run():
    a = {"batches": 10, "batches_with_2plus": 4, "augmented": 50, "mean_augmentation": -0.01}
    assert mara_activity(a, 640) == {"batches_2plus_frac": 0.4, "changed_frac": 50 / 640, "mean_augmentation": -0.01}
    with pytest.raises(ValueError, match="anchors"):
        mara_activity({"batches": 0}, 640)


def test_notebook_knobs_are_checked_and_typed():
    from mdkl.chem.stats import SetupError, check_knobs

    ok = dict(seed=0, max_seeds=None, reward_calls=None, claim_calls=1_000, tau=0.85, sigma=128.0, batch_size=64,
              lr=None)
    assert check_knobs(**ok) == ok
    typed = check_knobs(**{**ok, "sigma": 128, "tau": 1, "max_seeds": 6.0, "reward_calls": 2000, "lr": 1e-4})
    assert typed["sigma"] == 128.0 and isinstance(typed["sigma"], float)  # -p sigma 128 keys the runs as 128.0
    assert isinstance(typed["tau"], float) and typed["max_seeds"] == 6 and isinstance(typed["max_seeds"], int)
    for bad, match in [({"sigma": -1.0}, "sigma = -1.0: DAP's sigma"), ({"sigma": float("inf")}, "sigma"),
                       ({"tau": 0.0}, r"tau in \(0, 1\]"), ({"tau": 1.2}, "MARA never acts"),
                       ({"max_seeds": 1}, ">= 2 seeds"), ({"batch_size": 1}, "batch_size = 1"),
                       ({"reward_calls": 10}, "at least one batch"), ({"claim_calls": 0}, "claim_calls"),
                       ({"seed": -1}, "seed = -1"), ({"seed": 1.5}, "integer"), ({"lr": 0}, "positive"),
                       ({"batch_size": True}, "integer"), ({"tau": "0.8"}, "tau")]:
        with pytest.raises(SetupError, match=match):
            check_knobs(**{**ok, **bad})
    assert issubclass(SetupError, ValueError)
    assert SetupError("run `make x` first")._render_traceback_() == ["SetupError: run `make x` first"]  # one line


def test_evaluation_seeds_avoid_the_calibration_seeds():
    from mdkl.chem.stats import SetupError, evaluation_seeds

    assert evaluation_seeds(0, 6, (1000, 1001, 1002)) == [0, 1, 2, 3, 4, 5]
    assert evaluation_seeds(1003, 2, (1000, 1001, 1002)) == [1003, 1004]
    with pytest.raises(SetupError, match=r"seeds \[1000, 1001\] were the calibration's"):
        evaluation_seeds(998, 4, (1000, 1001, 1002))
