"""Which divergence each KL-estimator placement optimizes (mdkl.kl's table).

For a categorical pi = softmax(theta) we take the EXACT expectation over y ~ pi of each
placement's per-sample gradient (all actions enumerated, autograd through log pi(y) only, the
sampling weights detached as on-policy sampling does) and compare it with central finite
differences of the exact KL(pi || pi_ref) and KL(pi_ref || pi) with respect to theta.
"""

import numpy as np
import pytest
import torch

from mdkl.kl import (
    KL_PLACEMENTS,
    k1,
    k2,
    k3,
    kl_estimate,
    kl_gradient_direction,
    kl_loss,
    kl_reward_penalty,
)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _reverse_kl(theta, ref):
    p = _softmax(theta)
    return float(np.sum(p * (np.log(p) - np.log(ref))))


def _forward_kl(theta, ref):
    p = _softmax(theta)
    return float(np.sum(ref * (np.log(ref) - np.log(p))))


def _fd_grad(f, theta, h=1e-6):
    g = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        g[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    return g


def _problem(seed, k=6):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1.5, k)
    ref = rng.dirichlet(np.ones(k))
    return theta, ref


def _expected_loss_grad(theta, ref, estimator, beta=1.0):
    """grad_theta of sum_y pi(y) [detached] * kl_loss(log pi(y)): E_pi of the per-sample gradient."""
    t = torch.tensor(theta, requires_grad=True)
    logp = torch.log_softmax(t, 0)
    w = logp.exp().detach()
    loss = (w * kl_loss(logp, torch.tensor(np.log(ref)), beta, estimator)).sum()
    (g,) = torch.autograd.grad(loss, t)
    return g.numpy()


def _expected_reward_grad(theta, ref, estimator="k1", beta=1.0):
    """Policy-gradient direction E_pi[f(y) grad log pi(y)] with f = kl_reward_penalty (ascent)."""
    t = torch.tensor(theta, requires_grad=True)
    logp = torch.log_softmax(t, 0)
    f = kl_reward_penalty(logp, torch.tensor(np.log(ref)), beta, estimator)
    assert not f.requires_grad  # detached: enters only through the advantage
    w = logp.exp().detach()
    (g,) = torch.autograd.grad((w * f * logp).sum(), t)
    return g.numpy()


@pytest.mark.parametrize("seed", range(5))
def test_k1_in_reward_is_minus_reverse_kl_gradient(seed):
    theta, ref = _problem(seed)
    beta = 0.37
    got = _expected_reward_grad(theta, ref, "k1", beta)
    np.testing.assert_allclose(got, -beta * _fd_grad(lambda z: _reverse_kl(z, ref), theta), atol=1e-8)


@pytest.mark.parametrize("seed", range(5))
def test_k1_as_loss_has_zero_expected_gradient(seed):
    theta, ref = _problem(seed)
    np.testing.assert_allclose(_expected_loss_grad(theta, ref, "k1"), 0.0, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_k2_loss_is_reverse_kl_gradient(seed):
    theta, ref = _problem(seed)
    got = _expected_loss_grad(theta, ref, "k2", beta=2.0)
    np.testing.assert_allclose(got, 2.0 * _fd_grad(lambda z: _reverse_kl(z, ref), theta), atol=1e-8)
    # and not the forward one (the two differ away from pi = pi_ref)
    assert np.abs(got - 2.0 * _fd_grad(lambda z: _forward_kl(z, ref), theta)).max() > 1e-3


@pytest.mark.parametrize("seed", range(5))
def test_k3_loss_is_forward_kl_gradient(seed):
    theta, ref = _problem(seed)
    got = _expected_loss_grad(theta, ref, "k3")
    np.testing.assert_allclose(got, _fd_grad(lambda z: _forward_kl(z, ref), theta), atol=1e-8)
    assert np.abs(got - _fd_grad(lambda z: _reverse_kl(z, ref), theta)).max() > 1e-3


@pytest.mark.parametrize("seed", range(3))
def test_estimator_values(seed):
    """k1 and k3 are unbiased for KL(pi || pi_ref) as values; k3 >= 0 per sample; closed forms."""
    theta, ref = _problem(seed)
    p = _softmax(theta)
    logp, lref = torch.tensor(np.log(p)), torch.tensor(np.log(ref))
    kl = _reverse_kl(theta, ref)
    assert float((torch.tensor(p) * k1(logp, lref)).sum()) == pytest.approx(kl, rel=1e-12)
    assert float((torch.tensor(p) * k3(logp, lref)).sum()) == pytest.approx(kl, rel=1e-10)
    assert torch.all(k3(logp, lref) >= 0)
    ratio = ref / p
    np.testing.assert_allclose(k3(logp, lref).numpy(), ratio - np.log(ratio) - 1, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(k2(logp, lref).numpy(), 0.5 * np.log(p / ref) ** 2, rtol=1e-12)
    for name, fn in (("k1", k1), ("k2", k2), ("k3", k3)):
        assert torch.equal(kl_estimate(logp, lref, name), fn(logp, lref))


def test_kl_loss_detaches_reference():
    logp = torch.tensor([-1.0, -2.0], dtype=torch.float64, requires_grad=True)
    lref = torch.tensor([-1.5, -0.5], dtype=torch.float64, requires_grad=True)
    kl_loss(logp, lref, 0.1, "k3").sum().backward()
    assert lref.grad is None and logp.grad is not None


def test_gradient_direction_table():
    assert kl_gradient_direction("k1", "reward") == "reverse"
    assert kl_gradient_direction("k1", "loss") == "none"
    assert kl_gradient_direction("k2", "loss") == "reverse"
    assert kl_gradient_direction("k3", "loss") == "forward"
    for direction, (est, place) in KL_PLACEMENTS.items():
        assert kl_gradient_direction(est, place) == direction.split("_")[0]


@pytest.mark.parametrize("bad", [("k2", "reward"), ("k3", "reward"), ("k4", "loss"), ("k1", "advantage")])
def test_gradient_direction_rejects_unsupported(bad):
    with pytest.raises(ValueError, match="unsupported KL placement"):
        kl_gradient_direction(*bad)


def test_unknown_estimator():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="use 'k1', 'k2' or 'k3'"):
        kl_estimate(x, x, "k4")
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_loss(x, x, 0.1, "kl")
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_reward_penalty(x, x, 0.1, "K1")
