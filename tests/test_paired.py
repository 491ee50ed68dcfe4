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


@pytest.mark.parametrize("args, want", [
    ((0.1, 0.05, 0.08, 0.01, 0.15), "holds"),
    ((0.1, 0.3, 0.08, 0.01, 0.15), "holds"),            # significant even though underpowered
    ((0.1, 0.3, 0.0, -0.2, 0.2), "not tested (underpowered)"),
    ((0.3, 0.2, 0.0, -0.1, 0.1), "FAILS"),              # powered, and the paper's 0.3 is ruled out
    ((0.3, 0.2, 0.1, -0.05, 0.35), "inconclusive"),
    ((0.3, 0.3, -0.2, -0.3, -0.1), "FAILS"),            # mde == paper effect counts as powered
])
def test_verdicts(args, want):
    assert paired.verdict(*args) == want
    assert want in paired.VERDICTS


def test_a_method_that_did_not_act_is_not_tested_unless_the_data_show_it():
    """Powered and contradicted, but the method did not act: 'not tested', never 'FAILS'."""
    assert paired.verdict(0.3, 0.2, 0.0, -0.1, 0.1, acted=False) == "not tested (did not act)"
    assert paired.verdict(0.3, 0.2, 0.1, -0.05, 0.35, acted=False) == "not tested (did not act)"
    assert paired.verdict(0.1, 0.05, 0.08, 0.01, 0.15, acted=False) == "holds"
    rng = np.random.default_rng(3)
    assert paired.compare(rng.normal(0.0, 0.1, 90), 0.5, acted=False).verdict == "not tested (did not act)"


def test_verdict_control_did_not_train():
    """Powered and contradicted, MARA acted, but its matched control never moved: 'not tested',
    never 'FAILS'; a method that did not act is reported first; a clear 'holds' stays."""
    assert paired.verdict(0.3, 0.2, 0.0, -0.1, 0.1, control_trained=False) == "not tested (control did not train)"
    assert paired.verdict(0.3, 0.2, 0.0, -0.1, 0.1, acted=False, control_trained=False) == "not tested (did not act)"
    assert paired.verdict(0.1, 0.05, 0.08, 0.01, 0.15, control_trained=False) == "holds"
    rng = np.random.default_rng(1)
    c = paired.compare(rng.normal(0.0, 0.1, 90), 0.5, control_trained=False)
    assert c.verdict == "not tested (control did not train)" and c.verdict in paired.VERDICTS


def test_verdict_bad_input():
    with pytest.raises(ValueError, match="orient"):
        paired.verdict(-0.1, 0.1, 0.0, -0.1, 0.1)
    with pytest.raises(ValueError, match="outside its interval"):
        paired.verdict(0.1, 0.1, 0.5, -0.1, 0.1)
    with pytest.raises(ValueError, match="finite"):
        paired.verdict(0.1, float("nan"), 0.0, -0.1, 0.1)


def test_compare_and_print(capsys):
    rng = np.random.default_rng(2)
    strong = paired.compare(rng.normal(0.5, 0.3, 90), paper_effect=0.3)
    assert strong.verdict == "holds" and strong.mde < 0.3
    weak = paired.compare(rng.normal(0.0, 1.0, 12), paper_effect=0.3)
    assert weak.mde > 0.3 and weak.verdict in ("not tested (underpowered)", "holds")
    out = paired.print_verdict("B beats A on out-dist reward", strong)
    printed = capsys.readouterr().out
    assert out == "holds" and printed.startswith("[holds] B beats A on out-dist reward\n    measured: +")
