"""The one rule set that turns a measured effect into a verdict on a claim of the paper, used by
every notebook (the 1-2 task, chemistry, creative QA).

A claim is oriented the way the paper states it: "the method raises the metric by about
``paper_effect``" (> 0, on our scale). A run measures an ``estimate`` of that difference with an
interval [``ci_low``, ``ci_high``] (a 90% two-sided interval: each end is a one-sided test at
alpha = 0.05). :func:`decide` applies, in this order:

1. **Gates, before any outcome and for every outcome** (a gate never only removes a [FAILS]):

   * the method acted (``acted``): a method that never changed what it is meant to change says
     nothing about that method, whether its arm looks better or worse;
   * the control trained (``control_trained``): the claim compares trained arms;
   * the design is powered for the paper's effect: its minimum detectable effect ``mde``, fixed
     *before* the run from the planning data, is at most ``paper_effect``.

   A failed gate gives ``not tested (<reason>)``.
2. **Outcome**, from the interval alone:

   * ``holds``: the interval excludes 0 in the paper's direction and does not rule out the
     paper's effect (ci_low > 0 and ci_high >= paper_effect);
   * ``holds, smaller than the paper's``: it excludes 0 and its upper end lies below the paper's
     effect (a real effect, but the paper's size is ruled out);
   * ``FAILS``: a significant effect against the paper (ci_high < 0), or no significant effect
     and the paper's effect ruled out (ci_high < paper_effect);
   * ``inconclusive``: the interval holds both 0 and the paper's effect.

Two other claim shapes use the same gates and verdict words:

* **Convergence** ("the runs end at the target", an equivalence claim): :func:`decide_within`
  takes the runs' mean distance to the target with its interval and a symmetric ``margin``
  stated before the run in the claim's unit. Gates: acted; trained (here: the runs stopped moving,
  ``not tested (still moving toward the target)``, evidence printed by the caller); powered (the
  equivalence MDE, :func:`equivalence_mde`, of the planned spread is at most the margin). Then
  ``holds`` if the interval lies inside [-margin, margin], ``FAILS`` if it lies wholly outside,
  ``inconclusive`` otherwise.
* **A majority of runs** ("vanilla runs end on one answer"): :func:`decide_majority` counts the
  runs that show the event, with an exact (Clopper-Pearson) interval on the rate: ``holds`` if it
  lies above 1/2, ``FAILS`` if below, ``inconclusive`` otherwise; ``not tested (underpowered)``
  when even k = n runs could not put the interval above 1/2.

Several primary claims in one notebook: :func:`holm` adjusts their one-sided p-values
(Holm-Bonferroni, strong family-wise error control) and :func:`format_measured` prints them beside
the verdicts. The verdict itself uses the interval at the stated level, as pre-registered; the
adjusted p says how much of the family survives multiplicity.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

__all__ = ["HOLDS", "HOLDS_SMALLER", "INCONCLUSIVE", "FAILS", "NOT_ACTED", "NOT_TRAINED", "STILL_MOVING",
           "UNDERPOWERED", "VERDICTS", "decide", "decide_within", "equivalence_mde", "decide_majority",
           "rate_interval", "holm", "format_measured", "is_powered"]

HOLDS = "holds"
HOLDS_SMALLER = "holds, smaller than the paper's"
INCONCLUSIVE = "inconclusive"
FAILS = "FAILS"
NOT_ACTED = "not tested (did not act)"
NOT_TRAINED = "not tested (control did not train)"
UNDERPOWERED = "not tested (underpowered)"
STILL_MOVING = "not tested (still moving toward the target)"

#: every verdict :func:`decide` returns: the three gates in the order they are checked, then the outcomes
VERDICTS = (NOT_ACTED, NOT_TRAINED, STILL_MOVING, UNDERPOWERED, HOLDS, HOLDS_SMALLER, FAILS, INCONCLUSIVE)


def _finite(**values: float) -> None:
    bad = {k: v for k, v in values.items() if not (isinstance(v, (int, float, np.floating, np.integer))
                                                   and math.isfinite(float(v)))}
    if bad:
        raise ValueError(f"a verdict needs finite numbers; got {bad}: drop or fix the failed runs before deciding")


def _check_interval(estimate: float, ci_low: float, ci_high: float) -> None:
    if not ci_low <= estimate <= ci_high:
        raise ValueError(f"the estimate {estimate} lies outside its interval [{ci_low}, {ci_high}]: pass the "
                         f"interval computed for this estimate")


def _check_gates(**gates) -> None:
    bad = {k: v for k, v in gates.items() if not isinstance(v, (bool, np.bool_))}
    if bad:
        raise ValueError(f"{bad}: pass booleans (the gates' results)")


def is_powered(mde: float, paper_effect: float) -> bool:
    """The power gate: the design's minimum detectable effect ``mde`` (fixed before the run) is at
    most the paper's effect, so a true effect of the paper's size would usually be detected."""
    _finite(mde=mde, paper_effect=paper_effect)
    if mde < 0:
        raise ValueError(f"mde={mde}: a minimum detectable effect is >= 0")
    return float(mde) <= float(paper_effect)


def decide(paper_effect: float, estimate: float, ci_low: float, ci_high: float, mde: float,
           acted: bool = True, control_trained: bool = True) -> str:
    """The verdict on "the method raises the metric by about ``paper_effect``" (see the module's
    rules): gates (``acted``, ``control_trained``, ``mde`` <= ``paper_effect`` with ``mde`` fixed
    before the run), then the outcome from [``ci_low``, ``ci_high``] around ``estimate``.

    Refuses non-finite numbers, an interval that does not hold its estimate, and a claim oriented
    against the paper (``paper_effect`` <= 0: flip the sign of the difference so the paper's
    direction is positive)."""
    _finite(paper_effect=paper_effect, estimate=estimate, ci_low=ci_low, ci_high=ci_high, mde=mde)
    if paper_effect <= 0:
        raise ValueError(f"paper_effect={paper_effect} <= 0: orient the claim in the paper's direction "
                         f"(compare method - control so that the paper's effect is positive)")
    _check_interval(estimate, ci_low, ci_high)
    _check_gates(acted=acted, control_trained=control_trained)
    if not acted:
        return NOT_ACTED
    if not control_trained:
        return NOT_TRAINED
    if not is_powered(mde, paper_effect):
        return UNDERPOWERED
    if ci_low > 0:
        return HOLDS if ci_high >= paper_effect else HOLDS_SMALLER
    if ci_high < paper_effect:  # includes ci_high < 0: a significant effect against the paper
        return FAILS
    return INCONCLUSIVE


def equivalence_mde(sd: float, n: int, level: float = 0.90, power: float = 0.8) -> float:
    """Smallest margin an equivalence claim on the mean of ``n`` runs can confirm with probability
    ``power`` when the truth sits on the target: the ``level`` two-sided t-interval's half-width
    plus z_power standard errors, (t_{(1+level)/2, n-1} + z_power) sd / sqrt(n), from the planned
    spread ``sd`` of one run."""
    from scipy import stats as st

    _finite(sd=sd)
    if sd < 0 or isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"sd={sd}, n={n}: need sd >= 0 and n >= 2 runs (one run has no spread)")
    return float((st.t.ppf(0.5 + level / 2, int(n) - 1) + st.norm.ppf(power)) * sd / math.sqrt(n))


def decide_within(estimate: float, ci_low: float, ci_high: float, margin: float, mde: float,
                  acted: bool = True, settled: bool = True) -> str:
    """The verdict on "the runs end at the target" (module docstring): ``estimate`` is the runs' mean
    signed distance to the target in the claim's unit, [``ci_low``, ``ci_high``] its interval,
    ``margin`` the symmetric tolerance stated before the run, ``mde`` the planned
    :func:`equivalence_mde`. Gates: ``acted``, ``settled`` (False: still moving), powered
    (``mde`` <= ``margin``). Refuses non-finite numbers, an interval without its estimate and a
    margin <= 0."""
    _finite(estimate=estimate, ci_low=ci_low, ci_high=ci_high, margin=margin, mde=mde)
    if margin <= 0:
        raise ValueError(f"margin={margin}: a tolerance is > 0 (state it in the claim's unit)")
    _check_interval(estimate, ci_low, ci_high)
    _check_gates(acted=acted, settled=settled)
    if not acted:
        return NOT_ACTED
    if not settled:
        return STILL_MOVING
    if not is_powered(mde, margin):
        return UNDERPOWERED
    if -margin <= ci_low and ci_high <= margin:
        return HOLDS
    if ci_low > margin or ci_high < -margin:
        return FAILS
    return INCONCLUSIVE


def rate_interval(k: int, n: int, level: float = 0.90) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided ``level`` interval of a rate from ``k`` events in ``n`` runs."""
    from scipy import stats as st

    if isinstance(k, bool) or isinstance(n, bool) or int(k) != k or int(n) != n or not 0 <= k <= n or n < 1:
        raise ValueError(f"k={k}, n={n}: need integers 0 <= k <= n, n >= 1")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(st.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(st.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def decide_majority(k: int, n: int, level: float = 0.90) -> str:
    """The verdict on "most runs show the event" from ``k`` of ``n`` runs (module docstring)."""
    if n >= 1 and rate_interval(n, n, level)[0] <= 0.5:
        return UNDERPOWERED
    lo, hi = rate_interval(k, n, level)
    return HOLDS if lo > 0.5 else FAILS if hi < 0.5 else INCONCLUSIVE


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of a family of tests, in the input order: the i-th
    smallest p is multiplied by (m - i + 1), made monotone, capped at 1. Rejecting where the
    adjusted p < alpha controls the family-wise error rate at alpha."""
    p = np.asarray(list(p_values), dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("holm needs a non-empty list of p-values")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"p-values must be finite and in [0, 1] (got {p.tolist()})")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adj_sorted
    return out


def format_measured(estimate: float, ci_low: float, ci_high: float, mde: float, paper_effect: float,
                    fmt: str = "{:+.3f}", p: float | None = None, p_holm: float | None = None,
                    extra: str = "") -> str:
    """The ``measured:`` line under a verdict: estimate [interval], the planned MDE, the paper's
    effect and (when given) the one-sided p with its Holm adjustment, in the claim's unit ``fmt``."""
    parts = [f"{fmt.format(estimate)} [{fmt.format(ci_low)}, {fmt.format(ci_high)}] (90% interval)",
             f"planned MDE {fmt.format(mde).lstrip('+')}", f"paper's effect {fmt.format(paper_effect)}"]
    if p is not None:
        parts.append(f"p = {p:.3g}" + (f" (Holm {p_holm:.3g})" if p_holm is not None else ""))
    if extra:
        parts.append(extra)
    return "measured: " + "; ".join(parts)

