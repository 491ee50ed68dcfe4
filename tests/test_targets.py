"""Optimal targets (paper Rem. 3.1, 3.3, B.1, App. B.3) and probability ratios (§4).

Every target is checked against an independent computation: a direct numerical maximization of
its objective over softmax logits (scipy), the KKT/stationarity conditions, and, for the
forward-KL normalizer, a 60-digit mpmath bisection.
"""

import mpmath
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import softmax

from mdkl.targets import (
    entropy_regularized_target,
    forward_kl_objective,
    forward_kl_target,
    indifference_beta,
    kl_divergence,
    log_prob_ratio,
    reverse_kl_objective,
    reverse_kl_target,
    solve_forward_lambda,
)

SEEDS = range(6)


def _instance(seed, k=6, zeros=0):
    rng = np.random.default_rng(seed)
    ref = rng.dirichlet(np.ones(k))
    if zeros:
        ref[:zeros] = 0.0
        ref /= ref.sum()
    rewards = rng.uniform(0, 1, k)
    beta = float(rng.choice([0.1, 0.3, 1.0]))
    return ref, rewards, beta


def _maximize_over_logits(objective, k, x0=None):
    """argmax over the simplex of ``objective(pi)``, parametrized by softmax logits (BFGS)."""
    x0 = np.zeros(k) if x0 is None else x0
    res = minimize(lambda z: -objective(softmax(z)), x0, method="BFGS", jac="3-point",
                   options={"gtol": 1e-10, "maxiter": 5000})
    return softmax(res.x)


# ----------------------------------------------------------------------------------------------
# reverse KL (Rem. 3.1) and entropy-regularized (App. B.1) targets
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_reverse_kl_target_is_argmax_of_objective(seed):
    ref, r, beta = _instance(seed)
    g = reverse_kl_target(ref, r, beta)
    assert g.sum() == pytest.approx(1.0, abs=1e-14)
    # KKT on the simplex with full support: log G - log ref - R/beta is constant
    c = np.log(g) - np.log(ref) - r / beta
    assert np.ptp(c) < 1e-12
    # independent maximization of J(pi) = E_pi R - beta KL(pi || ref)
    opt = _maximize_over_logits(lambda p: p @ r - beta * np.sum(p * np.log(p / ref)), r.size)
    np.testing.assert_allclose(g, opt, atol=1e-6)
    assert reverse_kl_objective(g, ref, r, beta) >= reverse_kl_objective(opt, ref, r, beta) - 1e-12


def test_reverse_kl_target_remark_3_2_identity():
    """-J/beta = KL(pi || G_beta) - log zeta for any pi (Remark 3.2)."""
    ref, r, beta = _instance(11)
    g = reverse_kl_target(ref, r, beta)
    log_zeta = np.log(np.sum(ref * np.exp(r / beta)))
    for s in range(5):
        pi = np.random.default_rng(s).dirichlet(np.ones(r.size))
        lhs = -reverse_kl_objective(pi, ref, r, beta) / beta
        assert lhs == pytest.approx(kl_divergence(pi, g) - log_zeta, abs=1e-12)


def test_reverse_kl_target_extreme_beta_is_exact():
    ref = np.array([0.5, 0.3, 0.2])
    r = np.array([0.9, 1.0, 0.0])
    g = reverse_kl_target(ref, r, 1e-6)  # exp(1e5) would overflow without log-space
    assert np.all(np.isfinite(g)) and g.sum() == pytest.approx(1.0)
    # log ratio of the top two is exactly log(0.3/0.5) + 0.1/1e-6
    assert np.log(g[1]) == pytest.approx(0.0, abs=1e-12)
    assert g[0] == 0.0 or np.log(g[0]) == pytest.approx(np.log(0.5 / 0.3) - 0.1 / 1e-6, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("eta", [0.05, 0.5])
def test_entropy_regularized_target_is_argmax_of_objective(seed, eta):
    ref, r, beta = _instance(seed)
    g = entropy_regularized_target(ref, r, beta, eta)
    assert g.sum() == pytest.approx(1.0, abs=1e-14)

    def obj(p):
        return p @ r - beta * np.sum(p * np.log(p / ref)) - eta * np.sum(p * np.log(p))

    np.testing.assert_allclose(g, _maximize_over_logits(obj, r.size), atol=1e-6)


def test_entropy_regularized_target_limits():
    ref, r, beta = _instance(3)
    # eta = 0 recovers G_beta; beta = 0 is softmax(R / eta), reference ignored
    np.testing.assert_allclose(entropy_regularized_target(ref, r, beta, 0.0),
                               reverse_kl_target(ref, r, beta), rtol=1e-12)
    np.testing.assert_allclose(entropy_regularized_target(ref, r, 0.0, 0.2), softmax(r / 0.2),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="beta \\+ eta > 0"):
        entropy_regularized_target(ref, r, 0.0, 0.0)
    with pytest.raises(ValueError):
        entropy_regularized_target(ref, r, 0.1, -0.1)


# ----------------------------------------------------------------------------------------------
# forward KL (Rem. 3.3) and its normalizer
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_forward_kl_target_is_argmax_of_objective(seed):
    ref, r, beta = _instance(seed)
    g = forward_kl_target(ref, r, beta)
    assert g.sum() == pytest.approx(1.0, abs=1e-12)
    lam, _ = solve_forward_lambda(ref, r, beta)
    # stationarity: R + beta ref / G = Lambda on every output
    np.testing.assert_allclose(r + beta * ref / g, lam, rtol=1e-10)
    opt = _maximize_over_logits(lambda p: p @ r - beta * np.sum(ref * np.log(ref / p)), r.size)
    np.testing.assert_allclose(g, opt, atol=1e-6)
    assert forward_kl_objective(g, ref, r, beta) >= forward_kl_objective(opt, ref, r, beta) - 1e-12


def _mp_forward_gap(ref, rewards, beta, dps=60):
    """Reference x = Lambda - R* by bisection in ``dps``-digit arithmetic (independent of brentq)."""
    with mpmath.workdps(dps):
        on = [i for i in range(len(ref)) if ref[i] > 0]
        rs = max(mpmath.mpf(float(rewards[i])) for i in on)
        d = [rs - mpmath.mpf(float(rewards[i])) for i in on]
        p = [mpmath.mpf(float(ref[i])) for i in on]
        b = mpmath.mpf(float(beta))

        def z(x):
            return sum(b * pi / (x + di) for pi, di in zip(p, d)) - 1

        lo, hi = mpmath.mpf(0), b  # Z(0+) = +inf (top term), Z(beta) <= 1
        for _ in range(400):
            mid = (lo + hi) / 2
            if z(mid) > 0:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2, rs


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("beta", [1e-6, 1e-3, 1.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_solve_forward_lambda_bracket_precision_and_stability(scale, beta, seed):
    rng = np.random.default_rng(seed)
    k = 8
    ref = rng.dirichlet(np.ones(k))
    r = scale * rng.uniform(0, 1, k)
    r[3] = r.max()  # a tie in the argmax set
    lam, x = solve_forward_lambda(ref, r, beta)
    r_star = r.max()
    p_top = ref[r == r_star].sum()
    # analytic bracket  R* + beta pi_ref(argmax set) <= Lambda <= R* + beta
    assert beta * p_top * (1 - 1e-14) <= x <= beta * (1 + 1e-14)
    assert lam == r_star + x
    x_mp, _ = _mp_forward_gap(ref, r, beta)
    assert x == pytest.approx(float(x_mp), rel=1e-12)
    g = forward_kl_target(ref, r, beta)
    assert np.all(np.isfinite(g)) and np.all(g > 0)
    assert abs(g.sum() - 1.0) < 1e-12
    # stationarity in the precise form beta ref / G = x + (R* - R)
    np.testing.assert_allclose(beta * ref / g, x + (r_star - r), rtol=1e-12)


def test_solve_forward_lambda_all_mass_on_top_reward():
    ref = np.array([0.0, 1.0, 0.0])
    r = np.array([0.3, 0.5, 0.1])
    lam, x = solve_forward_lambda(ref, r, 0.2)
    assert x == 0.2 and lam == pytest.approx(0.7)
    np.testing.assert_array_equal(forward_kl_target(ref, r, 0.2), [0.0, 1.0, 0.0])


def test_solve_forward_lambda_ignores_off_support_rewards():
    """Lambda is the root of the *on-support* normalization (R* = max over pi_ref > 0)."""
    ref = np.array([0.6, 0.4, 0.0])
    r = np.array([0.2, 0.1, 5.0])
    lam, x = solve_forward_lambda(ref, r, 0.3)
    assert lam - x == 0.2
    np.testing.assert_allclose(np.sum(0.3 * ref[:2] / (lam - r[:2])), 1.0, rtol=1e-12)


@pytest.mark.parametrize("r_off,beta", [(1.0, 0.1), (0.5, 0.3), (0.2, 0.3), (0.9, 1.0)])
def test_forward_kl_target_off_support_case(r_off, beta):
    """App. B.3: best answers with pi_ref = 0 can get mass under G_fwd; check against a direct
    maximization of J_fwd over the whole simplex (softmax over all outputs, off-support included)."""
    ref = np.array([0.5, 0.3, 0.2, 0.0, 0.0])
    r = np.array([0.3, 0.1, 0.0, r_off, r_off - 0.5])
    g = forward_kl_target(ref, r, beta)
    assert g.sum() == pytest.approx(1.0, abs=1e-12)
    on = ref > 0

    def obj(p):
        return p @ r - beta * np.sum(ref[on] * np.log(ref[on] / p[on]))

    x0 = np.zeros(r.size)
    x0[~on] = -5.0
    opt = _maximize_over_logits(obj, r.size, x0)
    np.testing.assert_allclose(g, opt, atol=2e-4)
    assert forward_kl_objective(g, ref, r, beta) >= obj(opt) - 1e-9
    lam_on, _ = solve_forward_lambda(ref, r, beta)
    if r_off > lam_on:  # mass off the support, exactly at the best off-support output
        assert g[3] > 0.05 and g[4] == 0.0
        np.testing.assert_allclose(r[on] + beta * ref[on] / g[on], r_off, rtol=1e-12)
    else:
        assert g[3] == 0.0 and g[4] == 0.0


@pytest.mark.parametrize("beta", [0.05, 0.5, 2.0])
def test_forward_target_is_a_different_family(beta):
    """G_fwd is not G_beta' for any beta' (Rem. 3.3): their log-ratios against the reference are
    affine in R only for G_beta."""
    ref, r, _ = _instance(4)
    g = forward_kl_target(ref, r, beta)
    resid = np.polyfit(r, np.log(g / ref), 1, full=True)[1]
    assert resid[0] > 1e-6
    resid_rev = np.polyfit(r, np.log(reverse_kl_target(ref, r, beta) / ref), 1, full=True)[1]
    assert resid_rev.size == 0 or resid_rev[0] < 1e-20


# ----------------------------------------------------------------------------------------------
# probability ratios (§4)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
def test_prop_4_1_log_prob_ratio_matches_target(seed):
    ref, r, beta = _instance(seed)
    g = reverse_kl_target(ref, r, beta)
    lr = np.log(ref)
    got = log_prob_ratio(lr[:, None], lr[None, :], r[:, None], r[None, :], beta)
    np.testing.assert_allclose(got, np.log(g[:, None] / g[None, :]), atol=1e-10)


def test_remark_4_2_number():
    ratio = np.exp(log_prob_ratio(np.log(0.1), np.log(0.1), 0.6, 0.5, 1e-3))
    assert ratio == pytest.approx(2.69e43, rel=5e-3)  # exp(100); the paper rounds to 2.6e43


@pytest.mark.parametrize("beta", [1e-4, 1e-2, 1.0, 1e2])
def test_remark_4_3_equal_rewards_ratio_independent_of_beta(beta):
    ref = np.array([0.7, 0.05, 0.2, 0.05])
    r = np.array([1.0, 1.0, 0.0, 0.0])  # verifiable 0/1 reward; outputs 0 and 1 both correct
    assert log_prob_ratio(np.log(ref[0]), np.log(ref[1]), 1.0, 1.0, beta) == pytest.approx(np.log(14))
    for g in (reverse_kl_target(ref, r, beta), forward_kl_target(ref, r, beta)):
        assert g[0] / g[1] == pytest.approx(14.0, rel=1e-9)


def test_remark_4_4_indifference_beta_fig2():
    r1, l1, r2, l2 = 0.75, -4.05, 1.0, -5.95
    b_star = indifference_beta(r1, r2, l1, l2)
    assert 0.10 < b_star < 0.15
    assert log_prob_ratio(l1, l2, r1, r2, b_star) == pytest.approx(0.0, abs=1e-12)
    # G_beta's preference flips across beta*: the high-reward mode below, the well-supported above
    rest = 1 - np.exp(l1) - np.exp(l2)
    ref = np.array([np.exp(l1), np.exp(l2), rest])
    r = np.array([r1, r2, 0.0])
    for beta in (0.10, 0.9 * b_star):
        g = reverse_kl_target(ref, r, beta)
        assert g[1] > g[0]
    for beta in (0.15, 1.1 * b_star):
        g = reverse_kl_target(ref, r, beta)
        assert g[0] > g[1]
    assert indifference_beta(r2, r1, l2, l1) == pytest.approx(b_star)  # symmetric in (y1, y2)


@pytest.mark.parametrize("args", [(1.0, 0.5, -1.0, -2.0), (0.5, 0.5, -1.0, -2.0), (0.5, 1.0, -1.0, -1.0)])
def test_indifference_beta_raises_when_no_flip(args):
    with pytest.raises(ValueError, match="no indifference point"):
        indifference_beta(*args)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [reverse_kl_target, forward_kl_target, solve_forward_lambda])
@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_beta(fn, beta):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        fn([0.5, 0.5], [0.0, 1.0], beta)


@pytest.mark.parametrize("fn", [reverse_kl_target, forward_kl_target, solve_forward_lambda])
def test_bad_rewards_and_ref(fn):
    with pytest.raises(ValueError, match="NaN/inf at positions \\[1\\]"):
        fn([0.5, 0.5], [0.0, float("nan")], 0.1)
    with pytest.raises(ValueError, match="normalize it first"):
        fn([0.5, 0.6], [0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        fn([1.5, -0.5], [0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="3 entries but rewards has 2"):
        fn([0.2, 0.3, 0.5], [0.0, 1.0], 0.1)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        fn([], [], 0.1)


def test_log_prob_ratio_bad_beta():
    with pytest.raises(ValueError, match="beta"):
        log_prob_ratio(0.0, 0.0, 1.0, 0.0, 0.0)
