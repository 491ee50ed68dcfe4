"""Bad input to the public functions of targets / kl / exact / metrics / mara gets a ValueError
that names the fix, never a NaN, an inf or a silent broadcast; huge reward scales give the exact
answer (computed in shifted, log-sum-exp form)."""

import math

import numpy as np
import pytest
import torch

from mdkl import exact, kl, mara, metrics, targets

NAN, INF = math.nan, math.inf
REF, R = [0.25, 0.25, 0.5], [0.0, 1.0, 0.5]


# ----------------------------------------------------------------------------------------------
# non-finite / negative coefficients
# ----------------------------------------------------------------------------------------------
BAD_BETAS = [NAN, INF, -INF, -0.1, 0.0]


@pytest.mark.parametrize("beta", BAD_BETAS)
@pytest.mark.parametrize("fn", [targets.reverse_kl_target, targets.forward_kl_target, targets.solve_forward_lambda])
def test_target_beta_must_be_finite_positive(fn, beta):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        fn(REF, R, beta)


@pytest.mark.parametrize("beta", BAD_BETAS)
@pytest.mark.parametrize("fn", [targets.reverse_kl_objective, targets.forward_kl_objective])
def test_objective_beta_must_be_finite_positive(fn, beta):
    with pytest.raises(ValueError, match="beta must be"):
        fn(REF, REF, R, beta)


@pytest.mark.parametrize("beta, eta", [(NAN, 0.1), (INF, 0.1), (0.1, NAN), (0.1, INF), (-0.1, 0.5), (0.1, -0.1),
                                       (0.0, 0.0)])
def test_entropy_target_coefficients(beta, eta):
    with pytest.raises(ValueError, match="beta|eta"):
        targets.entropy_regularized_target(REF, R, beta, eta)


@pytest.mark.parametrize("beta", BAD_BETAS)
def test_mara_targets_beta(beta):
    for fn in (mara.mara_target, mara.mara_forward_target):
        with pytest.raises(ValueError, match="beta"):
            fn(REF, R, beta, 0.5)
    with pytest.raises(ValueError, match="beta"):
        mara.mara_rewards(torch.tensor(R), torch.tensor(REF).log(), beta, 0.5)


@pytest.mark.parametrize("beta", [NAN, INF, -1.0])
def test_log_prob_ratio_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        targets.log_prob_ratio(-1.0, -2.0, 1.0, 0.0, beta)


@pytest.mark.parametrize("beta", [NAN, INF, -0.1])
@pytest.mark.parametrize("fn", [kl.kl_loss, kl.kl_reward_penalty])
def test_kl_beta_finite_nonnegative(fn, beta):
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        fn(torch.zeros(3), torch.zeros(3), beta, "k3" if fn is kl.kl_loss else "k1")


def test_kl_beta_zero_is_allowed():
    assert torch.equal(kl.kl_loss(torch.zeros(3), -torch.ones(3), 0.0, "k3"), torch.zeros(3))


@pytest.mark.parametrize("beta, eta", [(NAN, 0.0), (INF, 0.0), (-1.0, 0.0), (0.1, NAN), (0.1, INF), (0.1, -1.0)])
def test_exact_objective_coefficients(beta, eta):
    with pytest.raises(ValueError, match="beta|eta"):
        exact.exact_objective(torch.zeros(3), REF, R, beta, eta=eta)


@pytest.mark.parametrize("lr, steps", [(NAN, 10), (-0.1, 10), (0.0, 10), (0.1, 2.5), (0.1, 0)])
def test_exact_ascent_lr_and_steps(lr, steps):
    with pytest.raises(ValueError, match="lr|steps"):
        exact.maximize_exact_objective(REF, R, 0.1, steps=steps, lr=lr)


@pytest.mark.parametrize("tau", [NAN, INF, -INF])
def test_mara_tau_must_be_finite(tau):
    r, lr = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, -2.0])
    with pytest.raises(ValueError, match="tau is NaN or infinite"):
        mara.mara_rewards(r, lr, 0.1, tau)
    with pytest.raises(ValueError, match="tau is NaN or infinite"):
        mara.mara_substitute(r, lr, torch.tensor([0.5, tau]), torch.tensor([0, 1]))
    for fn in (mara.mara_target, mara.mara_forward_target):
        with pytest.raises(ValueError, match="tau must be a finite"):
            fn(REF, R, 0.1, tau)


@pytest.mark.parametrize("tau", [NAN, INF])
def test_coverage_tau_must_be_finite(tau):
    with pytest.raises(ValueError, match="tau must be finite"):
        metrics.coverage(REF, R, tau)


# ----------------------------------------------------------------------------------------------
# reference vectors and policies that are not probability vectors
# ----------------------------------------------------------------------------------------------
BAD_REFS = [([0.5, -0.1, 0.6], "non-negative"), ([0.2, 0.2, 0.2], "sum to 1"), ([0.5, NAN, 0.5], "finite"),
            ([0.5, 0.5], "entries but rewards has 3"), ([[0.25, 0.25, 0.5]], "1-D"), ([], "non-empty")]


@pytest.mark.parametrize("ref, msg", BAD_REFS)
@pytest.mark.parametrize("fn", [targets.reverse_kl_target, targets.forward_kl_target, mara.mara_target,
                                mara.mara_forward_target])
def test_bad_reference_vectors(fn, ref, msg):
    args = (ref, R, 0.1) + ((0.5,) if fn in (mara.mara_target, mara.mara_forward_target) else ())
    with pytest.raises(ValueError, match=msg):
        fn(*args)


@pytest.mark.parametrize("ref, msg", BAD_REFS[:4])
def test_bad_reference_vectors_exact_and_entropy(ref, msg):
    with pytest.raises(ValueError, match=msg):
        exact.exact_objective(torch.zeros(3), ref, R, 0.1)
    with pytest.raises(ValueError, match=msg):
        targets.entropy_regularized_target(ref, R, 0.1, 0.1)


@pytest.mark.parametrize("pi, msg", [([0.5, -0.1, 0.6], "non-negative"), ([0.2, 0.2, 0.2], "sum to 1"),
                                     ([0.5, NAN, 0.5], "NaN/inf"), ([0.5, 0.5], "2 entries but rewards has 3")])
@pytest.mark.parametrize("fn", [targets.reverse_kl_objective, targets.forward_kl_objective])
def test_bad_policies_in_objectives(fn, pi, msg):
    with pytest.raises(ValueError, match=msg):
        fn(pi, REF, R, 0.1)


@pytest.mark.parametrize("p, q, msg", [([0.5, 0.5], [0.25, 0.25, 0.5], "same outputs"),
                                       ([0.5, 0.5], [1.5, -0.5], "non-negative"),
                                       ([0.5, 0.5], [0.5, NAN], "NaN/inf"), ([2.0, 1.0], [0.5, 0.5], "sum to 1")])
def test_kl_divergence_bad_inputs(p, q, msg):
    with pytest.raises(ValueError, match=msg):
        targets.kl_divergence(p, q)


@pytest.mark.parametrize("p, msg", [([0.5, NAN], "finite"), ([1.5, -0.5], "non-negative"), ([0.2, 0.2], "sum to 1"),
                                    ([], "non-empty")])
def test_entropy_bad_inputs(p, msg):
    with pytest.raises(ValueError, match=msg):
        metrics.entropy(p)


def test_entropy_rows_still_work():
    np.testing.assert_allclose(metrics.entropy([[0.5, 0.5], [1.0, 0.0]]), [math.log(2), 0.0])


# ----------------------------------------------------------------------------------------------
# shapes that would broadcast (or index) silently
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shapes", [((4,), (4, 1)), ((4, 3), (4,)), ((4,), (3,)), ((2, 3), (3, 2))])
@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators_never_broadcast(shapes, est):
    a, b = torch.zeros(shapes[0]), torch.zeros(shapes[1])
    with pytest.raises(ValueError, match="same shape"):
        kl.kl_estimate(a, b, est)
    with pytest.raises(ValueError, match="same shape"):
        kl.kl_loss(a, b, 0.1, est)
    with pytest.raises(ValueError, match="same shape"):
        kl.kl_reward_penalty(a, b, 0.1, est)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
def test_kl_estimators_reject_nan(est):
    with pytest.raises(ValueError, match="NaN in logp"):
        kl.kl_estimate(torch.tensor([0.0, NAN]), torch.zeros(2), est)
    with pytest.raises(ValueError, match="NaN in logp"):
        kl.kl_estimate(torch.zeros(2), torch.tensor([NAN, 0.0]), est)


@pytest.mark.parametrize("fn", [targets.reverse_kl_target, targets.forward_kl_target])
def test_rewards_vs_ref_lengths(fn):
    with pytest.raises(ValueError, match="ref has 3 entries but rewards has 2"):
        fn(REF, [0.0, 1.0], 0.1)


def test_mara_rewards_vs_logp_ref_shapes():
    with pytest.raises(ValueError, match="1-D of equal length"):
        mara.mara_rewards(torch.zeros(4), torch.zeros(4, 1), 0.1, 0.5)
    with pytest.raises(ValueError, match="1-D of equal length"):
        mara.mara_substitute(torch.zeros(4), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="1-D of equal length"):
        mara.mara_anchor(torch.zeros(2, 2), torch.zeros(2, 2), 0.5)


def test_exact_objective_logits_shape_and_finite():
    with pytest.raises(ValueError, match="logits must have shape"):
        exact.exact_objective(torch.zeros(3, 1), REF, R, 0.1)
    with pytest.raises(ValueError, match="logits contain NaN"):
        exact.exact_objective(torch.tensor([0.0, NAN, 0.0]), REF, R, 0.1)
    with pytest.raises(ValueError, match="logits must have shape"):
        exact.maximize_exact_objective(REF, R, 0.1, steps=2, init_logits=[0.0, 0.0])


def test_metrics_shapes():
    with pytest.raises(ValueError, match="one probability per output"):
        metrics.coverage([0.5, 0.5], R, 0.5)
    with pytest.raises(ValueError, match="mask"):
        metrics.max_min_ratio([0.5, 0.5], [True, False, True])
    with pytest.raises(ValueError, match="boolean"):
        metrics.max_min_ratio([0.5, 0.5], [1, 0])  # an index list, not a mask
    with pytest.raises(ValueError, match="finite"):
        metrics.max_min_ratio([0.5, NAN], [True, True])
    with pytest.raises(ValueError, match="finite"):
        metrics.coverage(REF, [0.0, NAN, 1.0], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.is_multimodal(REF, R, 0.5, min_coverage=NAN)
    with pytest.raises(ValueError, match="thresholds"):
        metrics.equivalence_accuracy(["a"], ["b"], [[1.0, 0.0]], [[0.0, 1.0]], [0], [0.5, NAN])


@pytest.mark.parametrize("n_a, n_b", [(-1, 3), (1.5, 2), (True, 2)])
def test_binary_entropy_counts(n_a, n_b):
    with pytest.raises(ValueError, match="count"):
        metrics.binary_entropy_with_se(n_a, n_b)


# ----------------------------------------------------------------------------------------------
# MARA group ids
# ----------------------------------------------------------------------------------------------
R4, L4 = torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([-1.0, -2.0, -1.5, -0.5])


@pytest.mark.parametrize("group, msg", [(torch.tensor([0.0, 0.5, 1.0, 1.0]), "integers"),
                                        (torch.tensor([0, -1, 1, 1]), ">= 0"),
                                        (torch.tensor([0, 0, 1]), "one id per sample"),
                                        (torch.tensor([True, False, True, False]), "not booleans"),
                                        (torch.tensor([0.0, NAN, 1.0, 1.0]), "integers")])
@pytest.mark.parametrize("fn", ["anchor", "rewards", "substitute", "tau"])
def test_mara_bad_group_ids(fn, group, msg):
    with pytest.raises(ValueError, match=msg):
        if fn == "anchor":
            mara.mara_anchor(R4, L4, 0.5, group)
        elif fn == "rewards":
            mara.mara_rewards(R4, L4, 0.1, 0.5, group)
        elif fn == "substitute":
            mara.mara_substitute(R4, L4, 0.5, group)
        else:
            mara.batch_percentile_tau(R4, 90, group)


def test_mara_integer_valued_float_groups_are_fine():
    a = mara.mara_rewards(R4, L4, 0.1, 0.5, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    b = mara.mara_rewards(R4, L4, 0.1, 0.5, torch.tensor([0, 0, 1, 1]))
    assert torch.equal(a, b)


def test_mara_tau_vector_shorter_than_groups():
    with pytest.raises(ValueError, match="tau has 1 entries for 2 groups"):
        mara.mara_rewards(R4, L4, 0.1, torch.tensor([0.5]), torch.tensor([0, 0, 1, 1]))


def test_batch_percentile_tau_missing_group():
    with pytest.raises(ValueError, match=r"group ids \[1\] have no samples"):
        mara.batch_percentile_tau(R4, 90, torch.tensor([0, 0, 2, 2]))


# ----------------------------------------------------------------------------------------------
# MARA: -inf / +inf / dtype
# ----------------------------------------------------------------------------------------------
def test_mara_rewards_neg_inf_logp_ref_on_good_sample():
    r = torch.tensor([1.0, 1.0, 0.0])
    lr = torch.tensor([-1.0, -INF, -2.0])
    with pytest.raises(ValueError, match=r"samples \[1\] have R >= tau but log pi_ref = -inf"):
        mara.mara_rewards(r, lr, 0.1, 0.5)
    # below tau it is harmless: the reward is left unchanged
    out = mara.mara_rewards(r, torch.tensor([-1.0, -2.0, -INF]), 0.1, 0.5)
    assert torch.isfinite(out).all()


def test_mara_substitute_neg_inf_anchor():
    r = torch.tensor([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="anchor has log pi_ref = -inf"):
        mara.mara_substitute(r, torch.tensor([-INF, -INF, -2.0]), 0.5)
    # one -inf good sample next to a finite anchor: substituted by the anchor's value, finite
    rr, ll = mara.mara_substitute(r, torch.tensor([-1.0, -INF, -2.0]), 0.5)
    assert torch.isfinite(rr).all() and torch.isfinite(ll).all()


def test_mara_infinite_inputs():
    with pytest.raises(ValueError, match="infinite rewards"):
        mara.mara_rewards(torch.tensor([1.0, INF]), torch.tensor([-1.0, -2.0]), 0.1, 0.5)
    with pytest.raises(ValueError, match=r"\+inf"):
        mara.mara_rewards(torch.tensor([1.0, 0.0]), torch.tensor([INF, -2.0]), 0.1, 0.5)
    with pytest.raises(ValueError, match="NaN rewards"):
        mara.batch_percentile_tau(torch.tensor([1.0, INF]))


def test_mara_does_not_truncate_float64_log_probs():
    # float32 rewards with float64 reference log-probs: both promoted to float64, nothing rounded
    lr = torch.tensor([-1.0, -1.0 - 1e-12], dtype=torch.float64)
    out = mara.mara_rewards(torch.tensor([1.0, 1.0], dtype=torch.float32), lr, 1.0, 0.5)
    assert out.dtype == torch.float64
    assert out[1] - out[0] == pytest.approx(1e-12, rel=1e-3)


# ----------------------------------------------------------------------------------------------
# rewards that would overflow exp(R / beta): shifted (log-sum-exp) forms give the exact answer
# ----------------------------------------------------------------------------------------------
def test_reverse_target_huge_scale_matches_analytic():
    np.testing.assert_array_equal(targets.reverse_kl_target([0.5, 0.5], [0.0, 1000.0], 1e-3), [0.0, 1.0])
    beta = 1e-3  # G_beta proportional to pi_ref exp(R / beta): a reward gap of beta ln 3 gives odds 3
    g = targets.reverse_kl_target([0.5, 0.5], [1000.0, 1000.0 + beta * math.log(3)], beta)
    np.testing.assert_allclose(g, [0.25, 0.75], rtol=1e-9)


def test_entropy_target_huge_scale_matches_analytic():
    beta, eta = 1e-3, 1e-3  # pi_ref^(1/2) exp(R / 2e-3): equal ref, gap 2e-3 ln 3 -> odds 3
    g = targets.entropy_regularized_target([0.5, 0.5], [1000.0, 1000.0 + 2e-3 * math.log(3)], beta, eta)
    np.testing.assert_allclose(g, [0.25, 0.75], rtol=1e-9)
    np.testing.assert_array_equal(targets.entropy_regularized_target([0.5, 0.5], [0.0, 1000.0], 0.0, 1e-3),
                                  [0.0, 1.0])


def test_mara_target_huge_scale_matches_analytic():
    # good set {R >= 999}: constant mass there (Remark B.3); the bad output has exp(-1e6) relative mass
    g = mara.mara_target([0.2, 0.3, 0.5], [1000.0, 999.0, 0.0], 1e-3, 999.0)
    np.testing.assert_allclose(g, [0.5, 0.5, 0.0], atol=1e-15)
    assert np.isfinite(g).all()


def test_forward_target_huge_scale_matches_analytic():
    ref, rew, beta = np.array([0.5, 0.5]), np.array([0.0, 1000.0]), 1e-3
    g = targets.forward_kl_target(ref, rew, beta)
    lam, x = targets.solve_forward_lambda(ref, rew, beta)
    # G = beta pi_ref / (Lambda - R) with sum 1: x solves beta (0.5 / x + 0.5 / (x + 1000)) = 1
    # i.e. x^2 + b x - c = 0 with b = 1000 - beta, c = 500 beta (root in the cancellation-free form)
    b, c = 1000 - beta, 500 * beta
    x_exact = 2 * c / (b + math.sqrt(b * b + 4 * c))
    assert x == pytest.approx(x_exact, rel=1e-9)
    np.testing.assert_allclose(g, [beta * 0.5 / (x_exact + 1000), beta * 0.5 / x_exact], rtol=1e-9)
    assert g.sum() == pytest.approx(1.0, abs=1e-12)


def test_log_prob_ratio_and_indifference_non_finite():
    with pytest.raises(ValueError, match="probability 0"):
        targets.log_prob_ratio(-INF, -INF, 1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="NaN"):
        targets.log_prob_ratio(NAN, -1.0, 1.0, 0.0, 0.1)
    with pytest.raises(ValueError, match="NaN/inf"):
        targets.log_prob_ratio(-1.0, -2.0, NAN, 0.0, 0.1)
    assert targets.log_prob_ratio(-INF, -1.0, 1.0, 0.0, 0.1) == -INF  # probability 0: never preferred
    with pytest.raises(ValueError, match="finite"):
        targets.indifference_beta(1.0, NAN, -1.0, -2.0)
    with pytest.raises(ValueError, match="finite"):
        targets.indifference_beta(1.0, 0.0, -INF, -2.0)


def test_check_coefficient_non_numbers():
    with pytest.raises(ValueError, match="one real number"):
        targets.check_coefficient([0.1, 0.2], "beta")
    with pytest.raises(ValueError, match="one real number"):
        targets.check_coefficient("abc", "eta")
