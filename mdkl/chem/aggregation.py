"""How the chemistry reward combines its components (paper §4, Table 2).

The paper's rewards come from Saturn (Guo et al. 2025), whose "product" aggregator is, like REINVENT
4's default (``reinvent/scoring/aggregators/means.py``), the *weighted geometric mean*

    R = prod_i c_i ** (w_i / sum_j w_j),

so a molecule with four components of 0.9 scores 0.9, not 0.9**4 = 0.66. :func:`aggregate` computes
it (``'geomean'``) and, as a named option, the plain product of the components (``'product'``: the
first reward analogue's aggregation, kept so its frozen configuration means what it meant).

Rules (both aggregators):

- a component of 0 with a positive weight makes the reward exactly 0 (REINVENT 4 clamps each score at
  1e-8 first, which gives ~1e-8 ** (w / sum w); 0 is what a failed hard constraint means);
- a component with weight 0 does not enter the reward (0 ** 0 = 1);
- a row with any NaN component gets reward 0 and is flagged (``is_nan``), never propagated; REINVENT 4
  instead drops the NaN component and renormalizes the other weights, which would let a molecule whose
  synthesizability could not be computed pass on its other components.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["AGGREGATORS", "check_aggregator", "aggregate"]

#: 'geomean': weighted geometric mean (Saturn's and REINVENT 4's "product"); 'product': plain product
AGGREGATORS = ("geomean", "product")


def check_aggregator(aggregator: str, weights, n_components: int) -> tuple:
    """Validate an aggregator and its weights; returns the weights as a tuple of floats. A clear
    ``ValueError`` names the fix for an unknown aggregator, a wrong number of weights, a negative
    or non-finite weight, weights whose sum is not positive, or weights other than 1 for the plain
    product (which has no weights)."""
    if aggregator not in AGGREGATORS:
        raise ValueError(f"aggregator={aggregator!r}: use one of {AGGREGATORS} ('geomean': the weighted geometric "
                         f"mean of Saturn and REINVENT 4; 'product': the plain product)")
    try:
        w = tuple(float(x) for x in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights={weights!r}: give one number per component ({n_components})") from None
    if len(w) != n_components:
        raise ValueError(f"weights={weights!r}: give one weight per component ({n_components}), e.g. "
                         f"{(1.0,) * n_components} for equal weights")
    if not all(math.isfinite(x) and x >= 0 for x in w) or not sum(w) > 0:
        raise ValueError(f"weights={weights!r}: need finite weights >= 0 that sum to a positive number "
                         f"(equal weights: {(1.0,) * n_components})")
    if aggregator == "product" and w != (1.0,) * n_components:
        raise ValueError(f"weights={weights!r} with aggregator='product': the plain product has no weights; use "
                         f"aggregator='geomean' for weighted aggregation, or weights {(1.0,) * n_components}")
    return w


def aggregate(components, aggregator: str = "product", weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Reward of each row (molecule) of ``components`` (molecules x components, values in [0, 1]):
    the plain product (``'product'``) or the weighted geometric mean (``'geomean'``, ``weights``
    default equal). Returns ``(reward, is_nan)``: a row with any NaN component gets reward 0 and
    ``is_nan`` True (counted by the caller, never propagated)."""
    c = np.asarray(components, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"components must be 2-D (molecules x components), got shape {c.shape}")
    w = np.asarray(check_aggregator(aggregator, (1.0,) * c.shape[1] if weights is None else weights, c.shape[1]))
    bad = np.isnan(c).any(axis=1)
    x = np.nan_to_num(c, nan=0.0)
    if aggregator == "product":
        r = np.prod(x, axis=1)
    else:
        with np.errstate(divide="ignore"):
            r = np.prod(np.power(x, w / w.sum()), axis=1)  # 0 ** (w > 0) = 0, 0 ** 0 = 1
    return np.where(bad, 0.0, r), bad
