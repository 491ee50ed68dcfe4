"""Calibration of the chemistry reward analogue on the baseline only (paper §4, Table 2).

The paper's REINVENT finds unique hits (reward >= screen) on 55-65% of its reward calls at the
0.80 screen and 11-16% at 0.85 (:data:`TARGET_RATES`). The offline analogue
(:mod:`mdkl.chem.reward`) has free parameters of its own that the paper does not fix: the
potency transform (:attr:`RewardConfig.potency_*`), the SYNTH analogue's SA thresholds
(``sa_good`` / ``sa_bad``) and the ALL-AMIDE stock rule (``stock_max_heavy_atoms``); the agent's
learning rate is chosen here too. :func:`calibrate` runs REINVENT only (never MARA), on seeds
disjoint from the evaluation seeds, over a small stated grid (:class:`CalibrationGrid`), and
:func:`choose` keeps the grid point whose unique-hit rates land closest to the paper's (within a
factor ``tolerance``, ALL-AMIDE harder than SYNTH; the rules: :mod:`mdkl.chem.regime`). The result
is a :class:`mdkl.chem.frozen.RewardCalibration`, written once to ``data/chem_reward_<profile>.json``
and frozen: its ``version`` (a label plus a hash of every parameter) goes into each run's cache key
through :attr:`RewardConfig.version`, and :func:`load_calibration` refuses a file edited after
calibration (the file handling lives in :mod:`mdkl.chem.frozen`; its names are importable from here).
``python -m mdkl.chem.calibration --profile P`` (``make chem-calibrate``) calibrates the v1 analogue;
quick reuses cpu's file. The v2 analogue (:mod:`mdkl.chem.calibration_v2`) runs the same stages
with its own grid and rule through :func:`freeze_or_check`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from mdkl.chem.frozen import (EVAL_SEEDS, RewardCalibration, calibration_path, load_calibration, load_for_prior,
                              save_calibration)
from mdkl.chem.regime import SCREENS, TARGET_RATES, assess, eligible, hit_profile, metric_columns, task_miss
from mdkl.chem.reinvent import RLConfig, run_rl
from mdkl.chem.reward import TASKS, RewardConfig
from mdkl.runtime import resolve_profile

__all__ = ["TARGET_RATES", "SCREENS", "EVAL_SEEDS", "RewardCalibration", "calibration_path", "save_calibration",
           "load_calibration", "load_for_prior", "CalibrationGrid", "unique_hit_rates", "run_summary", "calibration_run",
           "synth_fail_share", "calibrate", "frozen_choice", "chosen_rewards", "describe_choice", "choose", "choose_lr", "chosen_runs", "seed_spread",
           "calibration_from_choice", "run_calibration", "point_spread", "freeze_or_check", "calibration_cli", "main"]


@dataclass(frozen=True)
class CalibrationGrid:
    """The REINVENT-only calibration runs, in three stages (defaults: the cpu prior's plan, 12 runs
    of 10,000 calls, ~8 min on 2 cores):

    1. ``coarse``: every shared potency choice with every task-specific one (SYNTH: ``sa``;
       ALL-AMIDE: ``stock_max_heavy_atoms``) at the learning rates ``lr`` and seeds ``seeds``;
       :func:`choose` keeps the closest point,
    2. ``lr``: the chosen rewards at each ``lr_check`` (the sensitivity check), same seeds;
       :func:`choose_lr` keeps the learning rate closest to the paper's regime,
    3. ``spread``: the chosen rewards and lr at ``spread_seeds``: with the stage-1/2 seed, the
       between-seed spread of log yield that the power calculation needs (:func:`seed_spread`)."""

    potency: tuple = ((-3.0, -1.0), (-4.0, -2.0))
    """(floor, ceiling) pairs of log10 P(DRD2) for the saturating potency transform (P >= 10**ceiling
    scores > 0.99; the prior's median sample has log10 P ~ -3)."""
    potency_transform: str = "sigmoid"
    """transform of every grid point ('sigmoid': REINVENT's, saturating at the ceiling)."""
    sa: tuple = ((2.5, 3.0),)
    """SYNTH analogue (sa_good, sa_bad) pairs (SA > 2.5: about 40% of MOSES molecules, so the term binds)."""
    stock_max_heavy_atoms: tuple = (14, 18)
    """ALL-AMIDE stock rule: building blocks with at most this many heavy atoms count as in stock."""
    lr: tuple = (5e-4,)
    """agent learning rates of the coarse stage (REINVENT's 5e-4)."""
    lr_check: tuple = (1e-4,)
    """learning rates of the sensitivity stage, at the chosen rewards (REINVENT 4's 1e-4)."""
    seeds: tuple = (1000,)
    """seeds of the coarse and lr stages, disjoint from the evaluation seeds range(EVAL_SEEDS)."""
    spread_seeds: tuple = (1001, 1002)
    """further seeds of the chosen point (the spread stage)."""
    reward_calls: int = 10_000
    """calls per calibration run (the paper's 10,000: rates depend on the run length)."""
    duplicates: str = "zero"
    """in-batch duplicate rule of the calibration runs (REINVENT 4's 'zero')."""
    min_synth_fail: float = 0.2
    """the SYNTH term must bind: at least this share of valid prior samples must score < 1 on it."""
    tolerance: float = 1.5
    """a rate within a factor ``tolerance`` of the paper's counts as in the regime."""
    base: dict = field(default_factory=dict)
    """other RewardConfig fields shared by every grid point."""
    regime: str = "rates"
    """the choice rule (:mod:`mdkl.chem.regime`): 'rates' (v1: the unique-hit rates) or
    'rates+narrowing' (v2: the rates and #Circles of the 0.85 hits, among points whose potency binds)."""
    min_median_p: float = 0.0
    """'rates+narrowing': a point counts only if the median P(DRD2 active) of its hits at both screens
    is at least this (0: no condition)."""

    def __post_init__(self):
        if not (self.potency and self.sa and self.stock_max_heavy_atoms and self.lr and self.seeds):
            raise ValueError("every grid axis (potency, sa, stock_max_heavy_atoms, lr, seeds) needs >= 1 value")
        all_seeds = tuple(self.seeds) + tuple(self.spread_seeds)
        bad = [s for s in all_seeds if not isinstance(s, int) or 0 <= s < EVAL_SEEDS]
        if bad:
            raise ValueError(f"calibration seeds {bad} overlap the evaluation seeds range({EVAL_SEEDS}): use >= {EVAL_SEEDS}")
        if len(set(all_seeds)) != len(all_seeds):
            raise ValueError(f"seeds {self.seeds} and spread_seeds {self.spread_seeds} must all differ")
        metric_columns(self.regime)  # names the regimes
        if not 0 <= self.min_median_p < 1:
            raise ValueError(f"min_median_p={self.min_median_p}: a probability in [0, 1) (0.5: hits the classifier "
                             f"calls active; 0: no condition)")
        if self.tolerance <= 1 or not 0 <= self.min_synth_fail < 1 or self.reward_calls < 1:
            raise ValueError(f"tolerance={self.tolerance}, min_synth_fail={self.min_synth_fail}, reward_calls="
                             f"{self.reward_calls}: need tolerance > 1, 0 <= min_synth_fail < 1 and reward_calls >= 1")
        for lr in tuple(self.lr) + tuple(self.lr_check):
            RLConfig(lr=lr)  # same lr check as the runs
        list(self.rewards())  # every grid point must be a valid RewardConfig (its error names the field)

    def rewards(self):
        """(task, RewardConfig) of every task-specific grid point under every potency choice."""
        for lo, hi in self.potency:
            pot = dict(potency_floor=lo, potency_ceiling=hi, potency_transform=self.potency_transform, **self.base)
            for good, bad in self.sa:
                yield "synth", RewardConfig("synth", sa_good=good, sa_bad=bad, **pot)
            for ha in self.stock_max_heavy_atoms:
                yield "amide", RewardConfig("amide", stock_max_heavy_atoms=ha, **pot)

    def rl_config(self, lr: float, seed: int) -> RLConfig:
        """The REINVENT run of one calibration point."""
        return RLConfig(reward_calls=self.reward_calls, seed=seed, lr=lr, mara="none", duplicates=self.duplicates)

    @property
    def n_runs(self) -> int:
        """Runs of the three stages together."""
        n_rewards = len(list(self.rewards()))
        return (n_rewards * len(self.lr) * len(self.seeds) + 2 * len(self.lr_check) * len(self.seeds)
                + 2 * len(self.spread_seeds))


def unique_hit_rates(log, screens=SCREENS) -> dict:
    """Unique valid molecules with reward >= screen per reward call, for each screen."""
    n = len(log)
    if n == 0:
        raise ValueError("empty run log: no reward calls")
    ok = log[log["canonical"].notna()]
    return {s: ok.loc[ok["reward"] >= s, "canonical"].nunique() / n for s in screens}


def run_summary(log) -> dict:
    """What a calibration run reports: unique-hit rates and yields at both screens, the share of
    calls that repeat a molecule of the same batch (REINVENT 4 scores them 0) and of batches with
    such a repeat, the invalid share, and the mean reward of the last quarter of the calls."""
    rates = unique_hit_rates(log)
    n = len(log)
    dup = log["duplicate"].to_numpy(bool)
    return {**{f"rate_{s:.2f}": r for s, r in rates.items()},
            **{f"yield_{s:.2f}": int(round(r * n)) for s, r in rates.items()},
            "repeat_share": float(dup.mean()), "batches_with_repeat": float(log.groupby("step")["duplicate"].any().mean()),
            "invalid_share": float((~log["valid"].to_numpy(bool)).mean()),
            "reward_last_quarter": float(log["reward"].to_numpy()[int(0.75 * n):].mean())}


def calibration_run(prior, vocab, scorer, cfg: RLConfig, progress: bool = False, profile_hits: bool = False) -> dict:
    """One REINVENT calibration run (``cfg.mara`` must be 'none': calibration never sees MARA):
    :func:`run_summary` of its log (with ``profile_hits``, also :func:`mdkl.chem.regime.hit_profile`)
    plus its wall time."""
    import time

    if cfg.mara != "none":
        raise ValueError(f"mara={cfg.mara!r}: calibration runs REINVENT only (mara='none'), never MARA")
    t = time.perf_counter()
    out = run_rl(prior, vocab, scorer, cfg, progress=progress)
    extra = hit_profile(out["log"]) if profile_hits else {}
    return {**run_summary(out["log"]), **extra, "seconds": time.perf_counter() - t}


def _row(stage, task, rcfg, lr, seed, fail, res) -> dict:
    return {"stage": stage, "task": task, "potency_floor": rcfg.potency_floor, "potency_ceiling": rcfg.potency_ceiling,
            "sa_good": rcfg.sa_good, "sa_bad": rcfg.sa_bad, "stock_max_heavy_atoms": rcfg.stock_max_heavy_atoms,
            "lr": lr, "seed": seed, "synth_fail_share": fail if task == "synth" else float("nan"), **res,
            **{f"vs_paper_{s:.2f}": res[f"rate_{s:.2f}"] / TARGET_RATES[task, s] for s in SCREENS}}


def synth_fail_share(prior_sa, sa_good: float) -> float:
    """Share of valid prior samples (their SA scores ``prior_sa``) whose SYNTH term is < 1 (SA > sa_good)."""
    sa = np.asarray(prior_sa, dtype=np.float64)
    return float((sa > sa_good).mean()) if len(sa) else float("nan")


def calibrate(run, grid: CalibrationGrid = CalibrationGrid(), prior_sa=(), frozen: "RewardCalibration | None" = None):
    """The three stages of ``grid`` (REINVENT only). ``run(reward_config, rl_config)`` returns
    :func:`calibration_run`'s dict (the caller caches it and owns the scorers); ``prior_sa``: SA
    scores of valid prior samples (SYNTH's binding share). Returns ``(table, choice)``: one row per
    run (stage, task, parameters, lr, seed, rates, yields, ratios to the paper's, repeat share) and
    :func:`choose`'s result with the lr of :func:`choose_lr` and the rates at the chosen point
    averaged over all its seeds.

    ``frozen``: a committed calibration is a configuration, not a prediction of this machine's
    runs (seeded runs differ in their last bits across CPU vendors, and a choice between two close
    grid points can flip). With it, the coarse stage runs as usual and this machine's own choice is
    reported as ``choice["rerun"]`` (its rewards, lr and rates), but the lr and spread stages run at
    the *frozen* point and ``choice`` is the frozen point (its lr included): whatever reads the
    table downstream (the spread of :func:`seed_spread`, :func:`chosen_runs`) finds the frozen
    point's seeds whichever point this machine would have chosen."""
    import pandas as pd

    rows = []

    def add(stage, task, rcfg, lr, seed):
        res = run(rcfg, grid.rl_config(lr, seed))
        rows.append(_row(stage, task, rcfg, lr, seed, synth_fail_share(prior_sa, rcfg.sa_good), res))

    for task, rcfg in grid.rewards():
        for lr in grid.lr:
            for seed in grid.seeds:
                add("coarse", task, rcfg, lr, seed)
    own = choose(pd.DataFrame(rows), grid)
    anchor = own if frozen is None else frozen_choice(frozen, grid)
    rewards = chosen_rewards(anchor, grid)
    for lr in grid.lr_check:
        for seed in grid.seeds:
            for task, rcfg in rewards.items():
                add("lr", task, rcfg, lr, seed)
    best = choose_lr(pd.DataFrame(rows), anchor, grid)
    choice = best if frozen is None else {**_assess_at(pd.DataFrame(rows), anchor, frozen.lr, grid),
                                          "lr_misses": best["lr_misses"]}
    for seed in grid.spread_seeds:
        for task, rcfg in rewards.items():
            add("spread", task, rcfg, choice["lr"], seed)
    table = pd.DataFrame(rows)
    final = _final(table, choice, grid)
    if frozen is not None:
        same_rewards = chosen_rewards(own, grid) == rewards
        final["rerun"] = _final(table, best if same_rewards else own, grid)
    return table, final


def frozen_choice(cal: "RewardCalibration", grid: CalibrationGrid = CalibrationGrid()) -> dict:
    """The choice (in :func:`choose`'s form: potency, lr, per-task parameters) that a frozen
    calibration ``cal`` fixed; its rewards must be a point of ``grid`` (else its runs could not be
    compared with the grid's): raises ``ValueError`` naming the fix."""
    s, a = cal.synth, cal.amide
    choice = {"potency": (s.potency_floor, s.potency_ceiling), "lr": cal.lr,
              "synth": {"sa_good": s.sa_good, "sa_bad": s.sa_bad}, "amide": {"stock_max_heavy_atoms": a.stock_max_heavy_atoms}}
    grid_points = [replace(r, version="") for _, r in grid.rewards()]
    missing = [t for t in TASKS if replace(cal.reward(t), version="") not in grid_points]
    if missing:
        raise ValueError(f"the frozen calibration {cal.version}'s {', '.join(missing)} reward is not a point of this "
                         f"calibration grid: calibrate with the grid it was made on, or recalibrate "
                         f"(`python -m mdkl.chem.calibration --recalibrate --label <new>`)")
    return choice


def _assess_at(table, choice: dict, lr: float, grid: CalibrationGrid) -> dict:
    """``choice``'s rewards assessed at learning rate ``lr`` (rates over the seeds ``grid.seeds``)."""
    rec = {}
    for task, rcfg in chosen_rewards(choice, grid).items():
        t = _point(table[table.seed.isin(grid.seeds)], task, rcfg, lr)
        if len(t) == 0:
            raise ValueError(f"no calibration run of {task} at lr {lr:g} at the chosen rewards: the grid's lr and "
                             f"lr_check must include it")
        rec[task] = {**t.iloc[0].to_dict(), **t[metric_columns(grid.regime)].mean().to_dict()}
    return assess({"potency": choice["potency"], "lr": lr, **rec}, grid)


def describe_choice(choice: dict) -> str:
    """One line naming a calibration choice and its seed-averaged unique-hit rates per task (with the
    'rates+narrowing' rule's numbers: also #Circles, IntDiv1 and median P(active) of the 0.85 hits)."""
    s, a = choice["synth"], choice["amide"]
    rates = "; ".join(f"{t} " + " / ".join(f"{c[f'rate_{x:.2f}']:.3f}" for x in SCREENS) for t, c in (("SYNTH", s), ("ALL-AMIDE", a)))
    narrow = "" if "circles_0.85" not in s else "; 0.85 hits: " + "; ".join(
        f"{t} {c['circles_0.85']:.1f} circles, IntDiv1 {c['intdiv1_0.85']:.3f}, median P(active) {c['median_p_0.85']:.2f}"
        for t, c in (("SYNTH", s), ("ALL-AMIDE", a)))
    return (f"potency ({choice['potency'][0]:g}, {choice['potency'][1]:g}), SYNTH SA {s['sa_good']:g}-{s['sa_bad']:g}, "
            f"ALL-AMIDE stock <= {int(a['stock_max_heavy_atoms'])} heavy atoms, lr {choice['lr']:g}: unique hits per call at "
            f"{' / '.join(f'{x:.2f}' for x in SCREENS)}: {rates}{narrow} (worst miss x{math.exp(choice['miss']):.2f})")


_KEYS = ["task", "potency_floor", "potency_ceiling", "sa_good", "sa_bad", "stock_max_heavy_atoms", "lr"]


def choose(table, grid: CalibrationGrid = CalibrationGrid()) -> dict:
    """The grid point closest to the paper's regime (:mod:`mdkl.chem.regime`, rule ``grid.regime``):
    for each shared choice (potency, lr), the SYNTH point and the ALL-AMIDE point with the smallest
    miss (:func:`mdkl.chem.regime.task_miss`, seed-averaged) among the eligible ones
    (:func:`mdkl.chem.regime.eligible`: the synth term binds, ``synth_fail_share >= min_synth_fail``;
    'rates+narrowing': the potency term binds too); then the shared choice whose worse task misses
    least, preferring those where ALL-AMIDE is harder at both screens. Returns the chosen parameters,
    the misses, ``in_regime`` and ``checks`` (:func:`mdkl.chem.regime.assess`)."""
    if len(table) == 0:
        raise ValueError("empty calibration table: run calibrate() first")
    mean = table.groupby(_KEYS, as_index=False)[metric_columns(grid.regime) + ["synth_fail_share"]].mean()
    best = []
    for (lo, hi, lr), g in mean.groupby(["potency_floor", "potency_ceiling", "lr"]):
        pts = {t: [r for r in g[g.task == t].to_dict("records") if eligible(r, t, grid)] for t in TASKS}
        if not all(pts.values()):
            continue
        pick = {t: min(pts[t], key=lambda r, t=t: task_miss(r, t, grid.regime)) for t in TASKS}
        best.append(assess({"potency": (lo, hi), "lr": lr, **pick}, grid))
    if not best:
        raise ValueError(f"no grid point has a SYNTH term that binds (synth_fail_share >= {grid.min_synth_fail})"
                         + (f" and hits with median P(active) >= {grid.min_median_p} for both tasks" if grid.min_median_p
                            else "") + ": widen the grid (sa thresholds, potency)")
    return min(best, key=lambda b: (not b["amide_harder"], b["miss"]))


def chosen_rewards(choice: dict, grid: CalibrationGrid = CalibrationGrid()) -> dict:
    """Per task, the :class:`RewardConfig` a choice (of :func:`choose` or :func:`frozen_choice`) names."""
    lo, hi = choice["potency"]
    pot = dict(potency_floor=lo, potency_ceiling=hi, potency_transform=grid.potency_transform, **grid.base)
    s, a = choice["synth"], choice["amide"]
    return {"synth": RewardConfig("synth", sa_good=float(s["sa_good"]), sa_bad=float(s["sa_bad"]), **pot),
            "amide": RewardConfig("amide", stock_max_heavy_atoms=int(a["stock_max_heavy_atoms"]), **pot)}


def _point(table, task: str, rcfg: RewardConfig, lr: float):
    t = table[(table.task == task) & (table.lr == lr)]
    for k in ("potency_floor", "potency_ceiling", "sa_good", "sa_bad", "stock_max_heavy_atoms"):
        t = t[t[k] == getattr(rcfg, k)]
    return t


def choose_lr(table, choice: dict, grid: CalibrationGrid = CalibrationGrid()) -> dict:
    """The learning rate, at the chosen rewards, whose runs (seeds ``grid.seeds``) land closest to
    the paper's regime (smallest worst-task miss; ties: the larger lr, which leaves the prior
    further within the same calls; 'rates+narrowing': an lr whose potency binds first). Returns
    ``choice`` with that lr and its rows, plus ``lr_misses`` (lr -> worst miss as a factor)."""
    misses, cands = {}, []
    for lr in sorted(set(grid.lr) | set(grid.lr_check)):
        try:
            c = _assess_at(table, choice, lr, grid)
        except ValueError:  # this lr was not run at these rewards
            continue
        misses[lr] = math.exp(c["miss"])
        cands.append(c)
    if not cands:
        raise ValueError("no run at the chosen rewards: run the coarse stage first")
    best = min(cands, key=lambda c: (not c["checks"].get("potency_binds", True), not c["amide_harder"],
                                     round(c["miss"], 12), -c["lr"]))
    return {**best, "lr_misses": misses}


def _final(table, choice: dict, grid: CalibrationGrid) -> dict:
    """``choice`` with its rates averaged over every seed of the chosen point (all stages)."""
    rewards = chosen_rewards(choice, grid)
    cols = metric_columns(grid.regime)
    rec = {t: {**choice[t], **_point(table, t, r, choice["lr"])[cols].mean().to_dict()} for t, r in rewards.items()}
    return {**assess({**choice, **rec}, grid), "lr_misses": choice.get("lr_misses", {})}


def chosen_runs(table, cal: "RewardCalibration"):
    """The calibration runs of the chosen point (every seed, every stage) of ``cal``."""
    import pandas as pd

    return pd.concat([_point(table, t, cal.reward(t), cal.lr) for t in TASKS])


def seed_spread(table, cal: "RewardCalibration", screen: float = 0.85) -> dict:
    """Per task: the between-seed sd (ddof 1) of log unique-hit yield at ``screen`` over the
    chosen point's calibration runs, their number and mean yield (what the power calculation of
    :mod:`mdkl.chem.stats` starts from). A zero yield raises (its log is undefined)."""
    out = {}
    for t in TASKS:
        y = _point(table, t, cal.reward(t), cal.lr)[f"yield_{screen:.2f}"].to_numpy(np.float64)
        if len(y) < 2:
            raise ValueError(f"{t}: {len(y)} calibration run(s) at the chosen point: the spread needs >= 2 seeds")
        if (y <= 0).any():
            raise ValueError(f"{t}: a calibration run found no unique hit at {screen}: log yield undefined")
        out[t] = {"sd_log_yield": float(np.log(y).std(ddof=1)), "n": len(y), "mean_yield": float(y.mean())}
    return out


def calibration_from_choice(choice: dict, grid: CalibrationGrid, label: str, profile: str,
                            prior: str, prior_recipe: str = "") -> RewardCalibration:
    """The :class:`RewardCalibration` of :func:`choose` / :func:`calibrate`'s choice."""
    r = chosen_rewards(choice, grid)
    seeds = tuple(int(x) for x in tuple(grid.seeds) + tuple(grid.spread_seeds))
    return RewardCalibration(label, profile, prior, float(choice["lr"]), r["synth"], r["amide"], seeds, prior_recipe)


def run_calibration(profile: str, label: str = "v1", grid: CalibrationGrid = CalibrationGrid(),
                    progress: bool = False, frozen: "RewardCalibration | None" = None) -> tuple:
    """Calibrate on the profile's prior (trained or loaded from the cache), every run cached
    (``chem-calibration-run``, keyed by the prior, the reward and the run's config). Returns
    ``(table, choice, calibration)``; with ``frozen`` the later stages run at the frozen point
    (:func:`calibrate`) and ``calibration`` is the frozen point's. A 'rates+narrowing' grid's runs
    also record :func:`mdkl.chem.regime.hit_profile` (their own cache keys). The quick profile has no
    calibration of its own."""
    from mdkl.chem import prior as chem_prior
    from mdkl.chem.reward import Scorer, sa_score
    from mdkl.chem.smiles import mol_from_smiles
    from mdkl.runtime import cached

    if resolve_profile(profile) == "quick":
        raise ValueError("the quick profile reuses the cpu profile's calibration: calibrate --profile cpu")
    path = chem_prior.train_prior(chem_prior.prior_config(profile))
    prior, vocab, _ = chem_prior.load_prior(path)

    def prior_sa_scores():
        q = chem_prior.prior_quality(prior, vocab, 2000, [], seed=EVAL_SEEDS)
        mols = [m for m in (mol_from_smiles(s) for s in q["smiles"]) if m is not None]
        return np.array([sa_score(m) for m in mols])

    prior_sa = cached("chem-prior-sa", {"prior": path.name, "n": 2000, "seed": EVAL_SEEDS}, prior_sa_scores,
                      code=[prior_sa_scores])
    scorers: dict = {}

    def run(rcfg, cfg):
        def compute():
            if rcfg not in scorers:  # the later stages alternate the two tasks: keep both pools open
                while len(scorers) >= 2:
                    scorers.pop(next(iter(scorers))).close()
                scorers[rcfg] = Scorer(rcfg)
            return calibration_run(prior, vocab, scorers[rcfg], cfg, progress, profile_hits=grid.regime != "rates")

        key = {"prior": path.name, "reward": rcfg, "rl": cfg, "summary": "v1" if grid.regime == "rates" else "v2"}
        return cached("chem-calibration-run", key, compute, code=[run_rl, Scorer])

    try:
        table, choice = calibrate(run, grid, prior_sa, frozen=frozen)
    finally:
        for sc in scorers.values():
            sc.close()
    if frozen is not None:  # the later stages ran at the frozen point: return the frozen calibration itself
        return table, choice, frozen
    recipe = chem_prior.prior_recipe(chem_prior.prior_config(profile))
    return table, choice, calibration_from_choice(choice, grid, label, profile, path.name, recipe)


def point_spread(table, cal: RewardCalibration) -> tuple[dict, dict]:
    """v1's planning spread: per task the point estimate of :func:`seed_spread` (no record)."""
    return {t: v["sd_log_yield"] for t, v in seed_spread(table, cal).items()}, {}


def freeze_or_check(profile: str, grid: CalibrationGrid, analogue: str = "v1", label: str = "v1",
                    recalibrate: bool = False, planning=point_spread, command: str = "python -m mdkl.chem.calibration"):
    """Calibrate ``analogue`` on the profile's prior with ``grid`` (:func:`run_calibration`), write the
    runs to ``data/results/chem_<profile>[_<analogue>]_calibration_runs.csv`` and print them with the
    choice; freeze the file :func:`calibration_path` names if it does not exist (or with
    ``recalibrate`` and a new ``label``), its planning spread from ``planning(table, cal)`` (returns
    ``(planning_sd, planning)``); otherwise check that the runs reproduce the frozen choice and say
    so. Returns ``(table, choice, cal, frozen)`` (``frozen``: the file's calibration or None)."""
    from mdkl.chem import prior as chem_prior
    from mdkl.runtime import write_csv

    path = calibration_path(profile, analogue)
    existing = load_calibration(path) if path.exists() else None
    if recalibrate and existing is not None and existing.label == label:
        raise ValueError(f"--recalibrate needs a new --label (the frozen file is {existing.label!r})")
    frozen = None if recalibrate else existing
    if frozen is not None:  # made on this profile's prior recipe, or an error naming the fix
        load_for_prior(profile, chem_prior.prior_recipe(chem_prior.prior_config(profile)), analogue)
    table, choice, cal = run_calibration(profile, frozen.label if frozen else label, grid, progress=True, frozen=frozen)
    write_csv(table, f"chem_{profile}{'' if analogue == 'v1' else '_' + analogue}_calibration_runs")
    print(table.drop(columns=["vs_paper_0.80", "vs_paper_0.85"]).round(4).to_string())
    print(f"{'frozen point' if frozen else 'chosen'}: {describe_choice(choice)}; worst miss by lr: "
          + ", ".join(f"{k:g}: x{v:.2f}" for k, v in choice["lr_misses"].items())
          + f"; ALL-AMIDE harder: {choice['amide_harder']}, in the paper's regime: {choice['in_regime']}")
    if frozen is None:
        sd, record = planning(table, cal)
        cal = replace(cal, planning_sd=sd, planning=record)
        save_calibration(cal, path)
        print(f"wrote {path.name} (version {cal.version})")
        return table, choice, cal, None
    own = calibration_from_choice(choice["rerun"], grid, frozen.label, profile, frozen.prior, frozen.prior_recipe)
    if own.version == frozen.version:
        print(f"{path.name} (version {frozen.version}) reproduced by these runs; left as it is")
    else:
        print(f"{path.name} is frozen at version {frozen.version}; this machine's runs would choose {own.version}:\n"
              f"  frozen (used): {describe_choice(choice)}\n  this machine:  {describe_choice(choice['rerun'])}\n"
              f"A frozen calibration is a configuration: the lr and spread stages ran at the frozen point, and notebook 06 "
              f"uses it (seeded runs differ in their last bits across CPU kinds, so a choice between close grid points "
              f"can flip). `{command} --recalibrate --label <new>` replaces it.")
    if frozen.planning_sd and (here := planning(table, frozen)[0]):
        print("planning sd of log yield, frozen (used) vs this machine's runs: "
              + ", ".join(f"{t} {frozen.planning_sd[t]:.3f} vs {here[t]:.3f}" for t in TASKS))
    return table, choice, frozen, frozen


def main(argv=None) -> None:
    """``python -m mdkl.chem.calibration [--profile P] [--label v1] [--recalibrate]``: calibrate the v1
    analogue on the profile's prior (REINVENT-only runs, each cached), write
    ``data/results/chem_<profile>_calibration_runs.csv``, and freeze ``data/chem_reward_<profile>.json``
    if it does not exist (or with ``--recalibrate`` and a new ``--label``); otherwise check the frozen
    choice against the runs (:func:`freeze_or_check`). quick reuses cpu's file. The v2 analogue:
    ``python -m mdkl.chem.calibration_v2``."""
    parsed = calibration_cli("mdkl.chem.calibration", main.__doc__, "v1", argv)
    if parsed is not None:
        args, profile = parsed
        freeze_or_check(profile, CalibrationGrid(), "v1", args.label, args.recalibrate)


def calibration_cli(module: str, doc: str, analogue: str, argv=None, extra=None):
    """The command line both calibrations share (``python -m <module> [--profile P] [--label L]
    [--recalibrate]``, plus the options ``extra(parser)`` adds): returns ``(args, profile)``, or
    None under the quick profile, which reuses the cpu profile's frozen file (said on stdout)."""
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    ap.add_argument("--profile", default=None, help="quick | cpu | paper (default: $MDKL_PROFILE or cpu)")
    ap.add_argument("--label", default=analogue)
    ap.add_argument("--recalibrate", action="store_true", help="overwrite the frozen file (use a new --label)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    profile = resolve_profile(args.profile)
    if profile == "quick":
        print(f"the quick profile reuses {calibration_path('quick', analogue).name} (calibrate the cpu profile)")
        return None
    return args, profile


if __name__ == "__main__":
    main()
