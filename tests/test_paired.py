"""Paired comparisons (mdkl.stats.paired): differences matched by prompt (and seed), the two-way paired
bootstrap, the minimum detectable effect against hand-computed values, the paper's effect on our
scale, and the four verdicts."""

import math

import numpy as np
import pandas as pd
import pytest

from mdkl.stats import paired
from mdkl.tasks import creative_design


def test_paired_differences_match_units_and_name_the_fix():
    a = pd.DataFrame({"prompt_id": [2, 0, 1], "r_out": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"prompt_id": [0, 1, 2], "r_out": [2.5, 3.0, 0.0]})
    d = paired.paired_differences(a, b, "r_out")
    assert d.prompt_id.tolist() == [0, 1, 2] and d["diff"].tolist() == [0.5, 0.0, -1.0]
    with pytest.raises(ValueError, match="same prompts"):
        paired.paired_differences(a, b.iloc[:2], "r_out")
    with pytest.raises(ValueError, match="one row per unit"):
        paired.paired_differences(pd.concat([a, a]), b, "r_out")
    with pytest.raises(ValueError, match="NaN"):
        paired.paired_differences(a.assign(r_out=[1.0, np.nan, 2.0]), b, "r_out")
    with pytest.raises(ValueError, match="lacks columns"):
        paired.paired_differences(a, b, "ead")


def test_paired_bootstrap_one_seed_matches_the_standard_error():
    rng = np.random.default_rng(0)
    x = rng.normal(0.2, 1.0, 400)
    e = paired.paired_bootstrap(x, level=0.9, n_boot=4000)
    assert e.estimate == pytest.approx(x.mean())
    assert e.se == pytest.approx(x.std(ddof=1) / 20, rel=0.06)
    assert e.ci_low == pytest.approx(x.mean() - 1.645 * e.se, abs=0.01)
    assert (e.n_prompts, e.n_seeds) == (400, 1) and e.sd == pytest.approx(x.std(ddof=1))


def test_paired_bootstrap_resamples_seeds_too():
    """A seed offset shared by every prompt: resampling prompts alone would miss it."""
    rng = np.random.default_rng(1)
    d = rng.normal(0, 0.1, (90, 3)) + np.array([-0.5, 0.0, 0.5])
    e = paired.paired_bootstrap(d)
    assert e.se > 0.15  # the three seed means (-0.5, 0, 0.5) dominate: se ~ 0.5 * sqrt(2/3) / sqrt(3)
    long = pd.DataFrame({"prompt_id": np.repeat(np.arange(90), 3), "seed": np.tile(np.arange(3), 90),
                         "diff": d.ravel()})
    assert paired.paired_bootstrap(long) == e
    with pytest.raises(ValueError, match="lack some seeds"):
        paired.paired_bootstrap(long.iloc[1:])
    with pytest.raises(ValueError, match="NaN"):
        paired.paired_bootstrap([0.1, np.nan])


def test_minimum_detectable_effect_is_the_exact_noncentral_t():
    from scipy import stats

    for sd, n, alpha, power in ((0.3, 12, 0.05, 0.8), (2.0, 30, 0.025, 0.9)):
        mde = paired.minimum_detectable_effect(sd, n, alpha, power)
        ncp = mde / (sd / math.sqrt(n))
        assert stats.nct.sf(stats.t.ppf(1 - alpha, n - 1), n - 1, ncp) == pytest.approx(power, abs=1e-9)
    # t-table values: t_{0.95, 11} = 1.7959, t_{0.80, 11} = 0.8755 (the textbook approximation, a bit larger)
    approx = (1.7959 + 0.8755) * 0.3 / math.sqrt(12)
    assert 0.98 * approx < paired.minimum_detectable_effect(0.3, 12) < approx
    # large n: the normal quantiles 1.6449 + 0.8416
    assert paired.minimum_detectable_effect(1.0, 10**6) == pytest.approx(2.4865e-3, rel=1e-3)
    assert paired.minimum_detectable_effect(0.0, 10) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        paired.minimum_detectable_effect(0.3, 1)
    with pytest.raises(ValueError, match="sd_diff"):
        paired.minimum_detectable_effect(-1.0, 10)


def test_paper_effect_from_the_table():
    t = creative_design.PAPER_TABLE1
    # MARA (fwd) - RLOO, out-dist R: 0.324 / (sqrt((0.100^2 + 0.113^2) / 2) * 10)
    d = paired.standardized_effect(1.604 - 1.280, 0.100, 0.113, 100)
    assert d == pytest.approx(0.324 / (math.sqrt((0.01 + 0.012769) / 2) * 10))
    assert paired.paper_effect(t, "RLOO", "MARA (fwd)", "r_out", 100, our_sd=0.5) == pytest.approx(d * 0.5)
    with pytest.raises(ValueError, match="not in the table"):
        paired.paper_effect(t, "RLOO + k3", "MARA (fwd)", "r_out", 100, 0.5)
    with pytest.raises(ValueError, match="r_in_sem"):
        paired.paper_effect(t, "RLOO", "MARA (fwd)", "r_in", 100, 0.5)


def test_compare_gates_with_the_planned_mde_not_the_measured_one():
    """The power gate reads the MDE fixed before the run; the run's own MDE is only reported."""
    rng = np.random.default_rng(3)
    d = rng.normal(0.5, 0.3, 90)
    planned_small = paired.compare(d, paper_effect=0.3, mde=0.1)
    assert planned_small.verdict == "holds" and planned_small.mde == 0.1 and planned_small.mde_measured < 0.3
    assert paired.compare(d, paper_effect=0.3, mde=0.4).verdict == "not tested (underpowered)"
    assert paired.compare(rng.normal(0.0, 0.1, 90), 0.5, 0.1, acted=False).verdict == "not tested (did not act)"
    c = paired.compare(rng.normal(0.0, 0.1, 90), 0.5, 0.1, control_trained=False)
    assert c.verdict == "not tested (control did not train)"
    # a significant effect whose interval rules out the paper's says so
    assert paired.compare(rng.normal(0.1, 0.1, 90), 0.5, 0.1).verdict == "holds, smaller than the paper's"


def test_bootstrap_p_value():
    rng = np.random.default_rng(5)
    assert paired.paired_bootstrap(rng.normal(1.0, 0.1, 40)).p_greater == pytest.approx(1 / 2001)
    assert paired.paired_bootstrap(rng.normal(-1.0, 0.1, 40)).p_greater == 1.0
    p0 = paired.paired_bootstrap(rng.normal(0.0, 1.0, 400), n_boot=4000).p_greater
    assert 0.01 < p0 < 0.99


def test_compare_and_print(capsys):
    rng = np.random.default_rng(2)
    strong = paired.compare(rng.normal(0.5, 0.3, 90), paper_effect=0.3, mde=0.1)
    assert strong.verdict == "holds" and strong.mde_measured < 0.3
    weak = paired.compare(rng.normal(0.0, 1.0, 12), paper_effect=0.3, mde=0.1)
    assert weak.mde_measured > 0.3 and weak.verdict in ("inconclusive", "holds", "FAILS")
    out = paired.print_verdict("B beats A on out-dist reward", strong, p_holm=0.01)
    printed = capsys.readouterr().out
    assert out == "holds" and printed.startswith("[holds] B beats A on out-dist reward\n    measured: +")
    assert "planned MDE 0.100" in printed and "(Holm 0.01)" in printed
