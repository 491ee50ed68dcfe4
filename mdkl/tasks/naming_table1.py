"""Table 1 as a powered test on the naming task (paper §4, LLM task 2, Table 1; §5, Algorithms 1-2).

Every row of the paper's Table 1 runs on :class:`mdkl.tasks.naming.NamingTask` (the synthetic
"Name a <category>." world, :mod:`mdkl.tasks.naming_world`), where every metric is exact: for each
trained model the probability of every valid answer of every category is enumerated
(:func:`mdkl.tasks.naming.answer_probs`), so a run's entropy, expected distinct answers, both
rewards and KL carry no sampling error; the only randomness left is the training seed.

* :data:`ROWS`: the trained rows as changes to one shared :class:`mdkl.lm.LMConfig` (Base is the
  reference; Ensemble interpolates Base and each RLOO run's weights, WiSE-FT, alpha = 0.5). tau is
  the paper's: the 90th percentile of each batch's rewards (``MARA (fwd, per group)``: of each
  prompt group's, the variant). :func:`row_config` matches the effective beta: GRPO and Unlikely
  divide their advantages by the group's reward sd, so they get beta / sd, with sd the reference's
  exact within-category sd of the reward (:func:`reference_reward_sd`,
  :func:`mdkl.tasks.creative_design.matched_beta`).
* :class:`Design` / :data:`DESIGNS`: seeds, steps, betas per profile; :func:`run_specs` lists
  every run (a pilot of disjoint seeds first, then the rows, then the beta frontier of RLOO and
  MARA (fwd)); :func:`matched_specs` adds, after the rows, each other control at the frontier betas
  on the side of MARA (fwd)'s in-distribution reward, so every comparison of diversity can be made at
  matched reward; :func:`mdkl.tasks.naming_runs.run_grid` trains them in spawned one-thread workers
  (cached per run).
* :func:`runs_frame`: the per-run table (``data/results/naming_table1_runs.csv``): exact ID and
  OOD metrics, loss / gradient-norm summary, the numeric-failure and degenerate flags.
* :func:`pilot_spread`: the pilot's seed spread; :func:`planned_mde`: the minimum detectable effects
  from it (fixed before the design's runs). The spread is frozen (:class:`FrozenPlan`,
  ``data/naming_planning.json``: the committed cpu run's pilot), so every machine gates the same
  design with the same MDEs (a 3-seed pilot's spread moves with the numeric path); :func:`plan_report`
  prints this machine's pilot beside it. :func:`paper_effects`: the paper's differences carried to our scale
  (relative to Base); :func:`verdicts_from_runs`: every verdict, from the per-run table alone;
  :func:`claim_summary`: one verdict per claim of the paper (intersection-union over the pairwise
  comparisons, Holm over the claims).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from mdkl.baselines import UNLIKELY_BETA_RANK
from mdkl.lm.trainer import LMConfig
from mdkl.numerics import GRAD_NORM_FACTOR, LOSS_BOUND
from mdkl.runtime import DATA_DIR, atomic_write_bytes
from mdkl.tasks.naming_runs import history_summary, numeric_failure, run_grid
from mdkl.stats import paired, verdicts
from mdkl.tasks.creative_design import PAPER_TABLE1, matched_beta
from mdkl.tasks.naming import NamingTask
from mdkl.tasks.naming_world import NamingConfig

__all__ = ["ROWS", "TABLE_ORDER", "PAPER_ROW", "METRIC_PAPER", "Design", "DESIGNS", "reference_reward_sd",
           "reference_tau", "base_config", "row_config", "run_specs", "run_design", "run_grid", "numeric_failure", "runs_frame",
           "matched_specs", "pilot_spread", "planned_mde", "PLANNING", "design_key", "FrozenPlan", "freeze_plan",
           "frozen_plan", "plan_report", "paper_effects", "seed_differences", "verdicts_from_runs",
           "matched_reward_difference",
           "claim_summary", "row_summary", "LOSS_BOUND", "GRAD_BOUND", "DEGENERATE_VALID", "CLAIMS"]

#: the trained rows (Base: the reference; Ensemble: WiSE-FT of Base and RLOO), as changes to one LMConfig
ROWS: dict[str, dict] = {
    "GRPO": dict(advantage="grpo", kl="forward", kl_placement="loss"),
    "RLOO": dict(advantage="rloo", kl="reverse", kl_placement="reward"),
    "RLOO + k3": dict(advantage="rloo", kl="forward", kl_placement="loss"),
    "Entropy": dict(advantage="rloo", kl="reverse", kl_placement="reward", entropy=-1.0),  # eta set by the design
    "Unlikely": dict(advantage="grpo", kl="forward", kl_placement="loss", unlikely=UNLIKELY_BETA_RANK),
    "BoN training": dict(best_of_n=True, kl="forward", kl_placement="loss"),
    "MARA (rev)": dict(advantage="rloo", kl="reverse", kl_placement="reward", mara="auto", tau_scope="batch"),
    "MARA (fwd)": dict(advantage="rloo", kl="forward", kl_placement="loss", mara="auto", tau_scope="batch"),
    "MARA (fwd, per group)": dict(advantage="rloo", kl="forward", kl_placement="loss", mara="auto",
                                  tau_scope="group"),
}
#: every row in the paper's order (the per-group variant last: it is not in the paper's table)
TABLE_ORDER = ("Base", "GRPO", "RLOO", "RLOO + k3", "Entropy", "Unlikely", "BoN training", "Ensemble",
               "MARA (rev)", "MARA (fwd)", "MARA (fwd, per group)")
#: the paper's row each of ours stands for (the paper has no RLOO + k3 row: MARA (fwd)'s own KL estimator
#: without MARA, compared as the paper's RLOO)
PAPER_ROW = {r: r for r in TABLE_ORDER if r in set(PAPER_TABLE1.method)} | {"RLOO + k3": "RLOO"}
#: our exact metric -> the paper's Table 1 column it stands for
METRIC_PAPER = {"ood_true": "r_out", "id_distinct": "n_distinct", "id_entropy": "ead"}
#: a run whose |loss| or pre-clip gradient norm ever exceeds these bounds (or is not finite) failed numerically
GRAD_BOUND = GRAD_NORM_FACTOR * 1.0  # the trainer's clip is 1.0 in every row
#: a run whose valid-answer mass on the train categories ends below this is degenerate (mostly non-answers)
DEGENERATE_VALID = 0.5
#: the claims: (name, statement, metric, MARA row, comparison rows or "frontier", direction)
CLAIMS = (
    ("ood", "MARA (fwd) has the best out-of-distribution reward of Table 1's rows", "ood_true", "MARA (fwd)",
     ("Base", "GRPO", "RLOO", "RLOO + k3", "Entropy", "Unlikely", "BoN training", "Ensemble", "MARA (rev)")),
    ("diverse", "MARA (fwd) is the most diverse trained row (expected distinct answers among k)", "id_distinct",
     "MARA (fwd)", ("GRPO", "RLOO", "RLOO + k3", "Entropy", "Unlikely", "BoN training", "MARA (rev)")),
    ("frontier", "MARA (fwd) is more diverse than every trained row at matched in-distribution reward (each row's "
     "beta frontier)", "id_distinct", "MARA (fwd)",
     ("GRPO", "RLOO", "RLOO + k3", "Entropy", "Unlikely", "BoN training", "MARA (rev)")),
    ("premise", "RLOO loses diversity against Base (expected distinct answers among k)", "id_distinct", "Base",
     ("RLOO",)),
)


@dataclass(frozen=True)
class Design:
    """One profile's design: the world, the shared RL settings, seeds and betas."""

    world: NamingConfig = NamingConfig()
    beta: float = 0.1
    """KL coefficient of every row in reward units (GRPO / Unlikely: matched, :func:`row_config`)."""
    frontier_betas: tuple[float, ...] = (0.05, 0.2)
    """Extra betas of the frontier rows (beside ``beta``)."""
    frontier_rows: tuple[str, ...] = ("RLOO", "MARA (fwd)")
    """Rows run at the frontier betas: the first (the frontier claim's control) on every seed, the
    others (shown in the figure) on the first ``frontier_other_seeds`` seeds."""
    frontier_other_seeds: int = 3
    matched_rows: tuple[str, ...] = ("GRPO", "RLOO + k3", "Entropy", "Unlikely", "BoN training", "MARA (rev)")
    """The frontier claim's other controls (beside ``frontier_rows[0]``): each runs, seed by seed, at the
    frontier betas on the side of MARA (fwd)'s in-distribution reward (:func:`matched_specs`)."""
    rows: tuple[str, ...] = tuple(ROWS)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pilot_seeds: tuple[int, ...] = (100, 101, 102)
    """Seeds of the pilot (RLOO and MARA (fwd) at ``beta``), disjoint from ``seeds``: its seed spread
    fixes the MDEs before the design runs."""
    steps: int = 100
    lr: float = 2e-4
    prompts_per_step: int = 8
    group_size: int = 8
    tau_percentile: float = 90.0
    entropy_eta: float = 0.05
    """Entropy row's bonus eta (in reward units: -eta log pi added to the reward)."""
    ensemble_alpha: float = 0.5
    k: int = 10
    """Samples of the expected-distinct metric."""
    workers: int = 2

    def __post_init__(self):
        for b in (self.beta, *self.frontier_betas):
            if not (math.isfinite(b) and b > 0):
                raise ValueError(f"beta {b!r}: every row of this design is KL-regularized, so beta must be > 0 "
                                 f"(beta = 0 is no KL at all, a different row; the exact targets are undefined)")
        if len(self.seeds) < 2 or len(self.pilot_seeds) < 2:
            raise ValueError("need >= 2 seeds and >= 2 pilot seeds (one seed has no spread to test against)")
        if set(self.seeds) & set(self.pilot_seeds):
            raise ValueError("pilot seeds must be disjoint from the design's seeds (the pilot fixes the MDEs)")
        if unknown := (set(self.rows) | set(self.matched_rows)) - set(ROWS):
            raise ValueError(f"unknown rows {sorted(unknown)}: use rows of ROWS ({list(ROWS)})")


DESIGNS = {
    # quick: a smaller world (8 categories x 10 answers; its LM pretrains in ~27 s to valid mass 0.93), a smoke run
    "quick": Design(world=NamingConfig(n_categories=8, n_held_out=2, n_answers=10, n_top=2, n_docs=6000, steps=300),
                    rows=("RLOO", "MARA (fwd)"), frontier_betas=(),
                    seeds=(0, 1), pilot_seeds=(100, 101), steps=12),
    "cpu": Design(),
    "paper": Design(seeds=tuple(range(10)), pilot_seeds=(100, 101, 102, 103, 104), steps=300,
                    frontier_betas=(0.03, 0.05, 0.2, 0.4)),
}


# ----------------------------------------------------------------------------------------------
# configs
# ----------------------------------------------------------------------------------------------
def _mixture(task: NamingTask, ref_probs) -> tuple[np.ndarray, np.ndarray]:
    """(rewards, probabilities) of the reference's reward over the train categories pooled
    (categories uniform, an invalid completion scores 0)."""
    w = task.world
    r, p = [], []
    for i in w.train:
        c = w.categories[i]
        pr = np.asarray(ref_probs[i], dtype=np.float64)
        r += [*np.asarray(c.proxy if task.reward == "proxy" else c.quality), 0.0]
        p += [*(pr / len(w.train)), max(0.0, 1 - pr.sum()) / len(w.train)]
    return np.asarray(r), np.asarray(p)


def reference_reward_sd(task: NamingTask, ref_probs) -> float:
    """Mean over the train categories of the reference's exact within-category sd of the reward:
    the sd a GRPO group divides by at the start of training (it shrinks as the policy sharpens,
    so GRPO's effective beta grows during training; the match holds at the start)."""
    w = task.world
    sds = []
    for i in w.train:
        c = w.categories[i]
        pr = np.asarray(ref_probs[i], dtype=np.float64)
        r = np.append(np.asarray(c.proxy if task.reward == "proxy" else c.quality), 0.0)
        p = np.append(pr, max(0.0, 1 - pr.sum()))
        m = p @ r
        sds.append(math.sqrt(max(0.0, p @ (r - m) ** 2)))
    return float(np.mean(sds))


def reference_tau(task: NamingTask, ref_probs, q: float = 90.0) -> float:
    """The exact ``q``-th percentile of the reference's reward over a batch of the train categories
    (the per-batch tau at step 0): the fixed tau of MARA's exact targets."""
    r, p = _mixture(task, ref_probs)
    order = np.argsort(r, kind="stable")
    cdf = np.cumsum(p[order]) / p.sum()
    return float(r[order][np.searchsorted(cdf, q / 100.0 - 1e-12)])


def base_config(design: Design, task: NamingTask) -> LMConfig:
    """The LMConfig every row shares (RLOO's)."""
    return LMConfig(beta=design.beta, kl="reverse", kl_placement="reward", kl_level="token",
                    group_size=design.group_size, prompts_per_step=design.prompts_per_step,
                    max_new_tokens=task.max_new_tokens, steps=design.steps, eval_every=design.steps,
                    eval_samples=len(task.world.train), lr=design.lr, tau_percentile=design.tau_percentile)


def row_config(design: Design, task: NamingTask, row: str, seed: int, beta: float, group_sd: float) -> LMConfig:
    """``row``'s config at ``seed`` and effective ``beta``: GRPO and Unlikely get
    :func:`mdkl.tasks.creative_design.matched_beta` (beta / ``group_sd``), the Entropy row the
    design's eta, MARA rows the percentile tau (per batch, or per group for the variant)."""
    if row not in ROWS:
        raise ValueError(f"unknown row {row!r}: use one of {list(ROWS)} (Base and Ensemble are not trained)")
    ch = dict(ROWS[row])
    if ch.get("entropy"):
        ch["entropy"] = design.entropy_eta
    c = base_config(design, task).replace(seed=int(seed), beta=float(beta), **ch)
    if c.advantage == "grpo" and not c.best_of_n:
        c = c.replace(beta=matched_beta(float(beta), "grpo", group_sd))
    return c


def run_specs(design: Design, task: NamingTask, group_sd: float) -> list[dict]:
    """Every run of the design, in order: the pilot (RLOO and MARA (fwd) at ``beta``, pilot seeds),
    the rows at ``beta`` over the seeds, the frontier rows at the other betas."""
    specs = []
    for s in design.pilot_seeds:
        for r in ("RLOO", "MARA (fwd)"):
            specs.append({"phase": "pilot", "row": r, "seed": s, "beta": design.beta})
    for s in design.seeds:
        for r in design.rows:
            specs.append({"phase": "design", "row": r, "seed": s, "beta": design.beta})
    for b in design.frontier_betas:
        for i, s in enumerate(design.seeds):
            for j, r in enumerate(design.frontier_rows):
                if j == 0 or i < design.frontier_other_seeds:
                    specs.append({"phase": "frontier", "row": r, "seed": s, "beta": b})
    for sp in specs:
        sp["config"] = row_config(design, task, sp["row"], sp["seed"], sp["beta"], group_sd)
    return specs


def matched_specs(design: Design, task: NamingTask, group_sd: float, runs: pd.DataFrame) -> list[dict]:
    """The frontier claim's extra runs (phase ``'matched'``), chosen from the design's runs by a rule
    fixed before they run: for each of ``design.matched_rows`` and each seed where both its design run
    and MARA (fwd)'s are usable, the frontier betas *below* the design's beta when the row's
    in-distribution reward is below MARA (fwd)'s in that seed (a smaller beta optimizes further),
    *above* it otherwise, so that the row's beta frontier can reach MARA (fwd)'s reward
    (:func:`matched_reward_difference` never extrapolates)."""
    ok = _ok(runs[runs.phase == "design"])
    lead = ok[ok.row == "MARA (fwd)"].set_index("seed").id_proxy
    specs = []
    for r in design.matched_rows:
        x = ok[ok.row == r].set_index("seed").id_proxy
        for s in design.seeds:
            if s not in x.index or s not in lead.index:
                continue
            below = float(x[s]) < float(lead[s])
            for b in (v for v in design.frontier_betas if (v < design.beta if below else v > design.beta)):
                specs.append({"phase": "matched", "row": r, "seed": s, "beta": b,
                              "config": row_config(design, task, r, s, b, group_sd)})
    return specs


# ----------------------------------------------------------------------------------------------
# one run (worker) and the grid
# ----------------------------------------------------------------------------------------------
def run_design(design: Design, task: NamingTask, group_sd: float, base_metrics: dict, *, force: bool = False,
               progress: bool = False) -> tuple[pd.DataFrame, list[dict]]:
    """Every run of ``design``, in order: :func:`run_specs` (pilot, rows, frontier), then the
    matched-reward runs that :func:`matched_specs` chooses from their results. Returns the per-run
    table (:func:`runs_frame`) and the matched runs' specs. Cached runs are served at once."""
    specs = run_specs(design, task, group_sd)
    results = run_grid(design, specs, force=force, progress=progress)
    matched = matched_specs(design, task, group_sd, runs_frame(design, specs, results, base_metrics))
    results = results + run_grid(design, matched, force=force, progress=progress)
    return runs_frame(design, specs + matched, results, base_metrics), matched


def runs_frame(design: Design, specs: list[dict], results: list[dict], base_metrics: dict) -> pd.DataFrame:
    """The per-run table: one line per run (Base once per seed, Ensemble beside each RLOO run at the
    design's beta) with phase, row, seed, beta (reward units), the config's beta, the exact ``id_*``
    / ``ood_*`` metrics, the history's loss / gradient-norm summary, ``numeric_failure`` and
    ``degenerate`` (ID valid mass < :data:`DEGENERATE_VALID`)."""
    lines = [{"phase": "design", "row": "Base", "seed": s, "beta": 0.0, "config_beta": 0.0, **base_metrics}
             for s in design.seeds]
    for sp, res in zip(specs, results):
        summ = history_summary(res["history"])
        lines.append({"phase": sp["phase"], "row": sp["row"], "seed": sp["seed"], "beta": sp["beta"],
                      "config_beta": sp["config"].beta, **res["metrics"], **summ})
        if "ensemble" in res and sp["phase"] == "design":
            lines.append({"phase": "design", "row": "Ensemble", "seed": sp["seed"], "beta": sp["beta"],
                          "config_beta": sp["config"].beta, **res["ensemble"], **summ})
    df = pd.DataFrame(lines)
    df["numeric_failure"] = df["numeric_failure"].fillna(False).astype(bool)
    df["degenerate"] = df["id_valid"] < DEGENERATE_VALID
    return df


# ----------------------------------------------------------------------------------------------
# MDEs, the paper's effects and the verdicts, from the per-run table alone
# ----------------------------------------------------------------------------------------------
def _ok(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[~runs.numeric_failure & ~runs.degenerate]


def pilot_spread(runs: pd.DataFrame, metrics=tuple(METRIC_PAPER)) -> pd.Series:
    """Per metric, the sd over the pilot's seeds (the ``pilot`` rows of ``runs``) of MARA (fwd) - RLOO."""
    pil = _ok(runs[runs.phase == "pilot"]).pivot_table(index="seed", columns="row", values=list(metrics))
    out = {}
    for m in metrics:
        d = (pil[(m, "MARA (fwd)")] - pil[(m, "RLOO")]).dropna()
        if len(d) < 2:
            raise ValueError(f"the pilot has {len(d)} usable seed pairs for {m}: need >= 2 to fix an MDE")
        out[m] = float(d.std(ddof=1))
    return pd.Series(out, name="sd")


def planned_mde(runs: pd.DataFrame, n_seeds: int | None = None, metrics=tuple(METRIC_PAPER),
                spread: pd.Series | None = None) -> pd.Series:
    """Minimum detectable effect per metric of a paired one-sided t-test over ``n_seeds`` seeds
    (default: the design's seeds in ``runs``) at the seed spread ``spread`` (default: the pilot rows'
    of ``runs``, :func:`pilot_spread`; notebook 07 passes the frozen plan's,
    :meth:`FrozenPlan.spread_series`) (:func:`mdkl.stats.paired.minimum_detectable_effect`). One sd
    for every comparison of a metric (against Base, which has no seed spread, it is conservative)."""
    sd = pilot_spread(runs, metrics) if spread is None else spread
    if missing := set(metrics) - set(sd.index):
        raise ValueError(f"the spread has no sd for {sorted(missing)}: freeze a plan with every metric of {list(metrics)}")
    if n_seeds is None:
        n_seeds = runs[(runs.phase == "design")].seed.nunique()
    return _mdes(sd, int(n_seeds), metrics)


def _mdes(sd: pd.Series, n_seeds: int, metrics) -> pd.Series:
    return pd.Series({m: paired.minimum_detectable_effect(float(sd[m]), n_seeds) for m in metrics}, name="mde")


#: the frozen plan of the cpu design: written once by :func:`freeze_plan` from the committed run's pilot,
#: restored from git, never regenerated by a run
PLANNING = DATA_DIR / "naming_planning.json"


def design_key(design: Design) -> dict:
    """What a frozen plan belongs to: every field of ``design`` that changes its runs (all but
    ``workers``), as JSON values."""
    d = asdict(design)
    d.pop("workers")
    return json.loads(json.dumps(d))


@dataclass(frozen=True)
class FrozenPlan:
    """The pilot's seed spread, frozen before the design runs: the MDEs of every machine's verdicts."""

    design: dict
    """:func:`design_key` of the design the pilot belongs to."""
    planning_sd: dict
    """Metric -> sd over pilot seeds of MARA (fwd) - RLOO (:func:`pilot_spread`; the same field as
    :class:`mdkl.tasks.onetwo_claims.ClaimDesign`'s)."""
    source: str
    """Where the spread was measured."""

    def spread_series(self) -> pd.Series:
        return pd.Series(self.planning_sd, name="sd", dtype=np.float64)


def freeze_plan(design: Design, runs: pd.DataFrame, source: str, path: Path = PLANNING) -> FrozenPlan:
    """Freeze :func:`pilot_spread` of ``runs``' pilot for ``design`` in ``path`` (atomically)."""
    plan = FrozenPlan(design_key(design), pilot_spread(runs).to_dict(), source)
    atomic_write_bytes(Path(path), (json.dumps(asdict(plan), indent=1) + "\n").encode())
    return plan


def frozen_plan(design: Design, path: Path = PLANNING) -> FrozenPlan | None:
    """The plan frozen for ``design`` (None when ``path`` holds another design's, e.g. another profile
    or a changed parameter: that design plans from its own pilot)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: the naming design's plan is frozen there (restore it from git)")
    plan = FrozenPlan(**json.loads(p.read_text()))
    return plan if plan.design == design_key(design) else None


def plan_report(plan: FrozenPlan | None, here: pd.Series, n_seeds: int) -> str:
    """Which spread decides (the frozen plan's, or this pilot's when none is frozen for the design)
    and this machine's pilot beside it, with the MDEs each gives over ``n_seeds`` seeds."""
    def fmt(sd: pd.Series) -> str:
        mde = _mdes(sd, n_seeds, here.index)
        return ", ".join(f"{m} sd {sd[m]:.4f} (MDE {mde[m]:.4f})" for m in here.index)
    if plan is None:
        return f"no plan is frozen for this design: this machine's pilot decides:\n    {fmt(here)}"
    frozen = plan.spread_series()
    same = bool(np.allclose(frozen[here.index].to_numpy(), here.to_numpy(), rtol=1e-12, atol=0))
    return (f"frozen plan (data/{PLANNING.name}: {plan.source}):\n    {fmt(frozen)}\nthis machine's pilot:"
            + (" the same" if same else f"\n    {fmt(here)}\n  the frozen plan decides"))


def paper_effects(runs: pd.DataFrame, mara: str, rows, metric: str) -> dict[str, float]:
    """The paper's Table 1 difference ``mara - row`` on ``metric``'s column (:data:`METRIC_PAPER`),
    relative to the paper's Base value, times our Base value (known before training: Base is the
    reference): a share of the base level carries across reward scales and k where raw units do not."""
    t = PAPER_TABLE1.set_index("method")
    col = METRIC_PAPER[metric]
    ours = float(runs.loc[runs.row == "Base", metric].mean())
    return {r: float((t.loc[PAPER_ROW[mara], col] - t.loc[PAPER_ROW[r], col]) / t.loc["Base", col] * ours)
            for r in rows}


def seed_differences(runs: pd.DataFrame, a: str, b: str, metric: str, phase: str = "design") -> pd.Series:
    """Per seed, ``b - a`` on ``metric`` over the seeds where both runs are usable (neither failed
    numerically nor degenerate)."""
    ok = _ok(runs[runs.phase == phase])
    x = ok[ok.row == a].set_index("seed")[metric]
    y = ok[ok.row == b].set_index("seed")[metric]
    return (y - x).dropna()


def matched_reward_difference(runs: pd.DataFrame, metric: str = "id_distinct", x: str = "id_proxy",
                              control: str = "RLOO") -> pd.Series:
    """Per seed, MARA (fwd)'s ``metric`` minus ``control``'s at the same in-distribution reward ``x``:
    the control's value linearly interpolated along its beta frontier (its usable runs at every beta
    of that seed: design, frontier and matched phases, sorted by ``x``). A seed where MARA (fwd)'s
    ``x`` lies outside the control's range is dropped (no extrapolation)."""
    ok = _ok(runs[runs.phase.isin(["design", "frontier", "matched"])])
    out = {}
    for s, g in ok.groupby("seed"):
        rl = g[g.row == control].sort_values(x)
        m = g[(g.row == "MARA (fwd)") & (g.phase == "design")]
        if len(rl) < 2 or len(m) != 1:
            continue
        xv = float(m[x].iloc[0])
        if rl[x].min() <= xv <= rl[x].max():
            out[s] = float(m[metric].iloc[0]) - float(np.interp(xv, rl[x], rl[metric]))
    return pd.Series(out, dtype=np.float64)


def _t_interval(d: pd.Series, level: float = 0.90) -> tuple[float, float, float, float]:
    """(mean, low, high, one-sided p of mean > 0) of a t-interval over seeds."""
    n = len(d)
    m = float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return m, m, m, 0.0 if m > 0 else 1.0
    t = stats.t.ppf(0.5 + level / 2, n - 1)
    return m, m - t * se, m + t * se, float(stats.t.sf(m / se, n - 1))


def verdicts_from_runs(runs: pd.DataFrame, min_kl: float = 0.05, spread: pd.Series | None = None) -> pd.DataFrame:
    """Every pairwise comparison of :data:`CLAIMS`, decided by :func:`mdkl.stats.verdicts.decide`
    from the per-run table alone: paired by seed, 90% t-interval over seeds, the MDE of
    :func:`planned_mde` at ``spread`` (the frozen plan's; default: the table's own pilot), the paper's effect of :func:`paper_effects`. Gates: MARA
    acted (changed rewards in the runs), the control trained (median ID KL to the reference >=
    ``min_kl`` nats; Base needs none)."""
    n_seeds = runs[runs.phase == "design"].seed.nunique()
    mde = planned_mde(runs, n_seeds, spread=spread)
    lines = []
    for name, statement, metric, lead, others in CLAIMS:
        if name == "premise":
            eff = {"RLOO": -paper_effects(runs, "RLOO", ["Base"], metric)["Base"]}
        else:
            eff = paper_effects(runs, lead, others, metric)
        for other in others:
            if name == "frontier":
                d = matched_reward_difference(runs, metric, control=other)
            elif name == "premise":
                d = seed_differences(runs, other, lead, metric)  # Base - RLOO: the paper's loss, positive
            else:
                d = seed_differences(runs, other, lead, metric)
            rec = {"claim": name, "comparison": f"{lead} - {other}", "metric": metric, "n_seeds": len(d),
                   "paper_effect": eff[other], "mde": float(mde[metric])}
            trained = runs[(runs.phase == "design") & (runs.row == (other if name != "premise" else "RLOO"))]
            acted = True
            if lead.startswith("MARA"):
                lr = runs[(runs.phase == "design") & (runs.row == lead)]
                acted = bool((lr.mara_changed_per_step > 0).all())
            control_trained = other == "Base" or bool(trained.id_kl.median() >= min_kl)
            if len(d) < 2:
                rec.update(estimate=math.nan, ci_low=math.nan, ci_high=math.nan, p=math.nan,
                           verdict="not tested (fewer than 2 usable seeds)")
            elif eff[other] <= 0:
                m, lo, hi, p = _t_interval(d)
                rec.update(estimate=m, ci_low=lo, ci_high=hi, p=p, verdict="not tested (the paper shows no gain)")
            else:
                m, lo, hi, p = _t_interval(d)
                rec.update(estimate=m, ci_low=lo, ci_high=hi, p=p,
                           verdict=verdicts.decide(eff[other], m, lo, hi, float(mde[metric]), acted, control_trained))
            lines.append(rec)
    return pd.DataFrame(lines)


def claim_summary(v: pd.DataFrame) -> pd.DataFrame:
    """One verdict per claim: an intersection-union test over its pairwise comparisons (the claim
    "best of all rows" holds only if every comparison holds; its p is their largest), FAILS if any
    comparison fails, else the first gate that stopped a comparison, else inconclusive; the claims'
    p-values Holm-adjusted (:func:`mdkl.stats.verdicts.holm`)."""
    out = []
    for name, statement, metric, lead, others in CLAIMS:
        g = v[v.claim == name]
        vs = list(g.verdict)
        if any(x == verdicts.FAILS for x in vs):
            verdict = verdicts.FAILS
        elif all(x in (verdicts.HOLDS, verdicts.HOLDS_SMALLER) for x in vs):
            verdict = verdicts.HOLDS if all(x == verdicts.HOLDS for x in vs) else verdicts.HOLDS_SMALLER
        elif gates := [x for x in vs if x.startswith("not tested")]:
            verdict = gates[0]
        else:
            verdict = verdicts.INCONCLUSIVE
        p = float(g.p.max()) if g.p.notna().all() else math.nan
        out.append({"claim": name, "statement": statement, "verdict": verdict, "p": p,
                    "comparisons": len(g), "holding": int(g.verdict.isin([verdicts.HOLDS, verdicts.HOLDS_SMALLER]).sum())})
    df = pd.DataFrame(out)
    ok = df.p.notna()
    df["p_holm"] = math.nan
    if ok.any():
        df.loc[ok, "p_holm"] = verdicts.holm(df.loc[ok, "p"])
    return df


def row_summary(runs: pd.DataFrame, phase: str = "design",
                cols=("id_proxy", "id_true", "ood_true", "id_entropy", "id_distinct", "id_top_mass", "id_long",
                      "ood_long", "id_kl")) -> pd.DataFrame:
    """Mean and sd over usable seeds per row (Table 1 on the naming task), with the counts of runs
    that failed numerically or degenerated (reported, never averaged in)."""
    r = runs[runs.phase == phase]
    ok = _ok(r)
    g = ok.groupby("row")[list(cols)]
    t = g.mean().join(g.std(ddof=1).add_suffix("_sd"))
    t["seeds"] = ok.groupby("row").size()
    t["numeric_failures"] = r.groupby("row").numeric_failure.sum().astype(int)
    t["degenerate"] = r.groupby("row").degenerate.sum().astype(int)
    order = [x for x in TABLE_ORDER if x in t.index]
    return t.reindex(order)
