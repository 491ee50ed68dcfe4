"""Exact objectives (mdkl.exact): values equal mdkl.targets' objectives, and exact gradient ascent
converges to the closed-form targets (Rem. 3.1, 3.3, App. B.1, B.3)."""

import numpy as np
import pytest
import torch

from mdkl.exact import exact_objective, maximize_exact_objective
from mdkl.targets import (entropy_regularized_target, forward_kl_objective, forward_kl_target,
                          kl_divergence, reverse_kl_objective, reverse_kl_target)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("trial", range(5))
def test_exact_objective_matches_targets_objectives(trial):
    rng = np.random.default_rng(trial)
    k = 7
    ref, r, beta = rng.dirichlet(np.ones(k)), rng.normal(size=k) * 3, rng.uniform(0.01, 2)
    logits = torch.as_tensor(rng.normal(size=k) * 2)
    pi = torch.softmax(logits, -1).numpy()
    assert float(exact_objective(logits, ref, r, beta, "reverse")) == pytest.approx(
        reverse_kl_objective(pi, ref, r, beta), rel=1e-12, abs=1e-12)
    assert float(exact_objective(logits, ref, r, beta, "forward")) == pytest.approx(
        forward_kl_objective(pi, ref, r, beta), rel=1e-12, abs=1e-12)
    h = -(pi * np.log(pi)).sum()
    assert float(exact_objective(logits, ref, r, beta, "reverse", eta=0.3)) == pytest.approx(
        reverse_kl_objective(pi, ref, r, beta) + 0.3 * h, rel=1e-12, abs=1e-12)


def test_gradient_is_exact_vs_finite_differences():
    ref, r = np.array([0.5, 0.3, 0.2]), np.array([0.0, 1.0, 0.4])
    logits = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    for kl in ("reverse", "forward"):
        g, = torch.autograd.grad(exact_objective(logits, ref, r, 0.3, kl), logits)
        fd = []
        for i in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[i] = 1e-6
            fd.append(float(exact_objective(logits.detach() + e, ref, r, 0.3, kl)
                            - exact_objective(logits.detach() - e, ref, r, 0.3, kl)) / 2e-6)
        np.testing.assert_allclose(g.numpy(), fd, atol=1e-8)


@pytest.mark.parametrize("kl,eta", [("reverse", 0.0), ("forward", 0.0), ("reverse", 0.2)])
def test_ascent_converges_to_closed_form(kl, eta):
    ref, r, beta = np.array([0.1, 0.4, 0.3, 0.2]), np.array([1.0, 0.2, 0.5, 0.0]), 0.3
    res = maximize_exact_objective(ref, r, beta, kl, eta=eta, steps=1500)
    if eta:
        target = entropy_regularized_target(ref, r, beta, eta)
    else:
        target = (reverse_kl_target if kl == "reverse" else forward_kl_target)(ref, r, beta)
    assert kl_divergence(target, res.pi) < 1e-4
    assert res.objective[-1] >= res.objective[0]


def test_forward_off_support_ascent_matches_app_b3():
    # best answer has pi_ref = 0 and a reward far above the rest: G_fwd puts mass there
    ref, r, beta = np.array([0.6, 0.4, 0.0]), np.array([0.0, 0.5, 2.0]), 0.5
    target = forward_kl_target(ref, r, beta)
    assert target[2] > 0.1
    res = maximize_exact_objective(ref, r, beta, "forward", steps=1500)
    np.testing.assert_allclose(res.pi, target, atol=1e-3)


def test_bad_input_raises_naming_the_fix():
    with pytest.raises(ValueError, match="kl='forward'"):
        exact_objective(torch.zeros(2), [1.0, 0.0], [0.0, 1.0], 0.1, "reverse")
    with pytest.raises(ValueError, match="'reverse' or 'forward'"):
        exact_objective(torch.zeros(2), [0.5, 0.5], [0.0, 1.0], 0.1, "sideways")
    with pytest.raises(ValueError, match="beta"):
        maximize_exact_objective([0.5, 0.5], [0.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="shape"):
        exact_objective(torch.zeros(3), [0.5, 0.5], [0.0, 1.0], 0.1)
