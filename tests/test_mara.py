"""MARA (paper §5, Algorithms 1 and 2, Remark B.3).

The batched tensor functions are compared with naive per-group Python loops on random grouped
batches (hypothesis); the targets are checked against reverse_kl_target and, under forward KL,
against the stationarity condition R + beta ref / G = Lambda solved independently here.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.special import logsumexp

from mdkl.mara import (
    ANCHORS,
    MARA_FOR_KL,
    batch_percentile_tau,
    mara_anchor,
    mara_forward_target,
    mara_rewards,
    mara_substitute,
    mara_target,
)
from mdkl.metrics import max_min_ratio
from mdkl.targets import forward_kl_target, reverse_kl_target

# small value sets make ties (same reward / same reference log-prob) and thresholds likely
REWARDS = st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0])
LOGREFS = st.sampled_from([-0.5, -1.0, -2.0, -3.5, -7.0])
SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)


@st.composite
def grouped_batch(draw, per_group_tau=False):
    n = draw(st.integers(1, 16))
    n_groups = draw(st.integers(1, 4))
    group = draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n))
    group[-1] = n_groups - 1  # every group id up to the largest is meaningful
    rewards = draw(st.lists(REWARDS, min_size=n, max_size=n))
    logref = draw(st.lists(LOGREFS, min_size=n, max_size=n))
    if per_group_tau:
        tau = draw(st.lists(st.sampled_from([0.2, 0.5, 0.8, 1.0, 1.5]), min_size=n_groups,
                            max_size=n_groups))
    else:
        tau = draw(st.sampled_from([0.2, 0.5, 0.8, 1.0, 1.5]))
    return rewards, logref, group, tau


def _tau_of(tau, g):
    return tau[g] if isinstance(tau, list) else tau


def naive_anchor(rewards, logref, group, tau):
    """Per sample: index of the first sample of its group with the highest log pi_ref among
    those with R >= tau, or -1."""
    out = []
    for i, g in enumerate(group):
        best = -1
        for j, h in enumerate(group):
            if h == g and rewards[j] >= _tau_of(tau, g) and (best < 0 or logref[j] > logref[best]):
                best = j
        out.append(best)
    return out


def naive_rewards(rewards, logref, group, tau, beta):
    z = naive_anchor(rewards, logref, group, tau)
    return [rewards[z[i]] + beta * (logref[z[i]] - logref[i])
            if z[i] >= 0 and rewards[i] >= _tau_of(tau, g) else rewards[i]
            for i, g in enumerate(group)]


def naive_substitute(rewards, logref, group, tau):
    z = naive_anchor(rewards, logref, group, tau)
    good = [z[i] >= 0 and rewards[i] >= _tau_of(tau, g) for i, g in enumerate(group)]
    return ([rewards[z[i]] if good[i] else rewards[i] for i in range(len(group))],
            [logref[z[i]] if good[i] else logref[i] for i in range(len(group))])


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


@SETTINGS
@given(grouped_batch(), st.booleans())
def test_anchor_matches_naive_loop(batch, scalar_tau_as_tensor):
    rewards, logref, group, tau = batch
    tau_arg = torch.tensor(tau, dtype=torch.float64) if scalar_tau_as_tensor else tau
    got = mara_anchor(_t(rewards), _t(logref), tau_arg, group).tolist()
    assert got == naive_anchor(rewards, logref, group, tau)


@SETTINGS
@given(grouped_batch(per_group_tau=True))
def test_anchor_matches_naive_loop_per_group_tau(batch):
    rewards, logref, group, tau = batch
    assert mara_anchor(_t(rewards), _t(logref), _t(tau), group).tolist() == \
        naive_anchor(rewards, logref, group, tau)


@SETTINGS
@given(st.one_of(grouped_batch(), grouped_batch(per_group_tau=True)),
       st.sampled_from([1e-3, 0.1, 0.5, 2.0]))
def test_alg1_rewards_match_naive_loop(batch, beta):
    rewards, logref, group, tau = batch
    tau_arg = _t(tau) if isinstance(tau, list) else tau
    got = mara_rewards(_t(rewards), _t(logref), beta, tau_arg, group)
    np.testing.assert_allclose(got.numpy(), naive_rewards(rewards, logref, group, tau, beta),
                               rtol=1e-15, atol=1e-15)


@SETTINGS
@given(st.one_of(grouped_batch(), grouped_batch(per_group_tau=True)))
def test_alg2_substitute_matches_naive_loop(batch):
    rewards, logref, group, tau = batch
    tau_arg = _t(tau) if isinstance(tau, list) else tau
    r_sub, l_sub = mara_substitute(_t(rewards), _t(logref), tau_arg, group)
    r_want, l_want = naive_substitute(rewards, logref, group, tau)
    assert r_sub.tolist() == r_want and l_sub.tolist() == l_want


def test_per_group_tau_anchor_is_a_good_sample():
    """Regression: with one tau per group, Alg. 1/2 used to re-index the per-sample tau by the group
    id when choosing the anchor, so group 1 anchored on a sample below its own tau."""
    r, lr, g = _t([1.0, 0.0, 0.6, 1.0]), _t([-1.0, -0.5, -0.1, -2.0]), [0, 0, 1, 1]
    tau = _t([0.5, 0.8])
    assert mara_anchor(r, lr, tau, g).tolist() == [0, 0, 3, 3]
    assert mara_rewards(r, lr, 0.1, tau, g).tolist() == [1.0, 0.0, 0.6, 1.0]
    assert mara_substitute(r, lr, tau, g)[0].tolist() == [1.0, 0.0, 0.6, 1.0]


def test_group_without_good_sample_is_unchanged():
    r = _t([0.1, 0.3, 0.9, 0.2, 1.0])
    lr = _t([-1.0, -2.0, -3.0, -0.1, -4.0])
    g = [0, 0, 1, 1, 1]
    out = mara_rewards(r, lr, 0.5, 0.8, g)
    assert out[:2].tolist() == [0.1, 0.3]  # group 0 has no R >= 0.8
    assert mara_anchor(r, lr, 0.8, g).tolist() == [-1, -1, 2, 2, 2]
    assert out[2:].tolist() == [0.9, 0.2, pytest.approx(0.9 + 0.5 * (-3.0 + 4.0))]
    rs, ls = mara_substitute(r, lr, 0.8, g)
    assert rs.tolist() == [0.1, 0.3, 0.9, 0.2, 0.9] and ls.tolist() == [-1.0, -2.0, -3.0, -0.1, -3.0]


def test_outputs_carry_no_gradient():
    r = torch.tensor([1.0, 0.0], requires_grad=True)
    lr = torch.tensor([-1.0, -2.0], requires_grad=True)
    assert not mara_rewards(r, lr, 0.1, 0.5).requires_grad
    assert not any(t.requires_grad for t in mara_substitute(r, lr, 0.5))


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------
@st.composite
def instance(draw):
    k = draw(st.integers(2, 10))
    w = draw(st.lists(st.floats(0.01, 1.0), min_size=k, max_size=k))
    ref = np.array(w) / np.sum(w)
    r = np.array(draw(st.lists(st.sampled_from([0.0, 0.3, 0.6, 0.9, 1.0]), min_size=k, max_size=k)))
    tau = draw(st.sampled_from([0.3, 0.6, 0.9, 1.0]))
    if not (r >= tau).any():
        r[draw(st.integers(0, k - 1))] = tau
    beta = draw(st.sampled_from([0.05, 0.2, 1.0, 3.0]))
    return ref, r, beta, tau


def _augmented(ref, r, beta, tau):
    """Alg. 1 rewards over the whole space, by hand: z = best-supported output with R >= tau."""
    good = r >= tau
    z = np.flatnonzero(good)[np.argmax(ref[good])]
    return np.where(good, r[z] + beta * (np.log(ref[z]) - np.log(ref)), r)


@SETTINGS
@given(instance())
def test_mara_target_remark_b3(inst):
    ref, r, beta, tau = inst
    g = mara_target(ref, r, beta, tau)
    good = r >= tau
    assert g.sum() == pytest.approx(1.0, abs=1e-12)
    assert max_min_ratio(g, good) == pytest.approx(1.0, abs=1e-10)  # constant on {R >= tau}
    np.testing.assert_allclose(g, reverse_kl_target(ref, _augmented(ref, r, beta, tau), beta),
                               rtol=1e-10)
    # below tau: unchanged relative to the reverse-KL target's shape pi_ref exp(R / beta)
    if (~good).sum() >= 2:
        bad = np.flatnonzero(~good)
        np.testing.assert_allclose(np.log(g[bad] / g[bad[0]]),
                                   np.log(ref[bad] / ref[bad[0]]) + (r[bad] - r[bad[0]]) / beta,
                                   atol=1e-9)


@SETTINGS
@given(instance())
def test_alg1_over_the_whole_space_gives_mara_target(inst):
    ref, r, beta, tau = inst
    rbar = mara_rewards(_t(r), _t(np.log(ref)), beta, tau).numpy()
    np.testing.assert_allclose(reverse_kl_target(ref, rbar, beta), mara_target(ref, r, beta, tau),
                               rtol=1e-10)


@SETTINGS
@given(instance())
def test_alg2_under_reverse_kl_equals_alg1(inst):
    """Paper: Alg. 2 is "equivalent to Algorithm 1 under reverse KL". The reverse-KL target with
    substituted reference p' and reward R' is proportional to p' exp(R' / beta)."""
    ref, r, beta, tau = inst
    r2, l2 = mara_substitute(_t(r), _t(np.log(ref)), tau)
    logits = l2.numpy() + r2.numpy() / beta
    np.testing.assert_allclose(np.exp(logits - logsumexp(logits)), mara_target(ref, r, beta, tau),
                               rtol=1e-10)


def _forward_target_unnormalized(ref_w, r, beta):
    """Stationarity of E_pi[R] + beta sum_y w(y) log pi(y) on the simplex (w need not sum to 1):
    G = beta w / (Lambda - R), with Lambda > max R solving sum G = 1 (brentq, independent of
    mdkl.targets.solve_forward_lambda)."""
    rmax = r.max()

    def z(lam):
        return np.sum(beta * ref_w / (lam - r)) - 1.0

    lo, hi = rmax + 1e-14 * max(1.0, abs(rmax)), rmax + beta * ref_w.sum() + 1.0
    while z(lo) < 0:  # top term alone exceeds 1 near rmax unless its weight is tiny
        lo = rmax + (lo - rmax) / 10
    lam = brentq(z, lo, hi, xtol=1e-15, rtol=1e-15)
    return beta * ref_w / (lam - r)


@SETTINGS
@given(instance())
def test_under_forward_kl_alg2_is_uniform_on_good_set(inst):
    """The spec's numerical check: under the forward-KL objective, Alg. 2 (substituted reward and
    reference inside the KL) gives constant mass on {R >= tau}."""
    ref, r, beta, tau = inst
    r2, l2 = mara_substitute(_t(r), _t(np.log(ref)), tau)
    g2 = _forward_target_unnormalized(np.exp(l2.numpy()), r2.numpy(), beta)
    assert g2.sum() == pytest.approx(1.0, abs=1e-9)
    assert max_min_ratio(g2, r >= tau) == pytest.approx(1.0, abs=1e-9)
    assert MARA_FOR_KL["forward"] == "alg2" and MARA_FOR_KL["reverse"] == "alg1"


@pytest.mark.parametrize("beta", [0.05, 0.2, 1.0])
def test_under_forward_kl_alg1_is_not_uniform(beta):
    """...while Alg. 1's augmented rewards enter G_fwd = beta pi_ref / (Lambda - rbar) and do not
    cancel pi_ref: good outputs with different support get different mass."""
    ref = np.array([0.5, 0.2, 0.05, 0.25])
    r = np.array([1.0, 1.0, 1.0, 0.0])
    rbar = mara_rewards(_t(r), _t(np.log(ref)), beta, 1.0).numpy()
    g1 = forward_kl_target(ref, rbar, beta)
    assert max_min_ratio(g1, r >= 1.0) > 1.2
    r2, l2 = mara_substitute(_t(r), _t(np.log(ref)), 1.0)
    g2 = _forward_target_unnormalized(np.exp(l2.numpy()), r2.numpy(), beta)
    assert max_min_ratio(g2, r >= 1.0) == pytest.approx(1.0, abs=1e-12)
    # the unnormalized solver agrees with mdkl's forward target on a normalized reference
    np.testing.assert_allclose(_forward_target_unnormalized(ref, rbar, beta), g1, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# tau and bad input
# ----------------------------------------------------------------------------------------------
def test_batch_percentile_tau_all_equal_rewards_selects_everything():
    r = _t([0.3] * 5 + [0.1, 0.2, 0.9, 0.5])
    g = [0] * 5 + [1] * 4
    lr = _t([-2.0, -1.0, -1.0, -3.0, -5.0, -1.0, -1.0, -1.0, -1.0])
    tau = batch_percentile_tau(r, 90.0, g)
    assert tau[0].item() == 0.3  # all-equal group: tau is that reward, every sample is good
    assert tau[1].item() == pytest.approx(float(np.percentile([0.1, 0.2, 0.9, 0.5], 90)))
    anchor = mara_anchor(r, lr, tau, g)
    assert anchor[:5].tolist() == [1] * 5  # best-supported sample, ties -> first
    assert anchor[5:].tolist() == [7] * 4
    out = mara_rewards(r, lr, 0.1, tau, g)
    np.testing.assert_allclose(out[:5].numpy(), 0.3 + 0.1 * (-1.0 - lr[:5].numpy()))


def test_batch_percentile_tau_matches_numpy():
    rng = np.random.default_rng(0)
    r = rng.uniform(size=40)
    g = np.repeat(np.arange(4), 10)
    tau = batch_percentile_tau(_t(r), 75.0, g)
    np.testing.assert_allclose(tau.numpy(), [np.percentile(r[g == k], 75) for k in range(4)])
    with pytest.raises(ValueError, match="\\[0, 100\\]"):
        batch_percentile_tau(_t(r), 101.0)
    with pytest.raises(ValueError, match="NaN rewards"):
        batch_percentile_tau(_t([0.0, math.nan]))


@pytest.mark.parametrize("beta", [0.0, -1.0, math.nan])
def test_mara_nonpositive_beta_names_the_fix(beta):
    with pytest.raises(ValueError, match="no MARA"):
        mara_rewards(_t([1.0, 0.0]), _t([-1.0, -2.0]), beta, 0.5)
    with pytest.raises(ValueError, match="no MARA"):
        mara_target([0.5, 0.5], [1.0, 0.0], beta, 0.5)


def test_mara_nan_inputs():
    with pytest.raises(ValueError, match="NaN rewards at positions \\[1\\]"):
        mara_rewards(_t([1.0, math.nan]), _t([-1.0, -2.0]), 0.1, 0.5)
    with pytest.raises(ValueError, match="NaN rewards"):
        mara_substitute(_t([1.0, math.nan]), _t([-1.0, -2.0]), 0.5)
    with pytest.raises(ValueError, match="NaN rewards"):
        mara_anchor(_t([math.nan]), _t([-1.0]), 0.5)
    with pytest.raises(ValueError, match="NaN/inf"):
        mara_target([0.5, 0.5], [1.0, math.nan], 0.1, 0.5)
    with pytest.raises(ValueError, match="NaN reference"):
        mara_rewards(_t([1.0, 0.0]), _t([math.nan, -2.0]), 0.1, 0.5)
    with pytest.raises(ValueError, match="tau is NaN"):
        mara_rewards(_t([1.0, 0.0]), _t([-1.0, -2.0]), 0.1, math.nan)


def test_mara_shape_and_group_errors():
    with pytest.raises(ValueError, match="equal length"):
        mara_rewards(_t([1.0, 0.0]), _t([-1.0]), 0.1, 0.5)
    with pytest.raises(ValueError, match="one id per sample"):
        mara_anchor(_t([1.0, 0.0]), _t([-1.0, -2.0]), 0.5, [0])
    with pytest.raises(ValueError, match=">= 0"):
        mara_anchor(_t([1.0, 0.0]), _t([-1.0, -2.0]), 0.5, [0, -1])
    with pytest.raises(ValueError, match="one tau per group id"):
        mara_rewards(_t([1.0, 0.0, 0.5]), _t([-1.0, -2.0, -1.0]), 0.1, _t([0.5, 0.5]), [0, 1, 2])


def test_mara_target_tau_above_every_reward():
    with pytest.raises(ValueError, match="choose tau <= max R"):
        mara_target([0.5, 0.5], [1.0, 0.0], 0.1, 1.5)


# ----------------------------------------------------------------------------------------------
# forward-KL target of Algorithm 2, anchor variants
# ----------------------------------------------------------------------------------------------
@SETTINGS
@given(instance())
def test_mara_forward_target_is_alg2_stationary_point_and_uniform(inst):
    ref, r, beta, tau = inst
    g = mara_forward_target(ref, r, beta, tau)
    r2, l2 = mara_substitute(_t(r), _t(np.log(ref)), tau)
    np.testing.assert_allclose(g, _forward_target_unnormalized(np.exp(l2.numpy()), r2.numpy(), beta),
                               rtol=1e-8)
    assert g.sum() == pytest.approx(1.0, abs=1e-12)
    assert max_min_ratio(g, r >= tau) == pytest.approx(1.0, abs=1e-10)


def test_mara_forward_target_below_tau_follows_reference_shape():
    ref = np.array([0.1, 0.2, 0.3, 0.4])
    r = np.array([1.0, 1.0, 0.0, 0.0])
    g = mara_forward_target(ref, r, 0.5, 1.0)
    assert g[0] == pytest.approx(g[1], rel=1e-12)
    assert g[3] / g[2] == pytest.approx(4 / 3, rel=1e-12)  # equal rewards below tau: ratio of ref


def naive_anchor_variant(rewards, logref, group, tau, kind):
    out = []
    for g in group:
        idx = [j for j, h in enumerate(group) if h == g and rewards[j] >= tau]
        if not idx:
            out.append(-1)
            continue
        if kind == "reward":
            top = max(rewards[j] for j in idx)
            idx = [j for j in idx if rewards[j] == top]
        best = idx[0]
        for j in idx:
            if logref[j] > logref[best]:
                best = j
        out.append(best)
    return out


@SETTINGS
@given(grouped_batch())
def test_reward_anchor_matches_naive_loop(batch):
    rewards, logref, group, tau = batch
    got = mara_anchor(_t(rewards), _t(logref), tau, group, anchor="reward").tolist()
    assert got == naive_anchor_variant(rewards, logref, group, tau, "reward")
    assert mara_anchor(_t(rewards), _t(logref), tau, group, anchor="support").tolist() == \
        naive_anchor(rewards, logref, group, tau)


@SETTINGS
@given(grouped_batch())
def test_random_anchor_is_a_good_sample_of_the_same_group(batch):
    rewards, logref, group, tau = batch
    gen = torch.Generator().manual_seed(0)
    z = mara_anchor(_t(rewards), _t(logref), tau, group, anchor="random", generator=gen).tolist()
    for i, g in enumerate(group):
        has_good = any(rewards[j] >= tau for j, h in enumerate(group) if h == g)
        assert (z[i] >= 0) == has_good
        if z[i] >= 0:
            assert group[z[i]] == g and rewards[z[i]] >= tau
            assert z[i] == z[group.index(g)]  # one anchor per group


def test_random_anchor_covers_every_good_sample():
    r, lr = _t([1.0, 1.0, 1.0, 0.0]), _t([-1.0, -2.0, -3.0, -0.5])
    gen = torch.Generator().manual_seed(1)
    seen = {int(mara_anchor(r, lr, 1.0, anchor="random", generator=gen)[0]) for _ in range(200)}
    assert seen == {0, 1, 2}


def test_reward_anchor_target_is_constant_on_good_set_with_its_own_level():
    ref = np.array([0.4, 0.3, 0.2, 0.1])
    r = np.array([0.8, 0.0, 0.9, 1.0])
    for fn in (mara_target, mara_forward_target):
        for anchor in ("support", "reward"):
            g = fn(ref, r, 0.5, 0.8, anchor=anchor)
            assert max_min_ratio(g, r >= 0.8) == pytest.approx(1.0, abs=1e-10)
    # reverse KL: the level is pi_ref(z) exp(R(z) / beta) with z = 0 (support) or 3 (reward)
    gs, gr = mara_target(ref, r, 0.5, 0.8), mara_target(ref, r, 0.5, 0.8, anchor="reward")
    assert gs[0] / gs[1] == pytest.approx(0.4 * math.exp(0.8 / 0.5) / 0.3, rel=1e-12)
    assert gr[0] / gr[1] == pytest.approx(0.1 * math.exp(1.0 / 0.5) / 0.3, rel=1e-12)


def test_anchor_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown anchor 'best'"):
        mara_anchor(_t([1.0]), _t([-1.0]), 0.5, anchor="best")
    with pytest.raises(ValueError, match="no whole-space target"):
        mara_target([0.5, 0.5], [1.0, 0.0], 0.1, 0.5, anchor="random")
    with pytest.raises(ValueError, match="choose tau <= max R"):
        mara_forward_target([0.5, 0.5], [1.0, 0.0], 0.1, 1.5)
    assert ANCHORS[0] == "support"


def test_toy_trainer_accepts_anchor_variants():
    from mdkl.toy import ToyConfig, train_categorical

    cfg = ToyConfig(beta=0.5, mara="auto", tau=1.0, steps=30, n_seeds=2, batch_size=8)
    base = train_categorical(cfg, [1.0, 1.0, 0.0], [0.6, 0.1, 0.3]).final
    np.testing.assert_array_equal(train_categorical(cfg.replace(anchor="support"), [1.0, 1.0, 0.0],
                                                    [0.6, 0.1, 0.3]).final, base)
    for anchor in ("reward", "random"):
        out = train_categorical(cfg.replace(anchor=anchor), [1.0, 1.0, 0.0], [0.6, 0.1, 0.3]).final
        assert np.all(np.isfinite(out)) and np.allclose(out.sum(1), 1.0)


def test_tau_against_the_reward_range_refuses_above_and_warns_at_or_below():
    """A fixed tau above every reward makes MARA silently vanilla; at or below the lowest reward an
    invalid output can anchor. Inside the range nothing is said."""
    from mdkl.mara import check_tau_in_reward_range

    with pytest.raises(ValueError, match=r"tau=1.5 is above every reward.*choose tau <= 1.0"):
        check_tau_in_reward_range(1.5, 0.0, 1.0)
    with pytest.warns(UserWarning, match=r"tau=0.0 <= the lowest reward 0.0.*choose tau > 0.0"):
        check_tau_in_reward_range(0.0, 0.0, 1.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for tau in (0.01, 0.5, 1.0):
            check_tau_in_reward_range(tau, 0.0, 1.0)
        check_tau_in_reward_range(-5.0, -float("inf"), 1.0)  # lowest reward unknown: no warning
    with pytest.raises(ValueError, match="finite max"):
        check_tau_in_reward_range(0.5, 0.0, float("nan"))
