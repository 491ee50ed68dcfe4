"""The 1-2 task's claims (paper §4, Fig. 6a/6b; Remark 4.3) decided from the per-run table alone.

Notebook 05 writes one row per run (:func:`mdkl.tasks.onetwo_runs.run_summary`) to
``data/results/onetwo_small_runs.csv``; :func:`headline_claims` turns that table and the design
frozen before the runs (:class:`ClaimDesign`, ``data/onetwo_planning.json``) into the headline
verdicts, with the rules of :mod:`mdkl.stats.verdicts`; :func:`report` prints one claim family
(verdict lines whole, the measured detail wrapped) and :func:`verdict_grid` tabulates every verdict.
``tests/test_headlines.py`` recomputes them from the committed CSV and checks that the committed
notebook prints exactly them.

Every claim is stated in nats of the exact valid-answer entropy ``H`` (the quantity Fig. 6a plots),
per KL direction and beta, on every seed of the grid:

* **vanilla ends on one answer** (the paper's words): a run ends below ``collapse_entropy``;
  :func:`mdkl.stats.verdicts.decide_majority` on the count (which answer it ends on is printed);
* **vanilla converges to the reference's split** (Remark 4.3: G_beta and G_fwd keep
  pi_ref("1") / pi_ref("2") at every beta): mean of H - h(q_ref) over runs inside +-``margin``;
* **MARA converges to the uniform split** (Remark B.3, Alg. 1 and 2): mean of H - ln 2 inside
  +-``margin``; gated by MARA having acted in every run;
* **MARA's front dominates vanilla's** (Fig. 6b), made a test that can fail: the hypervolume of
  each run's checkpoints (:func:`mdkl.metrics.hypervolume`), MARA minus vanilla paired by seed,
  against the predicted difference ln 2 - h(q_ref) (the paper prints no number), Holm over the grid;
* **no run's reward collapses**, per KL and method over all betas: a run whose final batches
  average below 1/2 (it is then left out of every other claim and named) or whose batch reward
  fell below ``reward_floor`` at any step. Never waived.

"Still moving" (a run outside the margin whose last window of checkpoints moved more than its
remaining distance to the target) can make only a convergence claim ``not tested``, with the
evidence in its measured line.
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
from mdkl.stats.verdicts import (decide, decide_majority, decide_within, equivalence_mde, holm,
                                 rate_interval)

__all__ = ["ClaimDesign", "planning_from_pilot", "load_design", "save_design", "binary_entropy", "t_interval",
           "headline_claims", "format_claim", "report", "verdict_grid", "CLAIMS", "SHORT"]

LN2 = math.log(2)
#: the headline claims, in the order they are printed (statement templates: {kl}, {beta})
CLAIMS = {
    "one answer": "vanilla runs end on one answer (H < {c:g} nats), {kl} KL, beta = {beta:g}",
    "vanilla target": "vanilla converges to the reference's split (Remark 4.3), {kl} KL, beta = {beta:g}",
    "MARA target": "MARA converges to the uniform split, {kl} KL, beta = {beta:g}",
    "front": "MARA's checkpoints dominate vanilla's (hypervolume, paired by seed), {kl} KL, beta = {beta:g}",
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


def _seeds(d: pd.DataFrame) -> str:
    return "seed " + ", ".join(str(int(s)) for s in d.seed) if len(d) else "none"


def _convergence(d: pd.DataFrame, target_h: float, design: ClaimDesign, kl: str, meth: str,
                 n_planned: int, acted: bool) -> tuple[str, str]:
    dist = d.H.to_numpy() - target_h
    if len(d) < 2:
        return "not tested (fewer than 2 runs left)", f"measured: {len(d)} run(s) without a reward collapse"
    m, lo, hi = t_interval(dist)
    mde = equivalence_mde(design.sd(kl, meth), n_planned)
    moving = d[(np.abs(dist) > design.margin) & ((d.H - d.H_prev).abs() > np.abs(dist))]
    verdict = decide_within(m, lo, hi, design.margin, mde, acted=acted, settled=moving.empty)
    line = (f"measured: H - target = {m:+.3f} [{lo:+.3f}, {hi:+.3f}] nats (90% interval; target {target_h:.3f}, "
            f"margin +-{design.margin:g}, planned MDE {mde:.3f}); final H per seed {np.round(d.H.to_numpy(), 3).tolist()}")
    if not moving.empty:
        line += (f"; still moving: {_seeds(moving)} (last-window change "
                 f"{np.round((moving.H - moving.H_prev).abs().to_numpy(), 3).tolist()} > distance left "
                 f"{np.round((moving.H - target_h).abs().to_numpy(), 3).tolist()})")
    return verdict, line


def headline_claims(runs: pd.DataFrame, design: ClaimDesign) -> pd.DataFrame:
    """The headline verdicts of notebook 05 from its per-run table (module docstring): one row per
    claim with ``claim`` (key of :data:`CLAIMS`), ``kl``, ``beta``, ``method``, ``statement``,
    ``verdict``, ``measured`` (the line printed under it), and for the front comparison ``p`` and
    ``p_holm``. Needs the columns of :func:`mdkl.tasks.onetwo_runs.run_summary`."""
    need = {"kl", "method", "beta", "seed", "H", "H_prev", "p1_valid", "target_p1", "hv", "reward_collapse",
            "min_batch_reward", "mara_changed", "reward", "reward_start"}
    missing = need - set(runs.columns)
    if missing:
        raise ValueError(f"the per-run table lacks {sorted(missing)}: rerun notebook 05 with this version of "
                         f"onetwo_runs.run_summary")
    runs = runs.copy()
    runs["reward_collapse"] = runs.reward_collapse.astype(str).str.lower().isin(["true", "1"])
    rows = []
    for kl in [k for k in ("reverse", "forward") if (runs.kl == k).any()]:
        for beta in sorted(runs[runs.kl == kl].beta.unique()):
            arm = {m: runs[(runs.kl == kl) & (runs.beta == beta) & (runs.method == m)].sort_values("seed")
                   for m in ("vanilla", "MARA")}
            ok = {m: a[~a.reward_collapse] for m, a in arm.items()}
            gone = {m: a[a.reward_collapse] for m, a in arm.items()}
            note = {m: f"; left out (reward collapse): {_seeds(gone[m])}" if len(gone[m]) else "" for m in arm}
            q_ref = float(arm["vanilla"].target_p1.iloc[0]) if len(arm["vanilla"]) else float("nan")
            h_ref = float(binary_entropy(q_ref))
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
                                      + note["vanilla"]))
            # 2-3. convergence to each method's target (Remark 4.3; Remark B.3)
            verdict, line = _convergence(v, h_ref, design, kl, "vanilla", len(arm["vanilla"]), True)
            rows.append(dict(claim="vanilla target", kl=kl, beta=beta, method="vanilla", verdict=verdict,
                             measured=line + note["vanilla"]))
            m_ok = ok["MARA"]
            acted = bool(len(arm["MARA"]) and (arm["MARA"].mara_changed > 0).all())
            verdict, line = _convergence(m_ok, LN2, design, kl, "MARA", len(arm["MARA"]), acted)
            rows.append(dict(claim="MARA target", kl=kl, beta=beta, method="MARA", verdict=verdict,
                             measured=line + f"; MARA changed {arm['MARA'].mara_changed.mean():.1f} samples per step"
                                      + note["MARA"]))
            # 4. the front, per seed: hypervolume of MARA's checkpoints minus vanilla's
            pair = ok["MARA"].merge(ok["vanilla"], on="seed", suffixes=("_m", "_v"))
            effect = LN2 - h_ref
            sd_plan = math.hypot(design.sd(kl, "MARA"), design.sd(kl, "vanilla"))
            mde = paired.minimum_detectable_effect(sd_plan, len(arm["MARA"]))
            # the control trained: its runs (collapsed ones left out, as everywhere in claims 1-4) raised the reward
            trained = bool(len(ok["vanilla"]) and (ok["vanilla"].reward - ok["vanilla"].reward_start).mean() > 0)
            if len(pair) >= 2:
                diff = (pair.hv_m - pair.hv_v).to_numpy()
                m, lo, hi = t_interval(diff)
                p = float(st.t.sf(m / (diff.std(ddof=1) / math.sqrt(diff.size)), diff.size - 1)) if diff.std() > 0 else float(m <= 0)
                verdict = decide(effect, m, lo, hi, mde, acted=acted, control_trained=trained)
                line = (f"measured: {m:+.3f} [{lo:+.3f}, {hi:+.3f}] (90% interval, {len(pair)} seeds); planned MDE "
                        f"{mde:.3f}; predicted {effect:+.3f}; hypervolume MARA {pair.hv_m.mean():.3f}, "
                        f"vanilla {pair.hv_v.mean():.3f}")
            else:
                verdict, line, p = "not tested (fewer than 2 paired seeds)", f"measured: {len(pair)} paired seeds", float("nan")
            rows.append(dict(claim="front", kl=kl, beta=beta, method="MARA", verdict=verdict,
                             measured=line + note["MARA"] + note["vanilla"].replace("; left out", "; vanilla left out"),
                             p=p))
        # 5. reward collapses, per method over every beta: never waived
        for meth in ("vanilla", "MARA"):
            a = runs[(runs.kl == kl) & (runs.method == meth)].sort_values(["beta", "seed"])
            final = a[a.reward_collapse]
            dips = a[~a.reward_collapse & (a.min_batch_reward < design.reward_floor)]
            where = lambda d: ", ".join(f"beta {b:g} seed {int(s)}" for b, s in zip(d.beta, d.seed)) or "none"
            rows.append(dict(claim="no collapse", kl=kl, beta=float("nan"), method=meth,
                             verdict="holds" if final.empty and dips.empty else "FAILS",
                             measured=f"measured: {len(final)} of {len(a)} runs end collapsed ({where(final)}); "
                                      f"{len(dips)} more dipped below a batch reward of {design.reward_floor:g} "
                                      f"({where(dips)}); lowest batch reward {a.min_batch_reward.min():.3f}"))
    out = pd.DataFrame(rows)
    front = out.claim == "front"
    ps = out.loc[front, "p"].to_numpy(dtype=float)
    out["p_holm"] = np.nan
    if np.isfinite(ps).any():
        idx = out.index[front][np.isfinite(ps)]
        out.loc[idx, "p_holm"] = holm(ps[np.isfinite(ps)])
        out.loc[idx, "measured"] = [f"{m}; p = {p:.3g} (Holm {ph:.3g})" for m, p, ph in
                                    zip(out.loc[idx, "measured"], out.loc[idx, "p"], out.loc[idx, "p_holm"])]
    out["statement"] = [format_claim(r.claim, r.kl, r.beta, r.method, design) for r in out.itertuples()]
    order = list(CLAIMS)
    out["_o"] = out.claim.map(order.index)
    return out.sort_values(["_o", "kl", "beta", "method"], ascending=[True, False, True, False],
                           kind="stable").drop(columns="_o").reset_index(drop=True)


def format_claim(claim: str, kl: str, beta: float, method: str, design: ClaimDesign) -> str:
    """The statement printed after ``[verdict]`` for one headline claim."""
    return CLAIMS[claim].format(kl=kl, beta=beta, method=method, c=design.collapse_entropy)


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
    label = claims.claim.map(SHORT) + np.where(claims.claim == "no collapse", ", " + claims.method, "")
    col = [f"{b:g}" if np.isfinite(b) else "every beta" for b in claims.beta]
    verdict = claims.verdict.str.replace(r" \(.*\)$", "", regex=True).str.replace(" than the paper's", "") \
        if short else claims.verdict
    cells = pd.DataFrame({"claim": label, "KL": claims.kl, "beta": col, "verdict": verdict})
    labels, kls = list(dict.fromkeys(cells.claim)), list(dict.fromkeys(cells.KL))
    rows = sorted(set(zip(cells.claim, cells.KL)), key=lambda t: (labels.index(t[0]), kls.index(t[1])))
    cols = [f"{b:g}" for b in sorted(claims.beta.dropna().unique())] + ["every beta"] * int(claims.beta.isna().any())
    out = cells.pivot(index=["claim", "KL"], columns="beta", values="verdict")
    return out.reindex(index=pd.MultiIndex.from_tuples(rows, names=["claim", "KL"]), columns=cols).fillna("")
