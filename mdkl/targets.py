"""Optimal targets of KL-regularized objectives and the probability ratios they imply.

Single-step (contextual bandit) view over a finite output space: ``ref`` is pi_ref as a
probability vector, ``rewards`` is R(y), ``beta > 0`` the KL coefficient. Everything is float64
NumPy; each function implements exactly one equation of the paper (cited in its docstring), and
notebooks and trainers call these instead of re-deriving them.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

__all__ = [
    "reverse_kl_target",
    "entropy_regularized_target",
    "forward_kl_target",
    "solve_forward_lambda",
    "reverse_kl_objective",
    "forward_kl_objective",
    "log_prob_ratio",
    "indifference_beta",
    "kl_divergence",
    "check_coefficient",
    "check_distribution",
    "check_log_probs",
    "check_beta",
    "check_rewards",
    "check_ref",
]


# ----------------------------------------------------------------------------------------------
# input validation (shared by every function here, mdkl.exact and mdkl.mara)
# ----------------------------------------------------------------------------------------------
def check_beta(beta: float, name: str = "beta") -> float:
    """``beta`` as a float, or a ``ValueError`` unless it is finite and > 0."""
    beta = float(beta)
    if not np.isfinite(beta) or beta <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (got {beta!r}); "
                         f"the KL-regularized target is undefined at {name} <= 0")
    return beta


def check_rewards(rewards) -> np.ndarray:
    """``rewards`` as a non-empty finite float64 vector, or a ``ValueError`` naming the fix."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"rewards must be a non-empty 1-D array (got shape {r.shape})")
    if not np.all(np.isfinite(r)):
        bad = np.flatnonzero(~np.isfinite(r))[:5].tolist()
        raise ValueError(f"rewards contain NaN/inf at positions {bad}: fix the reward function "
                         f"(or map failures to a finite value such as 0.0) before computing targets")
    return r


def check_ref(ref, n: int | None = None) -> np.ndarray:
    """``ref`` as a probability vector (of length ``n`` if given), or a ``ValueError`` naming the fix."""
    p = np.asarray(ref, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"ref must be a non-empty 1-D probability vector (got shape {p.shape})")
    if n is not None and p.size != n:
        raise ValueError(f"ref has {p.size} entries but rewards has {n}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("ref must be finite and non-negative")
    s = p.sum()
    if not np.isclose(s, 1.0, rtol=0, atol=1e-9):
        raise ValueError(f"ref must sum to 1 (sums to {s!r}); normalize it first")
    return p


def check_coefficient(value, name: str, *, allow_zero: bool = False) -> float:
    """A regularization coefficient (beta, eta, a temperature) as a float: finite and > 0, or
    >= 0 with ``allow_zero``; else ``ValueError`` naming the fix (NaN / inf would otherwise flow
    into every target and gradient as NaN)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be one real number (got {value!r})") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound} (got {v!r}): pass e.g. {name}=0.1")
    return v


def check_distribution(p, name: str = "pi", n: int | None = None, atol: float = 1e-6) -> np.ndarray:
    """``p`` as a float64 1-D probability vector (finite, non-negative, summing to 1 within
    ``atol``; ``n`` entries if given), else ``ValueError`` naming the fix. The default ``atol``
    accepts float32 softmax outputs; :func:`reverse_kl_target` and friends check ``ref`` at 1e-9."""
    q = np.asarray(p, dtype=np.float64)
    if q.ndim != 1 or q.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D probability vector (got shape {q.shape})")
    if n is not None and q.size != n:
        raise ValueError(f"{name} has {q.size} entries but rewards has {n}: give one probability per output")
    if not np.all(np.isfinite(q)):
        raise ValueError(f"{name} contains NaN/inf at positions {np.flatnonzero(~np.isfinite(q))[:5].tolist()}: "
                         f"pass finite probabilities")
    if np.any(q < 0):
        raise ValueError(f"{name} must be non-negative (min {float(q.min())!r}): pass probabilities, not "
                         f"logits or log-probabilities")
    s = q.sum()
    if not abs(s - 1.0) <= atol:
        raise ValueError(f"{name} must sum to 1 (sums to {s!r}): normalize it first (p / p.sum())")
    return q


def check_log_probs(x, name: str) -> np.ndarray:
    """Log-probabilities as float64: NaN and +inf are errors (-inf, probability 0, is allowed)."""
    a = np.asarray(x, dtype=np.float64)
    if np.isnan(a).any() or np.isposinf(a).any():
        raise ValueError(f"{name} contains NaN or +inf: pass finite log-probabilities (log pi <= 0; "
                         f"-inf for probability 0)")
    return a


def _log(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(p)


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------
def reverse_kl_target(ref, rewards, beta: float) -> np.ndarray:
    """G_beta(y) = pi_ref(y) exp(R(y) / beta) / zeta: the argmax of E_pi[R] - beta KL(pi || pi_ref).

    Paper Remark 3.1 (and Remark 3.2: -J/beta = KL(pi || G_beta) - log zeta). Computed in log
    space, so it is exact for beta down to 1e-12 and rewards of any scale.
    """
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = check_beta(beta)
    logits = _log(p) + r / beta
    return np.exp(logits - logsumexp(logits))


def entropy_regularized_target(ref, rewards, beta: float, eta: float) -> np.ndarray:
    """Target of E_pi[R] - beta KL(pi || pi_ref) + eta H(pi): proportional to
    pi_ref^(beta / (beta + eta)) * exp(R / (beta + eta)).

    Paper Appendix B.1 (Lagrangian / Gateaux derivative). ``beta = 0`` is allowed here (pure
    entropy regularization: softmax(R / eta) over the whole space, reference ignored), as long as
    ``beta + eta > 0``.
    """
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = check_coefficient(beta, "beta", allow_zero=True)
    eta = check_coefficient(eta, "eta", allow_zero=True)
    if not beta + eta > 0:
        raise ValueError(f"need beta >= 0, eta >= 0 and beta + eta > 0 (got beta={beta}, eta={eta})")
    temp = beta + eta
    log_ref_term = (beta / temp) * _log(p) if beta > 0 else np.zeros_like(p)
    logits = log_ref_term + r / temp
    return np.exp(logits - logsumexp(logits))


def solve_forward_lambda(ref, rewards, beta: float) -> tuple[float, float]:
    """Normalizer Lambda of the forward-KL target (Remark 3.3), returned as ``(Lambda, gap)``.

    Z(Lambda) = sum_y beta pi_ref(y) / (Lambda - R(y)) is strictly decreasing on (R*, inf), where
    R* is the largest reward on the support of pi_ref, so Z(Lambda) = 1 has one root. Writing
    Lambda = R* + x, the analytic bracket is ``beta * pi_ref(argmax set) <= x <= beta``: the top
    term alone is at most 1, and every term is at most beta pi_ref(y) / x. The root is found in
    ``x`` with gaps d_y = R* - R(y) >= 0 computed exactly, so no large rewards are subtracted
    from each other: the result is accurate to ~1e-15 relative in x for any reward scale and any
    beta > 0. Returns Lambda and ``gap = x`` (use the gap, not Lambda - R, for precision).
    """
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = check_beta(beta)
    on = p > 0
    r_on, p_on = r[on], p[on]
    r_star = r_on.max()
    d = r_star - r_on  # exact, >= 0
    p_top = p_on[d == 0].sum()
    lo, hi = beta * p_top, beta

    def log_z(x: float) -> float:
        return float(np.log(beta) + logsumexp(np.log(p_on) - np.log(x + d)))

    if hi <= lo * (1 + 1e-15):  # all reference mass on the top reward: x = beta exactly
        return r_star + hi, hi
    f_lo, f_hi = log_z(lo), log_z(hi)
    if f_lo <= 0:
        return r_star + lo, lo
    if f_hi >= 0:
        return r_star + hi, hi
    x = brentq(log_z, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    return r_star + x, x


def forward_kl_target(ref, rewards, beta: float) -> np.ndarray:
    """G_fwd(y) = beta pi_ref(y) / (Lambda - R(y)): the argmax of E_pi[R] - beta KL(pi_ref || pi).

    Paper Remark 3.3 with the normalizer from :func:`solve_forward_lambda`. Off-support case
    (Appendix B.3): outputs with pi_ref = 0 get mass only if their reward R_off exceeds the root
    Lambda of the on-support normalization; then the KKT conditions fix Lambda = R_off, the
    support gets sum beta pi_ref / (R_off - R) < 1, and the remainder is split uniformly over the
    off-support outputs that attain R_off.
    """
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = check_beta(beta)
    lam, x = solve_forward_lambda(p, r, beta)
    on = p > 0
    r_star = r[on].max()
    g = np.zeros_like(p)
    off = ~on
    r_off = r[off].max() if off.any() else -np.inf
    if off.any() and r_off > lam:
        gap = (r_off - r_star) + (r_star - r[on])  # = R_off - R(y) > 0
        g[on] = beta * p[on] / gap
        top_off = off & (r == r_off)
        g[top_off] = (1.0 - g[on].sum()) / top_off.sum()
        return g
    g[on] = beta * p[on] / (x + (r_star - r[on]))
    return g


# ----------------------------------------------------------------------------------------------
# objectives (exact, for finite spaces)
# ----------------------------------------------------------------------------------------------
def kl_divergence(p, q) -> float:
    """KL(p || q) = sum p log(p / q) for probability vectors (0 log 0 = 0; inf if p > 0 = q).

    Both must be probability vectors of the same length (:func:`check_distribution`)."""
    p = check_distribution(p, "p")
    q = check_distribution(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p has {p.size} entries and q {q.size}: KL needs two distributions over the same outputs")
    m = p > 0
    if np.any(q[m] <= 0):
        return float("inf")
    return float(np.sum(p[m] * (np.log(p[m]) - np.log(q[m]))))


def reverse_kl_objective(pi, ref, rewards, beta: float) -> float:
    """J(pi) = E_pi[R] - beta KL(pi || pi_ref) (paper §2, Eq. for the reverse-KL objective)."""
    r = check_rewards(rewards)
    pi, p = check_distribution(pi, "pi", r.size), check_ref(ref, r.size)
    return float(pi @ r - check_beta(beta) * kl_divergence(pi, p))


def forward_kl_objective(pi, ref, rewards, beta: float) -> float:
    """J_fwd(pi) = E_pi[R] - beta KL(pi_ref || pi) (paper §3.2)."""
    r = check_rewards(rewards)
    pi, p = check_distribution(pi, "pi", r.size), check_ref(ref, r.size)
    return float(pi @ r - check_beta(beta) * kl_divergence(p, pi))


# ----------------------------------------------------------------------------------------------
# probability ratios (§4)
# ----------------------------------------------------------------------------------------------
def log_prob_ratio(log_ref_1, log_ref_2, reward_1, reward_2, beta: float):
    """log G_beta(y1) / G_beta(y2) = log pi_ref(y1)/pi_ref(y2) + (R(y1) - R(y2)) / beta.

    Paper Proposition 4.1. With equal reference probabilities it is dR / beta (Remark 4.2); with
    equal rewards it is the reference log ratio for every beta (Remark 4.3). Broadcasts (NumPy
    rules). Log-probabilities may be -inf (probability 0), but not both of a pair.
    """
    beta = check_beta(beta)
    l1, l2 = check_log_probs(log_ref_1, "log_ref_1"), check_log_probs(log_ref_2, "log_ref_2")
    r1, r2 = np.asarray(reward_1, dtype=np.float64), np.asarray(reward_2, dtype=np.float64)
    if not (np.isfinite(r1).all() and np.isfinite(r2).all()):
        raise ValueError("rewards contain NaN/inf: map failures to a finite reward first")
    if np.any(np.isneginf(l1) & np.isneginf(l2)):
        raise ValueError("both outputs have probability 0 under pi_ref (log_ref = -inf): their ratio "
                         "is undefined; drop such pairs")
    return (l1 - l2) + (r1 - r2) / beta


def indifference_beta(reward_1, reward_2, log_ref_1, log_ref_2) -> float:
    """beta* at which y1 and y2 are equally likely under G_beta (Remark 4.4).

    Solves R(y2) - R(y1) = beta (log pi_ref(y1) - log pi_ref(y2)). For beta < beta* the
    higher-reward output is preferred, above it the better-supported one. Raises if the two
    outputs never swap (one dominates in both reward and support, or they tie).
    """
    dr = float(reward_2) - float(reward_1)
    dl = float(log_ref_1) - float(log_ref_2)
    if not (np.isfinite(dr) and np.isfinite(dl)):
        raise ValueError(f"rewards and reference log-probabilities must be finite (got R difference {dr}, "
                         f"log pi_ref difference {dl}): an output with pi_ref = 0 is never preferred")
    if dl == 0 or dr == 0 or dr / dl <= 0:
        raise ValueError("no indifference point: one output has both the higher reward and the "
                         "higher reference probability (or they tie), so its preference never flips")
    return dr / dl
