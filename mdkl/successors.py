"""The reward / advantage / loss transforms proposed after MARA against the same mode collapse, and
their exact targets on a finite output space (``notebooks/08_successors.ipynb``).

Four methods, each one function with the inputs MARA takes (rewards, sequence log-probs, group ids),
selected in every trainer by :attr:`SuccessorFields.successor` through :mod:`mdkl.shaping`:

- :func:`differential_smoothing_rewards` (Gai et al., arXiv 2511.19942): a reward transform;
- :func:`inverse_probability_rewards` (Sinha, Elango & Liu, arXiv 2601.21669): a reward transform
  that needs each sample's *outcome* (token, answer string, canonical SMILES) as an integer id;
- :func:`ucpo_advantages` (Lochab, Li & Zhang, arXiv 2605.00365): an advantage transform;
- :func:`flow_balance_loss` (FlowRL, Zhu et al., arXiv 2509.15207): a loss with a learned log Z
  that replaces REINFORCE and the KL term.

Exact targets (fixed points of each method's *expected* update on a categorical policy with free
logits): :func:`diff_smooth_target` (closed form), :func:`ips_target` (finite group size G or the
large-G limit), :func:`ucpo_target` (large-G limit, 0/1 rewards), :func:`flowrl_target` (finite G,
0/1 rewards). :func:`separable_fixed_point` is the solver the last three share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import gammaln, logsumexp

from mdkl.targets import check_beta, check_ref, check_rewards, forward_kl_target, reverse_kl_target

__all__ = ["SUCCESSORS", "SuccessorFields", "check_successor", "differential_smoothing_rewards", "outcome_ids",
           "outcome_shares", "inverse_probability_rewards", "ucpo_advantages", "flow_balance_loss",
           "diff_smooth_target", "separable_fixed_point", "ips_expected_gradient", "ips_target",
           "ucpo_target", "flowrl_expected_advantages", "flowrl_target", "kl_logit_gradient"]

#: values of :attr:`SuccessorFields.successor`
SUCCESSORS = ("none", "diff_smooth", "ips", "ucpo", "flowrl")


@dataclass(frozen=True)
class SuccessorFields:
    """The fields that select and parameterize a successor method; :class:`mdkl.shaping.ShapingConfig`,
    :class:`mdkl.toy.ToyConfig` and :class:`mdkl.lm.LMConfig` inherit them, so every trainer
    has the same names. A sample is *correct* when its reward is >= ``tau`` (the MARA threshold)."""

    successor: Literal["none", "diff_smooth", "ips", "ucpo", "flowrl"] = "none"
    """Method applied by the shaping path: 'diff_smooth' (reward), 'ips' (reward), 'ucpo'
    (advantage), 'flowrl' (loss; the trainer owns a learned log Z); 'none' = off. Not with MARA."""
    gamma_p: float | None = None
    """Differential Smoothing: coefficient of -log pi_ref on correct samples (None = beta, the
    value whose reverse-KL target is uniform on the correct set)."""
    gamma_n: float = 0.0
    """Differential Smoothing: coefficient of +log pi_ref on incorrect samples."""
    ips_alpha: float = 1.0
    """Inverse-probability scaling: exponent alpha of r / p_hat^alpha (1: r / p_hat)."""
    ips_eps: float = 1e-6
    """Inverse-probability scaling: floor of the outcome share p_hat (inert while eps <= 1/G)."""
    ucpo_tau: float = 0.2
    """UCPO: weight of the inverse-probability share in the blend with the uniform share (released
    scripts: 0.2; 0 = GRPO, 1 = advantage proportional to 1/pi)."""
    ucpo_length_norm: bool = True
    """UCPO: divide sequence log-probs by the completion length before the softmax over the
    correct set (the paper's form, and what the released 'iq' estimator computes)."""
    flow_scale: float | None = None
    """FlowRL: the coefficient c of the target pi_ref exp(c A) (None = 1/beta, the Gibbs target
    G_beta of the advantages; FlowRL's released code uses 15)."""


def check_successor(cfg, beta: float, kl_term: bool, mara: str, tau, advantage: str) -> None:
    """``ValueError`` naming the fix for a successor setting that cannot act as configured."""
    s = cfg.successor
    if s not in SUCCESSORS:
        raise ValueError(f"unknown successor {s!r}: use one of {SUCCESSORS}")
    if s == "none":
        return
    if mara != "none":
        raise ValueError(f"successor={s!r} replaces MARA's transform: set mara='none' (or successor='none')")
    for name in ("gamma_n", "ips_eps"):
        v = getattr(cfg, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be finite and >= 0 (got {v})")
    if s in ("diff_smooth", "ucpo") and tau is None:
        raise ValueError(f"successor={s!r} needs the correct-set threshold tau (e.g. tau=1.0 for 0/1 rewards)")
    if s == "diff_smooth":
        gp = beta if cfg.gamma_p is None else cfg.gamma_p
        if not math.isfinite(gp) or gp < 0:
            raise ValueError(f"gamma_p must be finite and >= 0 (got {gp})")
        if gp == 0 and cfg.gamma_n == 0:
            raise ValueError("Differential Smoothing with gamma_p = gamma_n = 0 (gamma_p=None takes beta, here 0) "
                             "is vanilla RL: set beta > 0 or gamma_p > 0")
    if s == "ips" and not (math.isfinite(cfg.ips_alpha) and cfg.ips_alpha > 0):
        raise ValueError(f"ips_alpha must be > 0 (got {cfg.ips_alpha}; 1 = r / p_hat)")
    if s == "ucpo" and not 0.0 <= cfg.ucpo_tau <= 1.0:
        raise ValueError(f"ucpo_tau must be in [0, 1] (got {cfg.ucpo_tau}; released scripts: 0.2)")
    if s == "flowrl":
        if kl_term:
            raise ValueError("FlowRL's squared loss already matches pi_ref exp(c A): set kl='none' (beta then only "
                             "sets c = 1/beta when flow_scale is None)")
        c = cfg.flow_scale if cfg.flow_scale is not None else (1.0 / beta if beta > 0 else float("nan"))
        if not (math.isfinite(c) and c > 0):
            raise ValueError("FlowRL needs flow_scale > 0, or beta > 0 for flow_scale=None (c = 1/beta)")
        if advantage != "grpo":
            raise ValueError("FlowRL matches pi_ref exp(c A) with GRPO's group-normalized A: use advantage='grpo'")


# ----------------------------------------------------------------------------------------------
# the transforms
# ----------------------------------------------------------------------------------------------
def differential_smoothing_rewards(rewards: torch.Tensor, logp_ref: torch.Tensor, correct: torch.Tensor,
                                   gamma_p: float, gamma_n: float = 0.0) -> torch.Tensor:
    """Differential Smoothing (Gai et al., arXiv 2511.19942): r - gamma_p log pi_base(y) on correct
    samples, r + gamma_n log pi_base(y) on incorrect ones, with pi_base = pi_ref here.

    Under reverse KL the target pi_ref exp(r'/beta) is, on the correct set,
    pi_ref^(1 - gamma_p/beta) exp(r/beta): uniform over equal-reward correct outputs at
    gamma_p = beta, i.e. MARA's Remark B.3 target without the anchor's constant pi_ref(z)
    (:func:`diff_smooth_target`). Acts per sample, so no group is needed."""
    lref = logp_ref.to(rewards.dtype)
    if torch.isnan(lref).any() or torch.isposinf(lref).any():
        raise ValueError("logp_ref contains NaN or +inf: pass sequence log-probs of the reference")
    return torch.where(correct, rewards - gamma_p * lref, rewards + gamma_n * lref)


def outcome_ids(labels) -> torch.Tensor:
    """Integer ids of hashable outcome labels (answer strings, canonical SMILES): equal labels, equal id."""
    table: dict = {}
    return torch.tensor([table.setdefault(x, len(table)) for x in labels], dtype=torch.long)


def outcome_shares(outcomes: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """p_hat(o_i): the share of sample i's group whose outcome equals o_i (>= 1/G)."""
    o = torch.as_tensor(outcomes)
    g = torch.as_tensor(group, device=o.device)
    if o.is_floating_point() or o.shape != g.shape or o.ndim != 1:
        raise ValueError("outcomes must be one integer id per sample (e.g. the token, or mdkl.successors.outcome_ids "
                         f"of the answer strings); got {o.dtype} {tuple(o.shape)} for group {tuple(g.shape)}")
    _, pair = torch.unique(torch.stack([g.long(), o.long()]), dim=1, return_inverse=True)
    count = torch.bincount(pair)[pair]
    size = torch.bincount(g.long())[g.long()]
    return count.double() / size.double()


def inverse_probability_rewards(rewards: torch.Tensor, outcomes: torch.Tensor, group: torch.Tensor,
                                alpha: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Inverse-probability scaling (Sinha, Elango & Liu, arXiv 2601.21669): r_i / max(p_hat(o_i), eps)^alpha,
    p_hat(o) the share of the group with outcome o (:func:`outcome_shares`); the group advantage
    is then formed as usual. alpha = 1 is their r / p_hat, alpha < 1 the tempered r / p^alpha.

    A group's scaled rewards sum to G^alpha sum_o r_o n_o^(1 - alpha): with alpha = 1, G times the
    summed reward of the *distinct* outcomes present, whatever their counts."""
    share = outcome_shares(outcomes, group).to(rewards.dtype)
    return rewards / share.clamp(min=eps) ** alpha


def ucpo_advantages(adv: torch.Tensor, correct: torch.Tensor, logp: torch.Tensor, group: torch.Tensor,
                    tau: float = 0.2, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """UCPO's inverse-probability advantage ('iq' estimator of Lochab, Li & Zhang, arXiv 2605.00365,
    AnamikaLochab/UCPO ``compute_dgrpo_advantage_outcome_invq_l``).

    Within each group with at least two correct samples C: q_i = softmax_{j in C}(l_j) with
    l = log pi(y) / length (``lengths`` given) or log pi(y); weights w_i = (1 - tau) / |C|
    + tau (1/q_i) / sum_{j in C} 1/q_j (q clamped at 1e-6); new A_i = mean_{j in C} A_j |C| w_i,
    so the group's total positive advantage is kept (with 0/1 rewards every correct A_j is the
    same, the released code's A_base). Incorrect samples keep their advantage (released alpha = 0)."""
    a = adv.clone()
    g = torch.as_tensor(group, device=adv.device).long()
    lp = logp.detach().to(adv.dtype)
    if lengths is not None:
        lp = lp / torch.as_tensor(lengths, device=adv.device).to(adv.dtype).clamp(min=1)
    for k in torch.unique(g[correct]).tolist():
        idx = torch.nonzero((g == k) & correct).squeeze(-1)
        n = idx.numel()
        if n < 2:
            continue
        q = torch.softmax(lp[idx], 0).clamp(min=1e-6)
        inv = 1.0 / q
        w = (1.0 - tau) / n + tau * inv / inv.sum()
        a[idx] = adv[idx].mean() * n * w
    return a


def flow_balance_loss(logp: torch.Tensor, logp_ref: torch.Tensor, adv: torch.Tensor, log_z: torch.Tensor,
                      scale: float, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """FlowRL's trajectory-balance loss (Zhu et al., arXiv 2509.15207; Xuekai-Zhu/FlowRL
    ``compute_flowrl_objective``, on-policy so its importance weight is 1):
    mean over samples of (log Z + log pi(y)/|y| - log pi_ref(y)/|y| - c A_hat)^2.

    Its fixed point is pi proportional to pi_ref exp(c E[A_hat | y]): the Gibbs target G_beta of the
    advantages at c = 1/beta (:func:`flowrl_target`). ``log_z`` broadcasts against the leading axes
    (the toy: one scalar per seed, shape [n_seeds, 1]; FlowRL: a head on the prompt's hidden
    state). Samples on the last axis; ``lengths`` (completion token counts) gives FlowRL's
    per-token means, None the sequence log-probs (the toy's one-token outputs)."""
    lp, lr = logp, logp_ref.to(logp.dtype)
    if lengths is not None:
        ln = torch.as_tensor(lengths, device=logp.device).to(logp.dtype).clamp(min=1)
        lp, lr = lp / ln, lr / ln
    delta = log_z + lp - lr - scale * adv.detach().to(logp.dtype)
    return (delta ** 2).mean(-1)


# ----------------------------------------------------------------------------------------------
# exact targets
# ----------------------------------------------------------------------------------------------
def _correct(rewards: np.ndarray, tau: float) -> np.ndarray:
    c = rewards >= tau
    if not c.any():
        raise ValueError(f"tau={tau} is above every reward (max R = {rewards.max()}): choose tau <= max R")
    return c


def diff_smooth_target(ref, rewards, beta: float, tau: float, gamma_p: float | None = None,
                       gamma_n: float = 0.0, kl: str = "reverse") -> np.ndarray:
    """Target of KL-regularized RL on Differential Smoothing's rewards (the rewards are a fixed
    function of y, so Rem. 3.1 / Rem. 3.3 apply): reverse KL G proportional to
    pi_ref^(1 - gamma_p/beta) e^(R/beta) on {R >= tau} and pi_ref^(1 + gamma_n/beta) e^(R/beta)
    below; forward KL beta pi_ref / (Lambda - r') (not uniform: r' enters through Lambda - r')."""
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = check_beta(beta)
    gp = beta if gamma_p is None else float(gamma_p)
    good = _correct(r, tau)
    if np.any(p == 0):
        raise ValueError("Differential Smoothing's reward needs log pi_ref finite: give pi_ref full support")
    shaped = np.where(good, r - gp * np.log(p), r + gamma_n * np.log(p))
    if kl == "reverse":
        return reverse_kl_target(p, shaped, beta)
    if kl == "forward":
        return forward_kl_target(p, shaped, beta)
    raise ValueError(f"unknown kl {kl!r}: use 'reverse' or 'forward'")


def separable_fixed_point(v: Callable[[np.ndarray], np.ndarray], n: int, lo: float = -1e5,
                          iters: int = 110) -> np.ndarray:
    """The distribution pi with v(log pi) constant over outputs, for v acting elementwise and
    decreasing in each log pi(y): the stationarity condition pi_y (v_y - E_pi v) = 0 of a softmax
    policy's expected update when each output's term depends on its own probability (and on
    constants). Nested bisection: log pi(c) solves v = c per output, c fixes sum pi = 1."""

    def logs(c: float) -> np.ndarray:
        a, b = np.full(n, lo), np.zeros(n)
        for _ in range(iters):
            mid = 0.5 * (a + b)
            with np.errstate(all="ignore"):
                above = v(mid) > c  # v decreasing: the root lies above mid
            a, b = np.where(above, mid, a), np.where(above, b, mid)
        return 0.5 * (a + b)

    with np.errstate(all="ignore"):
        c_lo, c_hi = float(np.min(v(np.zeros(n)))), float(np.max(v(np.full(n, -math.log(n)))))
    for _ in range(iters):
        c = 0.5 * (c_lo + c_hi)
        if logsumexp(logs(c)) > 0:
            c_lo = c
        else:
            c_hi = c
        if c_hi - c_lo <= 1e-14 * max(1.0, abs(c)):
            break
    lg = logs(0.5 * (c_lo + c_hi))
    return np.exp(lg - logsumexp(lg))


def _ips_terms(logpi: np.ndarray, G: int, alpha: float, eps: float):
    """a/pi, b/pi and c of :func:`ips_expected_gradient` for each output (log-space binomial sums)."""
    k = np.arange(G + 1, dtype=np.float64)
    g = np.maximum(k / G, eps) ** -alpha
    logc = gammaln(G + 1) - gammaln(k + 1) - gammaln(G - k + 1)
    lp = logpi[:, None]
    l1m = np.log1p(-np.minimum(np.exp(lp), 1 - 1e-16))
    base = logc + (G - k) * l1m  # log [C(G,k) (1-pi)^(G-k)]
    kk = k[1:]
    w_over_pi = np.exp(base[:, 1:] + (kk - 1) * lp)  # pmf(k) / pi
    a_pi = (w_over_pi * kk * g[1:]).sum(1)
    b_pi = (w_over_pi * kk**2 * g[1:]).sum(1)
    c = (np.exp(base[:, 1:] + kk * lp - l1m) * kk * (G - kk) * g[1:]).sum(1)
    return a_pi, b_pi, c


def ips_expected_gradient(pi, ref, rewards, beta: float, kl: str = "reverse", group_size: int | None = 32,
                          alpha: float = 1.0, eps: float = 1e-6, baseline: str = "rloo") -> np.ndarray:
    """Exact expected logit update (ascent direction) of inverse-probability scaling with a
    categorical policy: REINFORCE on f_i = r_i / max(n_{o_i}/G, eps)^alpha with a leave-one-out
    (``baseline='rloo'``, factor kappa = G/(G-1)) or mean baseline (kappa = 1), minus beta times the
    gradient of the KL the k2 (reverse) or k3 (forward) loss follows.

    With n ~ Multinomial(G, pi) and g(n) = max(n/G, eps)^-alpha the baseline's sum of A_i is 0, so
    grad_y = kappa/G (r_y E[n_y g(n_y)] - 1/G sum_o r_o E[n_y n_o g(n_o)]), where
    E[n_y n_o g(n_o)] = sum_k k g(k) (G - k) pi_y / (1 - pi_o) P(n_o = k) for o != y.
    ``group_size=None`` is the large-G limit: grad_y = r_y pi_y^(1-alpha) - pi_y sum_o r_o pi_o^(1-alpha)."""
    pi = np.asarray(pi, dtype=np.float64)
    r, p = check_rewards(rewards), check_ref(ref, pi.size)
    with np.errstate(all="ignore"):
        f_y, const = _ips_parts(np.log(pi), r, group_size, alpha, eps, baseline)
        rf = np.where(pi > 0, pi * f_y, 0.0) - pi * const(pi)
    return rf - beta * kl_logit_gradient(pi, p, kl)


def kl_logit_gradient(pi: np.ndarray, p: np.ndarray, kl: str) -> np.ndarray:
    """Gradient with respect to free logits of the KL a k2 (``'reverse'``: KL(pi || p)) or k3
    (``'forward'``: KL(p || pi)) loss follows, for a categorical ``pi`` and reference ``p``."""
    if kl == "reverse":
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(pi > 0, np.log(pi) - np.log(p), 0.0)
        return pi * (d - pi @ d)
    if kl == "forward":
        return pi - p
    raise ValueError(f"unknown kl {kl!r}: use 'reverse' or 'forward'")


def _ips_parts(logpi, r, G, alpha, eps, baseline):
    """(per-output term f_y(pi_y), constant(pi)) with grad_y = pi_y (f_y - constant)."""
    if G is None:
        return np.where(r != 0, r * np.exp(-alpha * logpi), 0.0), lambda q: float(r[q > 0] @ q[q > 0] ** (1 - alpha))
    if G < 2:
        raise ValueError("group_size must be >= 2 (or None for the large-group limit)")
    kappa = G / (G - 1) if baseline == "rloo" else 1.0
    a_pi, b_pi, c = _ips_terms(logpi, G, alpha, eps)
    f = kappa / G * np.where(r != 0, r * (a_pi - b_pi / G + c / G), 0.0)
    return f, lambda q: kappa / G**2 * float(r[q > 0] @ _ips_terms(np.log(q[q > 0]), G, alpha, eps)[2])


def ips_target(ref, rewards, beta: float, kl: str = "reverse", group_size: int | None = 32,
               alpha: float = 1.0, eps: float = 1e-6, baseline: str = "rloo") -> np.ndarray:
    """Fixed point of :func:`ips_expected_gradient`: pi with f_y(pi_y) - beta log(pi_y / pi_ref(y))
    (reverse) or f_y(pi_y) + beta pi_ref(y)/pi_y (forward) equal for every y, f_y the per-output
    part of the scaled-reward update (:func:`separable_fixed_point`). At beta -> 0 it is uniform on
    the rewarded outputs. Check the result with :func:`ips_expected_gradient` (it must vanish)."""
    r, p = check_rewards(rewards), check_ref(ref)
    beta = check_beta(beta)
    lp_ref = np.log(np.where(p > 0, p, 1e-300))

    def v(lg):
        f = _ips_parts(lg, r, group_size, alpha, eps, baseline)[0]
        return f - beta * (lg - lp_ref) if kl == "reverse" else f + beta * np.exp(lp_ref - lg)

    return separable_fixed_point(v, r.size)


def ucpo_target(ref, rewards, beta: float, tau: float, kl: str = "reverse", ucpo_tau: float = 0.2) -> np.ndarray:
    """Large-group fixed point of UCPO (0/1 rewards, mean or leave-one-out baseline, plus the KL
    loss). With m = pi(C) and |C| correct outputs, a group's correct samples share 1 - m of
    advantage, and the inverse-probability share gives output y the advantage
    A(y) = (1 - m) ((1 - t) + t m / (|C| pi(y))), t = ``ucpo_tau``, incorrect A = -m; sum pi A = 0,
    so stationarity is A(y) - beta log(pi/pi_ref) (reverse) or A(y) + beta pi_ref/pi (forward) constant,
    solved for each m and closed by m = pi(C) (brentq on log(1 - m)). The inverse-probability term
    carries the factor 1 - m: as the policy stops sampling incorrect outputs it vanishes, and the
    KL term pulls the correct set back to the reference's ratios."""
    r, p = check_rewards(rewards), check_ref(ref)
    beta = check_beta(beta)
    good = _correct(r, tau)
    nc = good.sum()
    lp_ref = np.log(np.where(p > 0, p, 1e-300))

    def solve(x):  # x = log(1 - m): the incorrect mass, kept exact when it is tiny (small beta)
        m, onem = -math.expm1(x), math.exp(x)

        def v(lg):
            lift = ucpo_tau * m / nc * np.exp(-lg) if ucpo_tau > 0 else 0.0
            a = np.where(good, onem * ((1 - ucpo_tau) + lift), -m)
            return a - beta * (lg - lp_ref) if kl == "reverse" else a + beta * np.exp(lp_ref - lg)
        return separable_fixed_point(v, r.size)

    def gap(x):
        return math.log(solve(x)[~good].sum()) - x

    lo, hi = -700.0, math.log1p(-1e-9)
    if gap(lo) <= 0:  # incorrect mass below e^-700: UCPO's term, proportional to it, vanishes in float64
        return solve(lo)
    return solve(brentq(gap, lo, hi, xtol=1e-12))


def flowrl_expected_advantages(m: float, G: int, eps: float = 1e-4) -> tuple[float, float]:
    """E[A_hat | y correct], E[A_hat | y incorrect] of GRPO's advantage (r - mean)/(std + eps), unbiased
    std, for 0/1 rewards in a group of G samples of which each other one is correct with
    probability m (:func:`mdkl.shaping.group_advantages` 'grpo')."""
    return _flowrl_advantages_at(math.log1p(-m) if m < 1 else -np.inf, G, eps)


def _flowrl_advantages_at(x: float, G: int, eps: float) -> tuple[float, float]:
    """:func:`flowrl_expected_advantages` at m = 1 - e^x (exact for incorrect mass e^x far below 1e-16)."""
    k = np.arange(G)  # correct among the other G - 1
    with np.errstate(divide="ignore"):
        log_m = np.log(-np.expm1(x)) if x < 0 else -np.inf
    logpmf = (gammaln(G) - gammaln(k + 1) - gammaln(G - k) + np.where(k > 0, k * log_m, 0.0)
              + np.where(G - 1 - k > 0, (G - 1 - k) * x, 0.0))
    pmf = np.exp(logpmf - logsumexp(logpmf))

    def adv(n_correct, own):
        mu = n_correct / G
        sd = np.sqrt(np.maximum(n_correct * (G - n_correct), 0) / (G * (G - 1)))
        return (own - mu) / (sd + eps)

    return float(pmf @ adv(k + 1, 1.0)), float(pmf @ adv(k, 0.0))


def flowrl_target(ref, rewards, scale: float, group_size: int = 32, eps: float = 1e-4) -> np.ndarray:
    """Fixed point of FlowRL's squared loss (:func:`flow_balance_loss`) for 0/1 rewards and groups of
    G: pi(y) proportional to pi_ref(y) exp(c a_{R(y)}(m)), a_1, a_0 the expected GRPO advantages
    (:func:`flowrl_expected_advantages`) at m = pi(R = 1), closed by m = pi(R = 1) (brentq on log(1 - m)). Within
    the correct set the reference's ratios are kept (Rem. 4.3), as for any Gibbs target."""
    r, p = check_rewards(rewards), check_ref(ref)
    if not np.all((r == 0) | (r == 1)):
        raise ValueError("flowrl_target is derived for 0/1 rewards")
    good = r == 1
    lp_ref = np.log(np.where(p > 0, p, 1e-300))

    def pi_of(x):  # x = log(1 - m), the log incorrect mass
        a1, a0 = _flowrl_advantages_at(x, group_size, eps)
        lg = np.where(p > 0, lp_ref + scale * np.where(good, a1, a0), -np.inf)
        return np.exp(lg - logsumexp(lg))

    def gap(x):
        return math.log(pi_of(x)[~good].sum()) - x

    lo, hi = -700.0, math.log1p(-1e-12)
    if gap(lo) <= 0:  # incorrect mass below e^-700: report that limit
        return pi_of(lo)
    return pi_of(brentq(gap, lo, hi, xtol=1e-12))
