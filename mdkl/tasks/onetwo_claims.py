"""The 1-2 task's claims (paper §4, Fig. 6a/6b; Remark 4.3) decided from the per-run table alone.

Notebook 05 writes one row per run (:func:`mdkl.tasks.onetwo_runs.run_summary`) to
``data/results/onetwo_small_runs.csv``; :func:`headline_claims` turns that table and the design
frozen before the runs (:class:`ClaimDesign`, ``data/onetwo_planning.json``) into the headline
verdicts, with the rules of :mod:`mdkl.stats.verdicts`; :func:`report` prints one claim family
(verdict lines whole, the measured detail wrapped) and :func:`verdict_grid` tabulates every verdict.
``tests/test_headlines.py`` recomputes them from the committed CSV and checks that the committed
notebook prints exactly them.

Every claim is stated in nats of the exact valid-answer entropy ``H`` (the quantity Fig. 6a plots).
The paper states each claim for every beta of its grid, so the **headline** (:func:`headline_claims`)
pools, per KL direction, every beta and seed of the grid (20 runs per arm under the cpu profile: a
statistic over runs with its interval, not a per-run tolerance); :func:`cell_claims` breaks the same
claims down per beta (5 seeds a cell), the exploratory view, whose verdicts move with the kernel path
and with one seed swapped (``mdkl.checks.onetwo_paths``). The pooled design was adopted after the
per-beta verdicts were seen to move that way; the margins, floors and planned spreads are the ones
frozen before the runs. Pooling over beta adds the between-beta spread to the within-beta spread the
planned MDEs assume, so the pooled intervals are wider than planned (the gates use the planned MDE).

* **vanilla ends on one answer** (the paper's words): a run ends below ``collapse_entropy``;
  :func:`mdkl.stats.verdicts.decide_majority` on the count (which answer it ends on is printed);
* **vanilla converges to the reference's split** (Remark 4.3: G_beta and G_fwd keep
  pi_ref("1") / pi_ref("2") at every beta): mean of H - h(q_ref) over runs inside +-``margin``;
* **MARA converges to the uniform split** (Remark B.3, Alg. 1 and 2): mean of H - ln 2 inside
  +-``margin``; gated by MARA having acted in every run;
* **MARA's front dominates vanilla's** (Fig. 6b), made a test that can fail: the hypervolume of
  each run's checkpoints (:func:`mdkl.metrics.hypervolume`), MARA minus vanilla paired by (beta,
  seed), against the predicted difference ln 2 - h(q_ref) (the paper prints no number), Holm over
  the KL directions;
* **no run's reward collapses**, per KL over all betas (headline: both methods; per beta view: per
  method): a run whose final batches average below 1/2 (it is then left out of every other claim and
  named) or whose batch reward fell below ``reward_floor`` at any step. Never waived.

A run that failed numerically (``numeric_failure``: :func:`mdkl.numerics.numeric_failure` on its loss
and pre-clip gradient norm) is left out of claims 1-4 and named in their lines, like a collapsed run;
claim 5 counts every run.

"Still moving" (a run outside the margin whose last window of checkpoints moved more than its
remaining distance to the target) can make only a convergence claim ``not tested``, and only when
more than half of its runs are still moving (otherwise they stay in the mean at their last value);
the evidence is in its measured line.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as st

from mdkl.metrics import entropy
from mdkl.stats import paired
from mdkl.stats.tables import flag_column
from mdkl.stats.verdicts import (decide, decide_majority, decide_within, equivalence_mde, holm,
                                 rate_interval)

__all__ = ["ClaimDesign", "planning_from_pilot", "load_design", "save_design", "binary_entropy", "t_interval",
           "headline_claims", "cell_claims", "format_claim", "report", "verdict_grid", "CLAIMS", "SHORT"]

LN2 = math.log(2)
#: the headline claims, in the order they are printed (statement templates: {kl}, {beta})
CLAIMS = {
    "one answer": "vanilla runs end on one answer (H < {c:g} nats), {kl} KL, {where}",
    "vanilla target": "vanilla converges to the reference's split (Remark 4.3), {kl} KL, {where}",
    "MARA target": "MARA converges to the uniform split, {kl} KL, {where}",
    "front": "MARA's checkpoints dominate vanilla's (hypervolume, paired by seed), {kl} KL, {where}",
    "no collapse": "no {method} run's reward collapses, {kl} KL (every beta)",
}
#: a few words per claim, the row labels of :func:`verdict_grid`
SHORT = {
    "one answer": "1. vanilla ends on one answer",
    "vanilla target": "2. vanilla -> reference split",
    "MARA target": "3. MARA -> uniform split",
    "front": "4. MARA's front dominates",
    "no collapse": "5. no reward collapse",
}


@dataclass(frozen=True)
class ClaimDesign:
    """What the claims are decided with, fixed before the runs (``data/onetwo_planning.json``)."""

    margin: float
    """Symmetric tolerance of the convergence claims, nats of valid-answer entropy."""
    collapse_entropy: float
    """A run "ends on one answer" when its final valid-answer entropy is below this (nats)."""
    reward_floor: float
    """A batch reward below this at any step is a (transient) reward collapse."""
    planning_sd: dict
    """``"kl/method"`` -> planned seed-to-seed sd of the final entropy (nats), from the pilot."""
    source: str
    """Where the planning numbers come from (the pilot runs)."""

    def sd(self, kl: str, method: str) -> float:
        return float(self.planning_sd[f"{kl}/{method}"])


def binary_entropy(q) -> np.ndarray:
    """h(q) = -q ln q - (1 - q) ln(1 - q) in nats (0 at q in {0, 1}): :func:`mdkl.metrics.entropy` of
    the split (q, 1 - q)."""
    q = np.asarray(q, dtype=np.float64)
    return entropy(np.stack([q, 1 - q], axis=-1))


def planning_from_pilot(runs: pd.DataFrame) -> dict:
    """Planned sd of the final entropy per ``"kl/method"``: the variance over seeds within each
    beta, pooled over the pilot's betas (each beta weighted by its degrees of freedom)."""
    out = {}
    for (kl, meth), d in runs.groupby(["kl", "method"], sort=True):
        g = d.groupby("beta").H
        df = (g.count() - 1).clip(lower=0)
        if df.sum() < 1:
            raise ValueError(f"{kl}/{meth}: the pilot needs >= 2 seeds at some beta to plan a spread")
        out[f"{kl}/{meth}"] = float(np.sqrt((g.var(ddof=1).fillna(0) * df).sum() / df.sum()))
    return out


def save_design(design: ClaimDesign, path: Path) -> None:
    from mdkl.runtime import atomic_write_bytes

    atomic_write_bytes(Path(path), (json.dumps(asdict(design), indent=1) + "\n").encode())


def load_design(path: Path) -> ClaimDesign:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: the claims' design is frozen there before the runs "
                                f"(restore it from git; it is not regenerated)")
    return ClaimDesign(**json.loads(p.read_text()))


def t_interval(x, level: float = 0.90) -> tuple[float, float, float]:
    """Mean of the runs ``x`` and its two-sided ``level`` t-interval (infinite ends for one run)."""
    x = np.asarray(x, dtype=np.float64)
    m = float(x.mean())
    if x.size < 2:
        return m, -math.inf, math.inf
    h = float(st.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - h, m + h


def _units(d: pd.DataFrame, pooled: bool) -> str:
    if not len(d):
        return "none"
    if "replicate" in d.columns:  # replicate grids pooled (mdkl.checks.onetwo_paths.pool_replicates)
        return ", ".join(f"{r} beta {b:g} seed {int(s)}" for r, b, s in zip(d.replicate, d.beta, d.seed))
    if pooled:
        return ", ".join(f"beta {b:g} seed {int(s)}" for b, s in zip(d.beta, d.seed))
    return "seed " + ", ".join(str(int(s)) for s in d.seed)


def _target_entropy(d: pd.DataFrame) -> np.ndarray:
    """Per run, the entropy h(q_ref) of its own reference's split (Remark 4.3's target; one value
    per numeric path, whose small model is pretrained there)."""
    return binary_entropy(d.target_p1.to_numpy())


def _one_value(x: np.ndarray) -> float:
    """The value every run shares (one numeric path), else their mean (pooled replicate grids)."""
    u = np.unique(x)
    return float(u[0]) if u.size == 1 else float(np.mean(x))


def _convergence(d: pd.DataFrame, target_h, design: ClaimDesign, kl: str, meth: str,
                 n_planned: int, acted: bool, pooled: bool) -> tuple[str, str, dict]:
    """Claim 2 or 3 on runs ``d``; ``target_h`` the target entropy, one value or one per run."""
    target_h = np.broadcast_to(np.asarray(target_h, dtype=np.float64), (len(d),))
    dist = d.H.to_numpy() - target_h
    if len(d) < 2:
        return ("not tested (fewer than 2 runs left)", f"measured: {len(d)} run(s) without a reward collapse",
                dict(n_units=len(d)))
    m, lo, hi = t_interval(dist)
    mde = equivalence_mde(design.sd(kl, meth), n_planned)
    moving_mask = (np.abs(dist) > design.margin) & ((d.H - d.H_prev).abs().to_numpy() > np.abs(dist))
    moving = d[moving_mask]
    # still-moving runs stay in the mean at their last value; the claim is not tested only when
    # they are more than half of the runs (the mean would then describe where runs are, not end)
    verdict = decide_within(m, lo, hi, design.margin, mde, acted=acted, settled=2 * len(moving) <= len(d))
    per = (f"final H per seed {np.round(d.H.to_numpy(), 3).tolist()}" if not pooled else
           "final H per beta " + "; ".join(f"{b:g}: {np.round(g.H.to_numpy(), 3).tolist()}"
                                           for b, g in d.groupby("beta", sort=True)))
    line = (f"measured: H - target = {m:+.3f} [{lo:+.3f}, {hi:+.3f}] nats (90% interval over {len(d)} runs; target "
            f"{_one_value(target_h):.3f}, margin +-{design.margin:g}, planned MDE {mde:.3f}); {per}")
    if not moving.empty:
        line += (f"; still moving ({len(moving)} of {len(d)}): {_units(moving, pooled)} (last-window change "
                 f"{np.round((moving.H - moving.H_prev).abs().to_numpy(), 3).tolist()} > distance left "
                 f"{np.round(np.abs(moving.H.to_numpy() - target_h[moving_mask]), 3).tolist()})")
    return verdict, line, dict(estimate=m, ci_low=lo, ci_high=hi, sd=float(dist.std(ddof=1)), n_units=len(d),
                               bounds=(-design.margin, design.margin))


def _cell_claims(arm: dict, design: ClaimDesign, kl: str, beta: float, pooled: bool) -> list[dict]:
    """Claims 1-4 on one cell of runs: ``arm`` maps 'vanilla' / 'MARA' to their runs (one beta, or
    every beta when ``pooled``; units are then (beta, seed) pairs)."""
    key = (["replicate"] if "replicate" in arm["vanilla"].columns else []) + ["beta", "seed"]
    ok = {m: a[~a.reward_collapse & ~a.numeric_failure] for m, a in arm.items()}
    gone = {m: a[a.reward_collapse] for m, a in arm.items()}
    failed = {m: a[a.numeric_failure & ~a.reward_collapse] for m, a in arm.items()}
    note = {m: (f"; left out (reward collapse): {_units(gone[m], pooled)}" if len(gone[m]) else "")
            + (f"; left out (numerically failed): {_units(failed[m], pooled)}" if len(failed[m]) else "") for m in arm}
    h_ref = _one_value(_target_entropy(arm["vanilla"])) if len(arm["vanilla"]) else float("nan")
    rows = []
    # 1. the paper's words: vanilla ends on one answer
    v = ok["vanilla"]
    one = v[v.H < design.collapse_entropy]
    k, n = len(one), len(v)
    lo, hi = rate_interval(k, n) if n else (0.0, 1.0)
    on1 = int((one.p1_valid > 0.5).sum())
    rows.append(dict(claim="one answer", kl=kl, beta=beta, method="vanilla",
                     verdict=decide_majority(k, n) if n else "not tested (no runs left)",
                     measured=f"measured: {k} of {n} runs end below {design.collapse_entropy:g} nats "
                              f"({on1} on '1', {k - on1} on '2'); rate 90% interval [{lo:.2f}, {hi:.2f}]"
                              + (("; per beta " + ", ".join(f"{b:g}: {int((g.H < design.collapse_entropy).sum())}/{len(g)}"
                                                            for b, g in v.groupby("beta", sort=True))) if pooled else "")
                              + note["vanilla"],
                     estimate=k / n if n else float("nan"), ci_low=lo, ci_high=hi,
                     sd=math.sqrt(k / n * (1 - k / n)) if n else float("nan"), n_units=n, bounds=(0.5,)))
    # 2-3. convergence to each method's target (Remark 4.3; Remark B.3)
    verdict, line, num = _convergence(v, _target_entropy(v), design, kl, "vanilla", len(arm["vanilla"]), True, pooled)
    rows.append(dict(claim="vanilla target", kl=kl, beta=beta, method="vanilla", verdict=verdict,
                     measured=line + note["vanilla"], **num))
    acted = bool(len(arm["MARA"]) and (arm["MARA"].mara_changed > 0).all())
    verdict, line, num = _convergence(ok["MARA"], LN2, design, kl, "MARA", len(arm["MARA"]), acted, pooled)
    rows.append(dict(claim="MARA target", kl=kl, beta=beta, method="MARA", verdict=verdict,
                     measured=line + f"; MARA changed {arm['MARA'].mara_changed.mean():.1f} samples per step"
                              + note["MARA"], **num))
    # 4. the front, per unit: hypervolume of MARA's checkpoints minus vanilla's
    pair = ok["MARA"].merge(ok["vanilla"], on=key, suffixes=("_m", "_v"))
    effect = LN2 - h_ref
    sd_plan = math.hypot(design.sd(kl, "MARA"), design.sd(kl, "vanilla"))
    mde = paired.minimum_detectable_effect(sd_plan, len(arm["MARA"]))
    # the control trained: its runs (collapsed ones left out, as everywhere in claims 1-4) raised the reward
    trained = bool(len(ok["vanilla"]) and (ok["vanilla"].reward - ok["vanilla"].reward_start).mean() > 0)
    num = dict(n_units=len(pair))
    if len(pair) >= 2:
        diff = (pair.hv_m - pair.hv_v).to_numpy()
        m, lo, hi = t_interval(diff)
        p = float(st.t.sf(m / (diff.std(ddof=1) / math.sqrt(diff.size)), diff.size - 1)) if diff.std() > 0 else float(m <= 0)
        verdict = decide(effect, m, lo, hi, mde, acted=acted, control_trained=trained)
        # the boundaries a decisive verdict must clear: 0 (an effect at all) and, below the prediction,
        # the predicted effect (an interval wholly below it reads "smaller than the paper's")
        num = dict(estimate=m, ci_low=lo, ci_high=hi, sd=float(diff.std(ddof=1)), n_units=len(pair),
                   bounds=(0.0, effect) if m < effect else (0.0,))
        line = (f"measured: {m:+.3f} [{lo:+.3f}, {hi:+.3f}] (90% interval, {len(pair)} "
                f"{'(' + ', '.join(key) + ') pairs' if pooled else 'seeds'}); planned MDE {mde:.3f}; predicted {effect:+.3f}; "
                f"hypervolume MARA {pair.hv_m.mean():.3f}, vanilla {pair.hv_v.mean():.3f}")
    else:
        verdict, line, p = "not tested (fewer than 2 paired seeds)", f"measured: {len(pair)} paired seeds", float("nan")
    rows.append(dict(claim="front", kl=kl, beta=beta, method="MARA", verdict=verdict,
                     measured=line + note["MARA"] + note["vanilla"].replace("; left out", "; vanilla left out"), p=p,
                     **num))
    return rows


def _collapse_claim(a: pd.DataFrame, design: ClaimDesign, kl: str, method: str) -> dict:
    """Claim 5 on runs ``a`` (every beta): none ends collapsed and no batch dips below the floor."""
    a = a.sort_values(["method", "beta", "seed"], ascending=[False, True, True])
    final = a[a.reward_collapse]
    dips = a[~a.reward_collapse & (a.min_batch_reward < design.reward_floor)]
    both = a.method.nunique() > 1
    d_rep = (lambda d: d.replicate.astype(str) + " ") if "replicate" in a.columns else (lambda d: [""] * len(d))
    where = lambda d: ", ".join((f"{m} " if both else "") + f"{r}beta {b:g} seed {int(s)}"
                                for m, r, b, s in zip(d.method, d_rep(d), d.beta, d.seed)) or "none"
    return dict(claim="no collapse", kl=kl, beta=float("nan"), method=method,
                verdict="holds" if final.empty and dips.empty else "FAILS",
                measured=f"measured: {len(final)} of {len(a)} runs end collapsed ({where(final)}); "
                         f"{len(dips)} more dipped below a batch reward of {design.reward_floor:g} "
                         f"({where(dips)}); lowest batch reward {a.min_batch_reward.min():.3f}")


def _claims(runs: pd.DataFrame, design: ClaimDesign, pooled: bool) -> pd.DataFrame:
    need = {"kl", "method", "beta", "seed", "H", "H_prev", "p1_valid", "target_p1", "hv", "reward_collapse",
            "min_batch_reward", "mara_changed", "reward", "reward_start", "numeric_failure"}
    missing = need - set(runs.columns)
    if missing:
        raise ValueError(f"the per-run table lacks {sorted(missing)}: rerun notebook 05 with this version of "
                         f"onetwo_runs.run_summary")
    runs = runs.copy()
    for flag in ("reward_collapse", "numeric_failure"):
        runs[flag] = flag_column(runs[flag])
    rows = []
    for kl in [k for k in ("reverse", "forward") if (runs.kl == k).any()]:
        r = runs[runs.kl == kl]
        cells = [(float("nan"), r)] if pooled else [(b, r[r.beta == b]) for b in sorted(r.beta.unique())]
        for beta, c in cells:
            arm = {m: c[c.method == m].sort_values(["beta", "seed"]) for m in ("vanilla", "MARA")}
            rows += _cell_claims(arm, design, kl, beta, pooled)
        # 5. reward collapses over every beta: never waived
        if pooled:
            rows.append(_collapse_claim(r, design, kl, "any"))
        else:
            rows += [_collapse_claim(r[r.method == m], design, kl, m) for m in ("vanilla", "MARA")]
    out = pd.DataFrame(rows)
    front = out.claim == "front"
    ps = out.loc[front, "p"].to_numpy(dtype=float)
    out["p_holm"] = np.nan
    if np.isfinite(ps).any():
        idx = out.index[front][np.isfinite(ps)]
        out.loc[idx, "p_holm"] = holm(ps[np.isfinite(ps)])
        out.loc[idx, "measured"] = [f"{m}; p = {p:.3g} (Holm {ph:.3g})" for m, p, ph in
                                    zip(out.loc[idx, "measured"], out.loc[idx, "p"], out.loc[idx, "p_holm"])]
    n_beta = runs.beta.nunique()
    out["statement"] = [format_claim(r.claim, r.kl, r.beta, r.method, design, n_beta) for r in out.itertuples()]
    order = list(CLAIMS)
    out["_o"] = out.claim.map(order.index)
    return out.sort_values(["_o", "kl", "beta", "method"], ascending=[True, False, True, False],
                           kind="stable").drop(columns="_o").reset_index(drop=True)


def headline_claims(runs: pd.DataFrame, design: ClaimDesign) -> pd.DataFrame:
    """The headline verdicts of notebook 05 from its per-run table (module docstring): per KL
    direction, every beta and seed of the grid pooled (the paper states each claim for every beta).
    One row per claim with ``claim`` (key of :data:`CLAIMS`), ``kl``, ``beta`` (NaN: every beta),
    ``method``, ``statement``, ``verdict``, ``measured`` (the line printed under it), for claims 1-4
    the numbers the verdict was decided on (``estimate``, its 90% interval ``ci_low`` / ``ci_high``, the
    per-unit spread ``sd``, ``n_units``, and ``bounds``: the boundaries of its rule a decisive verdict
    must clear), and for the front comparison ``p`` and ``p_holm``. Needs the columns of
    :func:`mdkl.tasks.onetwo_runs.run_summary`; a ``replicate`` column (several numeric paths' grids,
    :func:`mdkl.checks.onetwo_paths.pool_replicates`) makes it part of each unit, and each run is
    measured against its own reference's split (``target_p1``)."""
    return _claims(runs, design, pooled=True)


def cell_claims(runs: pd.DataFrame, design: ClaimDesign) -> pd.DataFrame:
    """The same claims per KL direction *and beta* (5 seeds a cell under the cpu profile): the
    exploratory breakdown of :func:`headline_claims`, not a headline (at 5 seeds a cell's verdict
    moves with the kernel path and with one seed swapped: ``mdkl.checks.onetwo_paths``). Claim 5
    pools every beta per method."""
    return _claims(runs, design, pooled=False)


def format_claim(claim: str, kl: str, beta: float, method: str, design: ClaimDesign, n_beta: int = 4) -> str:
    """The statement printed after ``[verdict]`` for one claim (``beta`` NaN: every beta pooled)."""
    where = f"beta = {beta:g}" if np.isfinite(beta) else f"every beta ({n_beta} betas pooled)"
    if claim == "no collapse":
        who = "vanilla or MARA" if method == "any" else method
        return f"no {who} run's reward collapses, {kl} KL (every beta)"
    return CLAIMS[claim].format(kl=kl, where=where, c=design.collapse_entropy)


def report(claims: pd.DataFrame, claim: str, width: int = 110) -> str:
    """The printed lines of one claim family (a key of :data:`CLAIMS`) of :func:`headline_claims`:
    per claim ``[verdict] statement`` (kept whole: ``tests/test_headlines.py`` reads it back) and
    under it the ``measured`` detail wrapped to ``width`` characters."""
    if claim not in CLAIMS:
        raise ValueError(f"unknown claim {claim!r}: one of {list(CLAIMS)}")
    lines = []
    for r in claims[claims.claim == claim].itertuples():
        lines.append(f"[{r.verdict}] {r.statement}")
        lines += textwrap.wrap(r.measured, width, initial_indent="    ", subsequent_indent="      ",
                               break_on_hyphens=False)
    return "\n".join(lines)


def verdict_grid(claims: pd.DataFrame, short: bool = True) -> pd.DataFrame:
    """Every verdict of :func:`headline_claims` at a glance: one row per claim family and KL
    (the reward-collapse claim: per method too), one column per beta (``every beta`` for the
    reward-collapse claim, which pools them); empty where a claim is not made. ``short`` drops the
    reason in parentheses ("not tested (underpowered)" -> "not tested") and "than the paper's",
    which the claim's printed line (:func:`report`) keeps."""
    label = claims.claim.map(SHORT) + np.where(claims.claim == "no collapse",
                                               ", " + claims.method.replace("any", "both methods"), "")
    col = [f"{b:g}" if np.isfinite(b) else "every beta" for b in claims.beta]
    verdict = claims.verdict.str.replace(r" \(.*\)$", "", regex=True).str.replace(" than the paper's", "") \
        if short else claims.verdict
    cells = pd.DataFrame({"claim": label, "KL": claims.kl, "beta": col, "verdict": verdict})
    labels, kls = list(dict.fromkeys(cells.claim)), list(dict.fromkeys(cells.KL))
    rows = sorted(set(zip(cells.claim, cells.KL)), key=lambda t: (labels.index(t[0]), kls.index(t[1])))
    cols = [f"{b:g}" for b in sorted(claims.beta.dropna().unique())] + ["every beta"] * int(claims.beta.isna().any())
    out = cells.pivot(index=["claim", "KL"], columns="beta", values="verdict")
    return out.reindex(index=pd.MultiIndex.from_tuples(rows, names=["claim", "KL"]), columns=cols).fillna("")
