"""Evaluation metrics shared by the notebooks: entropy, the mode coverage of Definition 3.5,
and sampling errors. Task-specific metrics (text diversity, molecules) live with their task.
"""

from __future__ import annotations

import numpy as np

__all__ = ["entropy", "coverage", "is_multimodal", "binary_entropy_with_se", "max_min_ratio"]


def entropy(p, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats, sum -p log p (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p), 0.0)
    return -t.sum(axis=axis)


def max_min_ratio(p, mask) -> float:
    """max / min of ``p`` over ``mask`` (1.0 = perfectly uniform there, inf if some entry is 0)."""
    v = np.asarray(p, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    if v.size == 0:
        raise ValueError("empty mask")
    return float(v.max() / v.min()) if v.min() > 0 else float("inf")


def coverage(pi, rewards, tau: float) -> float:
    """Definition 3.5 made measurable: min over high-reward outputs (R >= tau) of pi(y), divided by
    the max over them. 1 means every high-reward output is equally likely (fully multimodal);
    0 means some high-reward output is dropped (collapsed).
    """
    r = np.asarray(rewards, dtype=np.float64)
    good = r >= tau
    if not good.any():
        raise ValueError(f"tau={tau} is above every reward (max R = {r.max()}): choose tau <= max R")
    return 1.0 / max_min_ratio(pi, good)


def is_multimodal(pi, rewards, tau: float, min_coverage: float = 0.5) -> bool:
    """Definition 3.5: all high-reward samples have high probability (coverage >= ``min_coverage``)."""
    return coverage(pi, rewards, tau) >= min_coverage


def binary_entropy_with_se(n_a: int, n_b: int) -> tuple[float, float]:
    """Entropy (nats) of the empirical split n_a : n_b and its delta-method standard error.

    H(p) = -p log p - (1-p) log(1-p), dH/dp = log((1-p)/p), Var(p_hat) = p(1-p)/n. Used for the
    valid-answer entropy of the "1-2" task (max ln 2). Returns (nan, nan) when n = 0.
    """
    n = n_a + n_b
    if n == 0:
        return float("nan"), float("nan")
    p = n_a / n
    h = float(entropy([p, 1 - p]))
    if p in (0.0, 1.0):
        return h, 0.0
    se = abs(np.log((1 - p) / p)) * np.sqrt(p * (1 - p) / n)
    return h, float(se)
