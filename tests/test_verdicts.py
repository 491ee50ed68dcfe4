"""The verdict rule set (mdkl.stats.verdicts): every branch, the gates on a would-be 'holds' as
well as on a would-be 'FAILS', Holm's adjustment, and refused input."""

import math

import numpy as np
import pytest

from mdkl.stats import verdicts as V
from mdkl.stats.verdicts import FAILS, HOLDS, INCONCLUSIVE, NOT_ACTED, UNDERPOWERED

# (paper_effect, estimate, ci_low, ci_high, mde) -> verdict, powered and gates open
OUTCOMES = [
    ((0.3, 0.4, 0.2, 0.6, 0.2), V.HOLDS),                 # excludes 0, paper's effect inside
    ((0.3, 0.3, 0.1, 0.3, 0.2), V.HOLDS),                 # upper end exactly at the paper's effect
    ((0.3, 0.1, 0.02, 0.2, 0.2), V.HOLDS_SMALLER),        # excludes 0 and the paper's effect
    ((0.3, 0.0, -0.1, 0.1, 0.2), V.FAILS),                # no effect, paper's ruled out
    ((0.3, -0.2, -0.3, -0.1, 0.2), V.FAILS),              # significant effect against the paper
    ((0.3, 0.1, -0.05, 0.35, 0.2), V.INCONCLUSIVE),       # holds both 0 and the paper's effect
    ((0.3, 0.1, 0.0, 0.35, 0.3), V.INCONCLUSIVE),         # ci_low == 0 is not significant; mde == effect is powered
]


@pytest.mark.parametrize("args, want", OUTCOMES)
def test_outcomes(args, want):
    assert V.decide(*args) == want
    assert want in V.VERDICTS


@pytest.mark.parametrize("args, _", OUTCOMES)
def test_gates_come_before_every_outcome(args, _):
    """A gate applies to a would-be 'holds' exactly as to a would-be 'FAILS'."""
    paper, est, lo, hi, mde = args
    assert V.decide(*args, acted=False) == V.NOT_ACTED
    assert V.decide(*args, control_trained=False) == V.NOT_TRAINED
    assert V.decide(paper, est, lo, hi, paper * 1.01) == V.UNDERPOWERED


def test_gate_order():
    args = (0.3, 0.4, 0.2, 0.6, 0.9)   # would hold; underpowered
    assert V.decide(*args, acted=False, control_trained=False) == V.NOT_ACTED
    assert V.decide(*args, control_trained=False) == V.NOT_TRAINED
    assert V.decide(*args) == V.UNDERPOWERED


def test_is_powered():
    assert V.is_powered(0.2, 0.3) and V.is_powered(0.3, 0.3) and not V.is_powered(0.31, 0.3)
    with pytest.raises(ValueError, match=">= 0"):
        V.is_powered(-0.1, 0.3)


@pytest.mark.parametrize("args, match", [
    ((-0.3, 0.0, -0.1, 0.1, 0.1), "orient the claim"),
    ((0.0, 0.0, -0.1, 0.1, 0.1), "orient the claim"),
    ((0.3, 0.5, -0.1, 0.1, 0.1), "outside its interval"),
    ((0.3, 0.0, 0.1, -0.1, 0.1), "outside its interval"),
    ((0.3, math.nan, -0.1, 0.1, 0.1), "finite"),
    ((0.3, 0.0, -math.inf, 0.1, 0.1), "finite"),
    ((0.3, 0.0, -0.1, 0.1, math.nan), "finite"),
    ((0.3, 0.0, -0.1, 0.1, None), "finite"),
])
def test_refused_input(args, match):
    with pytest.raises(ValueError, match=match):
        V.decide(*args)


def test_gates_must_be_booleans():
    with pytest.raises(ValueError, match="booleans"):
        V.decide(0.3, 0.4, 0.2, 0.6, 0.2, acted="yes")
    assert V.decide(0.3, 0.4, 0.2, 0.6, 0.2, acted=np.bool_(True)) == V.HOLDS


def test_holm_against_hand_computed_values():
    # p sorted: 0.01 (x3), 0.02 (x2), 0.04 (x1) -> 0.03, 0.04, 0.04; returned in input order
    np.testing.assert_allclose(V.holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    # monotone: a larger raw p never gets a smaller adjusted p; capped at 1
    np.testing.assert_allclose(V.holm([0.5, 0.001, 0.6]), [1.0, 0.003, 1.0])
    np.testing.assert_allclose(V.holm([0.2]), [0.2])
    rng = np.random.default_rng(0)
    p = rng.uniform(size=20)
    adj = V.holm(p)
    assert (adj >= p).all() and (adj <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= -1e-15).all()


@pytest.mark.parametrize("bad", [[], [0.1, math.nan], [1.2], [-0.1]])
def test_holm_refuses(bad):
    with pytest.raises(ValueError):
        V.holm(bad)


def test_format_measured():
    s = V.format_measured(0.1, 0.02, 0.2, 0.15, 0.3, p=0.01, p_holm=0.02, extra="6 seeds")
    assert s == ("measured: +0.100 [+0.020, +0.200] (90% interval); planned MDE 0.150; paper's effect +0.300; "
                 "p = 0.01 (Holm 0.02); 6 seeds")


# --- convergence (equivalence) and majority claims ---------------------------------------------

def test_decide_within_every_branch_and_gate():
    from mdkl.stats.verdicts import decide_within, STILL_MOVING
    assert decide_within(0.01, -0.03, 0.05, 0.1, 0.05) == HOLDS
    assert decide_within(0.3, 0.15, 0.45, 0.1, 0.05) == FAILS
    assert decide_within(-0.3, -0.45, -0.15, 0.1, 0.05) == FAILS
    assert decide_within(0.08, 0.0, 0.16, 0.1, 0.05) == INCONCLUSIVE
    # every gate applies to a would-be holds and a would-be FAILS alike, in order
    for args in [(0.01, -0.03, 0.05), (0.3, 0.15, 0.45)]:
        assert decide_within(*args, 0.1, 0.05, acted=False) == NOT_ACTED
        assert decide_within(*args, 0.1, 0.05, settled=False) == STILL_MOVING
        assert decide_within(*args, 0.1, 0.2) == UNDERPOWERED
        assert decide_within(*args, 0.1, 0.2, acted=False, settled=False) == NOT_ACTED


def test_decide_within_refuses_bad_input():
    from mdkl.stats.verdicts import decide_within
    with pytest.raises(ValueError, match="finite"):
        decide_within(float("nan"), 0, 1, 0.1, 0.05)
    with pytest.raises(ValueError, match="outside its interval"):
        decide_within(2.0, 0, 1, 0.1, 0.05)
    with pytest.raises(ValueError, match="margin"):
        decide_within(0.0, -0.1, 0.1, 0.0, 0.05)
    with pytest.raises(ValueError, match="booleans"):
        decide_within(0.0, -0.1, 0.1, 0.2, 0.05, settled=1)


def test_equivalence_mde_against_hand_values():
    from scipy import stats as st
    from mdkl.stats.verdicts import equivalence_mde
    hand = (st.t.ppf(0.95, 4) + st.norm.ppf(0.8)) * 0.1 / np.sqrt(5)
    assert equivalence_mde(0.1, 5) == pytest.approx(hand, rel=1e-12)
    assert equivalence_mde(0.0, 5) == 0.0
    with pytest.raises(ValueError, match="n >= 2"):
        equivalence_mde(0.1, 1)


def test_decide_majority_and_its_exact_interval():
    from mdkl.stats.verdicts import decide_majority, rate_interval
    lo, hi = rate_interval(5, 5)
    assert lo == pytest.approx(0.05 ** (1 / 5)) and hi == 1.0  # the all-events bound by hand
    assert rate_interval(0, 5) == (0.0, pytest.approx(1 - 0.05 ** (1 / 5)))
    assert decide_majority(5, 5) == HOLDS
    assert decide_majority(0, 5) == FAILS
    assert decide_majority(3, 5) == INCONCLUSIVE
    assert decide_majority(4, 4) == UNDERPOWERED  # 0.05**(1/4) = 0.47: even 4/4 cannot show a majority
    assert decide_majority(0, 4) == UNDERPOWERED
    with pytest.raises(ValueError, match="0 <= k <= n"):
        rate_interval(6, 5)
