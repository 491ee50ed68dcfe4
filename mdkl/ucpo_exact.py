"""UCPO's exact target at a finite group size G (``notebooks/08_successors.ipynb``);
:func:`mdkl.successors.ucpo_target` is its large-group limit.

UCPO (Lochab, Li & Zhang, arXiv 2605.00365; :func:`mdkl.successors.ucpo_advantages`) gives the k >= 2
correct samples of a group the advantage a_k ((1 - t) + t k (1/pi(y_i)) / sum_l 1/pi(y_l)), a_k the
baseline's advantage of a correct sample when k of the G samples are correct; incorrect samples keep
theirs. For 0/1 rewards and a categorical policy with free logits (the toy) the expected update is
pi(y) (E[A | y] - E_pi[A]) with E_pi[A] = 0, so with a KL term the target solves
E[A | y] - beta log(pi(y) / pi_ref(y)) = const (reverse) or E[A | y] + beta pi_ref(y) / pi(y) = const
(forward). The large-group limit replaces E[A | y] by (1 - m)((1 - t) + t m / (|C| pi(y))); at a
group of G the inverse-probability share is an expectation over the other correct samples, which
:func:`ucpo_expected_advantages` computes exactly (Laplace form of 1 / x, below).

Kept apart from :mod:`mdkl.successors` because that module's source keys every cached training run.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import gammaln

from mdkl.successors import kl_logit_gradient, separable_fixed_point, ucpo_target
from mdkl.targets import check_beta, check_ref, check_rewards

__all__ = ["ucpo_expected_advantages", "ucpo_expected_gradient", "ucpo_group_target"]

BASELINES = ("rloo", "mean")


def _check(rewards, tau: float, group_size: int, ucpo_tau: float, baseline: str) -> np.ndarray:
    r = check_rewards(rewards)
    if not np.all((r == 0) | (r == 1)):
        raise ValueError("the finite-group UCPO target is derived for 0/1 rewards")
    if not 0.0 <= ucpo_tau <= 1.0:
        raise ValueError(f"ucpo_tau must be in [0, 1] (got {ucpo_tau}; released scripts: 0.2)")
    if int(group_size) != group_size or group_size < 2:
        raise ValueError(f"group_size must be an integer >= 2 (got {group_size}); "
                         "mdkl.successors.ucpo_target is the large-group limit")
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: use one of {BASELINES}")
    good = r >= tau
    if not good.any():
        raise ValueError(f"tau={tau} is above every reward: choose tau <= 1")
    return good


def _advantage_parts(pi: np.ndarray, good: np.ndarray, G: int, t: float, baseline: str, step: float = 0.1):
    """(f, a_bad): f(log pi_y) = E[A | y] for a correct output of probability pi_y, the other G - 1
    samples drawn from ``pi``; a_bad = E[A | y] for an incorrect output.

    With J ~ Bin(G - 1, m) the other correct samples, S_J the sum of their 1 / pi and
    phi(s) = E[e^{-s / pi(Y)}], Y ~ pi restricted to C:
    E[A | y] = sum_j P(J = j) a_{j+1} ((1 - t) + t (j + 1) E[(1/pi_y) / (1/pi_y + S_j)]) and
    E[(1/pi_y) / (1/pi_y + S_j)] = int_0^inf e^{-u} phi(u pi_y)^j du (1/x = int e^{-sx} ds). Summed over j,
    int_0^inf e^{-u} h(u pi_y) du with h = H o phi, H(x) = sum_j P(J = j) a_{j+1} (j + 1) x^j; by parts it is
    H(1) + int e^{-s / pi_y} dh(s), evaluated on a grid of log s (trapezoid rule with ``step``; the
    integrand is smooth in log s, so 0.1 is exact to rounding). The j = 0 term is a group with one
    correct sample, which UCPO leaves alone: (1 - t) + t = 1, as it should."""
    bad = float(pi[~good].sum())  # the incorrect mass, exact when it is tiny
    m = 1.0 - bad
    j = np.arange(G, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm, lbad = math.log1p(-bad), (math.log(bad) if bad > 0 else -np.inf)
        logpmf = (gammaln(G) - gammaln(j + 1) - gammaln(G - j) + np.where(j > 0, j * lm, 0.0)
                  + np.where(G - 1 - j > 0, (G - 1 - j) * lbad, 0.0))
    pmf = np.exp(logpmf)
    denom = G - 1 if baseline == "rloo" else G
    a = (G - (j + 1)) / denom  # a_{j+1}: a correct sample's advantage with j + 1 correct in the group
    c = pmf * a * (j + 1)  # H(x) = sum_j c_j x^j
    pc = pi[good & (pi > 0)]
    lpc = np.log(pc)
    w = np.arange(lpc.min() - 40.0, lpc.max() + 5.0, step)  # log s: phi is 1 below, 0 above this range
    s = np.exp(w)
    e = np.exp(-s[:, None] / pc[None, :])
    q = pc / pc.sum()  # Y ~ pi restricted to the correct set
    phi = np.clip(e @ q, 0.0, 1.0)
    dphi = -(e * (s[:, None] / pc[None, :])) @ q  # d phi / d log s
    jj = j[1:]
    dh = (np.power(phi[:, None], jj[None, :] - 1) @ (c[1:] * jj)) * dphi * step  # H'(phi) dphi, per grid cell
    base = (1 - t) * float(pmf @ a) + t * float(c.sum())
    a_bad = -(G - 1) * m / denom  # incorrect samples keep the baseline's advantage -k / denom

    def f(lg):
        with np.errstate(over="ignore"):
            return base + t * (np.exp(-s[None, :] * np.exp(-np.asarray(lg, dtype=np.float64))[:, None]) @ dh)

    return f, a_bad


def ucpo_expected_advantages(pi, rewards, tau: float, group_size: int = 32, ucpo_tau: float = 0.2,
                             baseline: str = "rloo") -> np.ndarray:
    """E[A | y] of :func:`mdkl.successors.ucpo_advantages` for every output y: the advantage a
    sample equal to y gets, averaged over the other G - 1 samples of its group drawn from ``pi``
    (0/1 rewards, correct = R >= tau, one-token outputs so the length normalization is moot;
    the transform's clamp q >= 1e-6 is left out). Notebook 08, §1 (UCPO), with m = pi(C),
    J ~ Bin(G - 1, m) the other correct samples and t = ``ucpo_tau``:

        E[A | y in C] = sum_j P(J = j) a_{j+1} ((1 - t) + t (j + 1) int_0^inf e^{-u} phi(u pi(y))^j du),
        phi(s) = sum_{z in C} pi(z)/m e^{-s/pi(z)},      E[A | y not in C] = -(G - 1) m / denom,

    a_k = (G - k)/denom the advantage of a correct sample with k correct in the group;
    ``baseline`` 'rloo' (denom = G - 1, the toy's) or 'mean' (denom = G). Evaluated as in
    :func:`_advantage_parts`."""
    pi = np.asarray(pi, dtype=np.float64)
    good = _check(rewards, tau, group_size, ucpo_tau, baseline)
    pi = check_ref(pi, good.size)
    f, a_bad = _advantage_parts(pi, good, int(group_size), ucpo_tau, baseline)
    with np.errstate(divide="ignore"):
        lg = np.log(pi)
    return np.where(good, f(lg), a_bad)


def ucpo_expected_gradient(pi, ref, rewards, beta: float, tau: float, kl: str = "reverse", group_size: int = 32,
                           ucpo_tau: float = 0.2, baseline: str = "rloo") -> np.ndarray:
    """Exact expected logit update (ascent direction) of UCPO with a categorical policy and groups of
    ``group_size``: pi(y) E[A | y] (:func:`ucpo_expected_advantages`; E_pi[A] = 0 because the baseline's
    advantages sum to zero in every group and UCPO keeps the correct samples' total) minus beta times
    the gradient of the KL the k2 (reverse) or k3 (forward) loss follows."""
    pi = np.asarray(pi, dtype=np.float64)
    p = check_ref(ref, pi.size)
    beta = check_beta(beta)
    adv = ucpo_expected_advantages(pi, rewards, tau, group_size, ucpo_tau, baseline)
    return pi * adv - beta * kl_logit_gradient(pi, p, kl)


def ucpo_group_target(ref, rewards, beta: float, tau: float, kl: str = "reverse", ucpo_tau: float = 0.2,
                      group_size: int = 32, baseline: str = "rloo", tol: float = 1e-10,
                      max_iter: int = 100) -> np.ndarray:
    """Fixed point of UCPO's expected update at a finite group size (0/1 rewards; notebook 08, §1): pi with
    E[A | y] - beta log(pi(y)/pi_ref(y)) (reverse) or E[A | y] + beta pi_ref(y)/pi(y) (forward) equal
    for every y in pi_ref's support, E[A | y] from :func:`ucpo_expected_advantages`.

    E[A | y] depends on pi(y) and, through the other samples of the group, on all of pi: starting
    from the large-group target (:func:`mdkl.successors.ucpo_target`), each step freezes the other
    samples' distribution at the current pi and solves the per-output condition exactly
    (:func:`mdkl.successors.separable_fixed_point`), until log pi moves by less than ``tol``.
    Tends to :func:`mdkl.successors.ucpo_target` as G grows (the gap shrinks like 1/G). Check the
    result with :func:`ucpo_expected_gradient` (it must vanish)."""
    good = _check(rewards, tau, group_size, ucpo_tau, baseline)
    p = check_ref(ref, good.size)
    beta = check_beta(beta)
    if kl not in ("reverse", "forward"):
        raise ValueError(f"unknown kl {kl!r}: use 'reverse' or 'forward'")
    sup = p > 0
    g, lp_ref = good[sup], np.log(p[sup])
    if not g.any():
        raise ValueError("pi_ref puts no mass on the correct set: UCPO has no correct sample to act on")
    pi = ucpo_target(p, good.astype(float), beta, 0.5, kl, ucpo_tau)[sup]
    pi = pi / pi.sum()
    for _ in range(max_iter):
        f, a_bad = _advantage_parts(pi, g, int(group_size), ucpo_tau, baseline)

        def v(lg):
            a = np.where(g, f(lg), a_bad)
            return a - beta * (lg - lp_ref) if kl == "reverse" else a + beta * np.exp(lp_ref - lg)

        new = separable_fixed_point(v, g.size)
        moved = float(np.abs(np.log(new) - np.log(pi)).max())
        pi = new
        if moved < tol:
            out = np.zeros(p.size)
            out[sup] = pi
            return out
    raise RuntimeError(f"UCPO's finite-group fixed point did not settle in {max_iter} steps (last move {moved:.1e} "
                       f"in log pi): raise max_iter, or compare with mdkl.successors.ucpo_target")
