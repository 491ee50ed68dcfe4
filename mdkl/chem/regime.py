"""What a calibration of the chemistry reward aims at (paper §4, Table 2), and how far a grid point lands.

The paper's REINVENT (10,000 reward calls) finds unique hits (reward >= screen) on 66% / 16% of its
calls at the 0.80 / 0.85 screens for SYNTH and 54% / 11% for ALL-AMIDE (:data:`TARGET_RATES`), and
its 0.85-screen hits are *narrow*: 7-8 sphere-exclusion circles, IntDiv1 0.70-0.72
(:data:`PAPER_NARROWING`), the mode collapse that MARA addresses. Two rules, named by
``CalibrationGrid.regime`` (:mod:`mdkl.chem.calibration`):

- ``'rates'`` (the v1 analogue's): a task's miss is its worst |log(rate / paper's rate)| over the two
  screens; a point is in the regime when every rate is within ``tolerance`` of the paper's and
  ALL-AMIDE is harder than SYNTH at both screens;
- ``'rates+narrowing'`` (v2): a point counts only if its potency term *binds*: the median
  P(DRD2 active) of its hits at both screens (:func:`hit_profile`) is at least ``min_median_p``
  (0.5: the classifier calls the typical hit active). A task's miss is the mean of
  |log(x / paper's x)| over three numbers, the unique-hit rates at both screens and #Circles at 0.85
  (IntDiv1 is reported beside it: it moves with #Circles). In the regime: v1's conditions and
  #Circles within ``tolerance``; :func:`assess` says which condition fails.

Both rules compare the worse of the two tasks and prefer points where ALL-AMIDE is harder.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["TARGET_RATES", "SCREENS", "PAPER_NARROWING", "REGIMES", "hit_profile", "metric_columns", "task_miss",
           "eligible", "assess"]

#: the paper's REINVENT: unique hits per reward call (Table 2; 10,000 calls)
TARGET_RATES = {("synth", 0.80): 0.6569, ("synth", 0.85): 0.1614,
                ("amide", 0.80): 0.5433, ("amide", 0.85): 0.1098}
SCREENS = (0.80, 0.85)
#: the paper's REINVENT, 0.85-screen hits: IntDiv1 and #Circles (ALL-AMIDE: Table 2b, 0.721 +- 0.016 and
#: 8 +- 1; SYNTH: 0.70 and 7 in the paper's SYNTH table)
PAPER_NARROWING = {"synth": {"intdiv1": 0.70, "circles": 7}, "amide": {"intdiv1": 0.721, "circles": 8}}
REGIMES = ("rates", "rates+narrowing")
_RATES = [f"rate_{s:.2f}" for s in SCREENS]


def hit_profile(log, screens=SCREENS) -> dict:
    """Per screen, of a run's unique valid hits (reward >= screen, in order of discovery): IntDiv1
    (MOSES, self-pairs included), #Circles (distance 0.75), the median P(DRD2 active) and the share
    with P >= 0.5 (the classifier calls them active). NaN (0 circles) where a screen has no hit.
    Each hit is parsed and fingerprinted once (the higher screens' hits are a subset of the lowest's)."""
    from mdkl.chem.metrics import int_div1_of_fps, morgan_fps, n_circles_of_fps
    from mdkl.chem.reward import drd2_proba
    from mdkl.chem.smiles import mol_from_smiles

    ok = log[log["canonical"].notna()]
    first = ok.drop_duplicates("canonical")  # a molecule's reward is the same at every call
    first = first[first["reward"] >= min(screens)]
    mols = [mol_from_smiles(h) for h in first["canonical"]]
    p = drd2_proba(mols)
    fp1024, fp2048 = morgan_fps(mols, 2, 1024), morgan_fps(mols, 2, 2048)
    r = first["reward"].to_numpy()
    out = {}
    for s in screens:
        k = r >= s
        out.update({f"intdiv1_{s:.2f}": int_div1_of_fps(fp1024[k])[0], f"circles_{s:.2f}": n_circles_of_fps(fp2048[k]),
                    f"median_p_{s:.2f}": float(np.median(p[k])) if k.any() else float("nan"),
                    f"active_share_{s:.2f}": float((p[k] >= 0.5).mean()) if k.any() else float("nan")})
    return out


def metric_columns(regime: str) -> list:
    """The per-run columns a regime averages over a grid point's seeds."""
    if regime not in REGIMES:
        raise ValueError(f"regime={regime!r}: use one of {REGIMES}")
    extra = ["circles_0.85", "intdiv1_0.85", "circles_0.80", "intdiv1_0.80", "median_p_0.80", "median_p_0.85"]
    return _RATES + (extra if regime == "rates+narrowing" else [])


def _log_miss(x: float, target: float) -> float:
    return abs(math.log(max(float(x), 1e-12) / target))


def task_miss(row, task: str, regime: str = "rates") -> float:
    """A task's distance from the paper's regime, as a log factor (0: on target): ``'rates'``, the
    worst rate over the screens; ``'rates+narrowing'``, the mean over both rates and #Circles at 0.85."""
    misses = [_log_miss(row[f"rate_{s:.2f}"], TARGET_RATES[task, s]) for s in SCREENS]
    if regime == "rates":
        return max(misses)
    metric_columns(regime)  # checks the name
    return float(np.mean(misses + [_log_miss(row["circles_0.85"], PAPER_NARROWING[task]["circles"])]))


def eligible(row, task: str, grid) -> bool:
    """Whether a (seed-averaged) grid point may be chosen: SYNTH's term binds
    (``synth_fail_share >= grid.min_synth_fail``; NaN, not measured, is kept) and, with
    ``grid.min_median_p > 0``, the potency term binds (median P(active) of the hits >= it at both screens)."""
    if task == "synth" and row.get("synth_fail_share", float("nan")) < grid.min_synth_fail:
        return False
    if grid.min_median_p > 0:
        return all(row.get(f"median_p_{s:.2f}", float("nan")) >= grid.min_median_p for s in SCREENS)
    return True


def assess(c: dict, grid) -> dict:
    """``c`` (a shared choice with its ``synth`` and ``amide`` rows) with ``miss`` (the worse task's),
    ``amide_harder``, ``in_regime`` and, per condition of the regime, whether it holds (``checks``:
    rates at each screen within ``tolerance``, ALL-AMIDE harder; with narrowing, #Circles within
    ``tolerance`` and the potency binding)."""
    s, a = c["synth"], c["amide"]
    tol = math.log(grid.tolerance)
    checks = {"amide_harder": all(a[f"rate_{x:.2f}"] < s[f"rate_{x:.2f}"] for x in SCREENS)}
    for x in SCREENS:
        checks[f"rates_{x:.2f}"] = all(_log_miss(r[f"rate_{x:.2f}"], TARGET_RATES[t, x]) <= tol
                                       for t, r in (("synth", s), ("amide", a)))
    if grid.regime == "rates+narrowing":
        checks["circles_0.85"] = all(_log_miss(r["circles_0.85"], PAPER_NARROWING[t]["circles"]) <= tol
                                     for t, r in (("synth", s), ("amide", a)))
        checks["potency_binds"] = eligible(s, "synth", grid) and eligible(a, "amide", grid)
    miss = max(task_miss(s, "synth", grid.regime), task_miss(a, "amide", grid.regime))
    return {**c, "miss": miss, "amide_harder": checks["amide_harder"], "in_regime": all(checks.values()),
            "checks": checks}
