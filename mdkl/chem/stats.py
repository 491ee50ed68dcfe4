"""Pre-registered statistics of the chemistry comparison (paper §4, Table 2): the primary paired,
one-sided test of MARA against REINVENT on log yield ratios at the same seed, its power and the
number of seeds it needs, the minimum detectable effect of any t-test from a measured spread,
non-inferiority of the diversity metrics (IntDiv1, #Circles), MARA's activity floor and the
control's training (the gates of :mod:`mdkl.stats.verdicts`), the headline verdicts computed
from the per-run table (:func:`primary_tests`), and the checks of the notebook's knobs
(:func:`check_knobs`, :func:`evaluation_seeds`).

Why paired: REINVENT and MARA runs with the same seed sample identical batches until MARA first
changes a reward, so the seed-to-seed spread cancels in log(yield_MARA / yield_REINVENT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mdkl.stats import verdicts
from mdkl.stats.paired import min_detectable_shift, t_power
from mdkl.stats.tables import flag_column

__all__ = ["PreRegistration", "log_yield_ratios", "paired_power",
           "seeds_for_power", "plan_seeds", "min_detectable_effect", "welch_min_detectable_effect", "paired_log_ratio_test",
           "primary_verdict", "control_trained", "acted_enough", "PAPER_YIELD", "TASK_LABELS", "paper_gain", "primary_tests",
           "primary_statement", "noninferiority", "mara_activity", "mara_activity_verdict", "SetupError", "check_knobs",
           "evaluation_seeds"]


@dataclass(frozen=True)
class PreRegistration:
    """The primary test and its thresholds, fixed before any MARA run (defaults: the proposal)."""

    screen: float = 0.85
    """reward screen whose unique-hit yield is compared (paper: 0.85)."""
    tau: float = 0.85
    """MARA's threshold in the primary arm (paper: 0.85)."""
    effect: float = 0.25
    """relative yield gain the test must detect with ``power`` (+25%; the paper reports +31-36%)."""
    alpha: float = 0.05
    """one-sided level."""
    power: float = 0.8
    """target power at ``effect``."""
    min_seeds: int = 5
    """fewest seeds per task whatever the power calculation says."""
    min_changed_frac: float = 0.05
    """MARA must change at least this share of a run's reward calls (median over runs) ..."""
    min_batches_2plus_frac: float = 0.10
    """... and see >= 2 good samples in at least this share of its batches; else 'not tested'."""
    intdiv1_margin: float = 0.02
    """non-inferiority margin of IntDiv1 (absolute)."""
    circles_margin: float = 0.10
    """non-inferiority margin of #Circles, relative to REINVENT's mean."""

    def __post_init__(self):
        if not (0 < self.alpha < 0.5 and 0.5 < self.power < 1):
            raise ValueError(f"alpha={self.alpha}, power={self.power}: need 0 < alpha < 0.5 < power < 1")
        if not self.effect > 0 or self.min_seeds < 2:
            raise ValueError(f"effect={self.effect}, min_seeds={self.min_seeds}: need effect > 0 and >= 2 seeds")
        for name in ("screen", "tau", "min_changed_frac", "min_batches_2plus_frac"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")
        if self.intdiv1_margin < 0 or self.circles_margin < 0:
            raise ValueError("non-inferiority margins must be >= 0")


def _vector(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN: drop the run or fix its metric before testing")
    return a


def log_yield_ratios(y_treat, y_base, pseudo: float = 0.0) -> np.ndarray:
    """log((y_treat + pseudo) / (y_base + pseudo)) per seed pair (same order = same seed). A zero
    yield without ``pseudo`` > 0 raises (the ratio is undefined)."""
    a, b = _vector(y_treat, "y_treat"), _vector(y_base, "y_base")
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"paired yields need equal, non-zero lengths (got {len(a)} and {len(b)}): one value per seed")
    if pseudo < 0 or (a < 0).any() or (b < 0).any():
        raise ValueError("yields and pseudo must be >= 0")
    if pseudo == 0 and ((a == 0).any() or (b == 0).any()):
        raise ValueError("a yield is 0: the log ratio is undefined; pass pseudo > 0 (e.g. 1) or calibrate the reward "
                         "so every run finds hits")
    return np.log((a + pseudo) / (b + pseudo))


def _check_sd_n(sd: float, n: int) -> None:
    if not (sd > 0 and math.isfinite(sd)) or n < 2:
        raise ValueError(f"sd={sd}, n={n}: need a positive, finite sd (measure it from >= 2 runs) and n >= 2")


def paired_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the one-sided paired t-test on log yield ratios for a relative effect ``effect``
    (true mean log ratio log(1 + effect)), ``n`` pairs whose log ratios have standard deviation ``sd``."""
    _check_sd_n(sd, n)
    return t_power(math.log1p(effect), sd / math.sqrt(n), n - 1, alpha)


def seeds_for_power(sd: float, effect: float = 0.25, alpha: float = 0.05, power: float = 0.8,
                    minimum: int = 5, maximum: int = 1000) -> int:
    """Seeds (pairs) the paired test needs: the smallest n >= ``minimum`` with
    :func:`paired_power` >= ``power`` (exact noncentral t, :func:`mdkl.stats.paired.t_power`; the normal approximation
    n ~ ((z_{1-alpha} + z_{power}) sd / log(1 + effect))^2 is a little smaller). Raises past ``maximum``."""
    _check_sd_n(sd, 2)
    for n in range(max(2, minimum), maximum + 1):
        if paired_power(effect, sd, n, alpha) >= power:
            return n
    raise ValueError(f"more than {maximum} seeds needed (sd={sd}, effect={effect}): reduce the spread first")


def plan_seeds(sd_between: float, prereg: "PreRegistration", cap: int) -> dict:
    """Seeds per task from the calibration's between-seed spread ``sd_between`` of log yield,
    before any MARA run. The paired sd of the log ratios is unknown until MARA has run; the plan
    assumes the conservative sd_diff = sqrt(2) sd_between (pairs as good as independent: the
    same-seed correlation, which only helps, is not counted). Returns ``sd_diff``, ``n_powered``
    (:func:`seeds_for_power`, at least ``prereg.min_seeds``), ``n_run`` = min(n_powered, ``cap``:
    the profile's budget) and the minimum detectable effect ``mde_run`` at ``n_run`` under that sd."""
    if cap < 2:
        raise ValueError(f"cap={cap}: a paired test needs >= 2 seeds")
    sd_diff = math.sqrt(2.0) * sd_between
    _check_sd_n(sd_diff, 2)
    n_powered = seeds_for_power(sd_diff, prereg.effect, prereg.alpha, prereg.power, prereg.min_seeds)
    n_run = min(n_powered, cap)
    return {"sd_between": sd_between, "sd_diff": sd_diff, "n_powered": n_powered, "n_run": n_run,
            "mde_run": min_detectable_effect(sd_diff, n_run, prereg.alpha, prereg.power)}


def min_detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest relative yield gain the paired test on ``n`` log ratios of spread ``sd`` detects
    with ``power``: exp(shift) - 1."""
    _check_sd_n(sd, n)
    return math.expm1(min_detectable_shift(sd / math.sqrt(n), n - 1, alpha, power))


def welch_min_detectable_effect(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = 0.05,
                                power: float = 0.8) -> float:
    """The same for the unpaired Welch test on log yields (spreads ``sd_a``, ``sd_b`` of log yield
    per arm; Welch-Satterthwaite degrees of freedom): exp(shift) - 1."""
    _check_sd_n(sd_a, n_a)
    _check_sd_n(sd_b, n_b)
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return math.expm1(min_detectable_shift(math.sqrt(va + vb), df, alpha, power))


def _one_sided(d: np.ndarray, shift: float, alpha: float) -> dict:
    """One-sided one-sample t-test of mean(d) > shift: t, p, the (1 - alpha) lower bound and the
    matching upper bound (together the two-sided 1 - 2 alpha interval)."""
    from scipy import stats

    n = len(d)
    if n < 2:
        raise ValueError(f"{n} pair(s): a t-test needs >= 2")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:  # identical differences: no spread, the sign decides
        t, p = (math.inf, 0.0) if mean > shift else (-math.inf if mean < shift else 0.0, 1.0)
    else:
        t = (mean - shift) / se
        p = float(stats.t.sf(t, n - 1))
    half = float(stats.t.ppf(1 - alpha, n - 1)) * se
    return {"n": n, "mean": mean, "sd": sd, "se": se, "t": t, "df": n - 1, "p": p, "lower": mean - half,
            "upper": mean + half}


def paired_log_ratio_test(y_mara, y_reinvent, alpha: float = 0.05, power: float = 0.8,
                          pseudo: float = 0.0) -> dict:
    """The primary test: one-sided paired t-test of mean log(y_MARA / y_REINVENT) > 0 over seeds
    (pairs in the same order). Returns n, mean log ratio, its sd, t, df, p, the ratio exp(mean),
    the one-sided (1 - alpha) lower bound of the ratio, the upper end of its two-sided (1 - 2 alpha)
    interval and the minimum detectable effect at
    ``power`` from the measured sd (NaN if sd = 0)."""
    out = _one_sided(log_yield_ratios(y_mara, y_reinvent, pseudo), 0.0, alpha)
    out["ratio"] = math.exp(out["mean"])
    out["ratio_lower"] = math.exp(out["lower"])
    out["ratio_upper"] = math.exp(out["upper"])
    out["mde"] = min_detectable_effect(out["sd"], out["n"], alpha, power) if out["sd"] > 0 else float("nan")
    return out


def primary_verdict(test: dict, paper_gain: float, planned_mde: float, acted: bool, control_trained: bool,
                    alpha: float = 0.05) -> str:
    """The verdict of the rule set (:func:`mdkl.stats.verdicts.decide`) on "MARA raises the unique-hit
    yield by the paper's ``paper_gain``" (e.g. +0.36), on the log scale: the paper's effect
    log(1 + paper_gain), the design's minimum detectable gain ``planned_mde`` fixed before the
    MARA runs (:func:`plan_seeds` from the frozen planning spread), and the two-sided
    (1 - 2 alpha) interval of the mean log ratio from :func:`paired_log_ratio_test`'s result. Gates:
    ``acted`` (:func:`acted_enough`), ``control_trained`` (:func:`control_trained`)."""
    for k in ("mean", "lower", "upper"):
        if k not in test:
            raise ValueError(f"test lacks {k!r}: pass paired_log_ratio_test(...)'s result")
    if not (paper_gain > 0 and planned_mde >= 0):
        raise ValueError(f"paper_gain={paper_gain}, planned_mde={planned_mde}: need a positive paper gain (the claim "
                         f"is oriented as MARA over REINVENT) and a non-negative planned MDE")
    return verdicts.decide(math.log1p(paper_gain), test["mean"], test["lower"], test["upper"],
                           math.log1p(planned_mde), bool(acted), bool(control_trained))


def control_trained(reward_first, reward_last, alpha: float = 0.05) -> dict:
    """Did the REINVENT control train? Per seed, its mean reward over the first and the last fifth
    of its reward calls (:func:`mdkl.chem.metrics.reward_first_last`); trained when the one-sided
    paired t-test of last - first > 0 rejects at ``alpha`` (one seed: the rise must be > 0)."""
    a, b = _vector(reward_last, "reward_last"), _vector(reward_first, "reward_first")
    if a.shape != b.shape or len(a) == 0:
        raise ValueError(f"need one first and one last reward per seed (got {len(b)} and {len(a)})")
    if len(a) == 1:
        return {"rise": float(a[0] - b[0]), "p": float("nan"), "trained": bool(a[0] > b[0])}
    out = _one_sided(a - b, 0.0, alpha)
    return {"rise": out["mean"], "p": out["p"], "trained": bool(out["p"] < alpha)}


def acted_enough(changed_frac, batches_2plus_frac, prereg: "PreRegistration" = None) -> bool:
    """MARA acted enough to be tested: over its runs, the median share of reward calls it changed
    >= ``prereg.min_changed_frac`` and the median share of batches with >= 2 good samples >=
    ``prereg.min_batches_2plus_frac`` (a comparison where MARA hardly acts says nothing about MARA)."""
    prereg = PreRegistration() if prereg is None else prereg
    c, t = _vector(changed_frac, "changed_frac"), _vector(batches_2plus_frac, "batches_2plus_frac")
    if len(c) == 0 or c.shape != t.shape:
        raise ValueError("need both shares for every MARA run (>= 1 run)")
    return bool(np.median(c) >= prereg.min_changed_frac and np.median(t) >= prereg.min_batches_2plus_frac)


#: how the notebook names the two tasks (the paper's Table 2a and 2b, here as offline analogues)
TASK_LABELS = {"synth": "SYNTH analogue (Table 2a)", "amide": "ALL-AMIDE analogue (Table 2b)"}

#: the paper's Table 2 unique-hit yields of MARA (tau = 0.85) and REINVENT at the 0.85 screen
PAPER_YIELD = {("synth", "REINVENT"): 1614, ("synth", "MARA"): 2196, ("amide", "REINVENT"): 1098,
               ("amide", "MARA"): 1438}


def paper_gain(task: str) -> float:
    """The paper's relative yield gain of MARA over REINVENT on ``task`` (Table 2, 0.85 screen)."""
    if (task, "MARA") not in PAPER_YIELD:
        raise ValueError(f"task={task!r}: the paper's Table 2 has 'synth' and 'amide'")
    return PAPER_YIELD[task, "MARA"] / PAPER_YIELD[task, "REINVENT"] - 1


def primary_tests(runs, planning_sd: dict, prereg: "PreRegistration" = None):
    """The headline of the chemistry notebook as a function of the per-run table ``runs`` (the
    committed ``data/results/chem_<profile>_runs.csv``: task, arm, seed, screen, yield,
    changed_frac, batches_2plus_frac, reward_first, reward_last) and the frozen planning spread
    ``planning_sd`` (per task, sd of log yield between seeds at the frozen calibration point).

    Per task: the paired test on log(yield_MARA / yield_REINVENT) at ``prereg.screen``, the gates
    (MARA acted, REINVENT trained, planned MDE at this number of seeds <= the paper's gain), the
    verdict of the rule set and Holm-adjusted p-values over the tasks. Returns one row per task.

    A seed whose MARA or REINVENT run failed numerically (a ``numeric_failure`` column, from
    :func:`mdkl.numerics.numeric_failure`; tables written before the loop logged its gradient have
    none) is dropped from the pair, never averaged in; ``failed_seeds`` counts them."""
    import pandas as pd

    prereg = PreRegistration() if prereg is None else prereg
    need = {"task", "arm", "seed", "screen", "yield", "changed_frac", "batches_2plus_frac", "reward_first", "reward_last"}
    if missing := need - set(runs.columns):
        raise ValueError(f"runs lacks columns {sorted(missing)}: pass the per-run table notebook 06 writes")
    rows = []
    for t in dict.fromkeys(runs.task):
        if t not in planning_sd:
            raise ValueError(f"no planning sd for task {t!r}: the frozen calibration records one per task")
        d = runs[(runs.task == t) & np.isclose(runs.screen, prereg.screen)]
        failed = (sorted(set(d.seed[flag_column(d.numeric_failure)]))
                  if "numeric_failure" in d else [])
        d = d[~d.seed.isin(failed)]
        y = d.pivot(index="seed", columns="arm", values="yield")
        if set(y.columns) != {"MARA", "REINVENT"} or y.isna().any().any():
            raise ValueError(f"{t}: every seed needs one MARA and one REINVENT run at screen {prereg.screen}")
        pseudo = 1.0 if (y.to_numpy() == 0).any() else 0.0
        res = paired_log_ratio_test(y["MARA"], y["REINVENT"], prereg.alpha, prereg.power, pseudo=pseudo)
        mara, ctl = d[d.arm == "MARA"], d[d.arm == "REINVENT"].sort_values("seed")
        acted = acted_enough(mara.changed_frac, mara.batches_2plus_frac, prereg)
        trained = control_trained(ctl.reward_first, ctl.reward_last, prereg.alpha)
        planned = min_detectable_effect(math.sqrt(2.0) * planning_sd[t], res["n"], prereg.alpha, prereg.power)
        gain = paper_gain(t)
        v = primary_verdict(res, gain, planned, acted, trained["trained"], prereg.alpha)
        rows.append({"task": t, "n": res["n"], "ratio": res["ratio"], "ratio_low": res["ratio_lower"],
                     "ratio_high": res["ratio_upper"], "p": res["p"], "sd": res["sd"],
                     "planned_mde": planned, "measured_mde": res["mde"], "paper_gain": gain, "acted": acted,
                     "control_rise": trained["rise"], "control_trained": trained["trained"], "pseudo": pseudo,
                     "failed_seeds": len(failed), "verdict": v})
    out = pd.DataFrame(rows)
    out.insert(out.columns.get_loc("p") + 1, "p_holm", verdicts.holm(out.p))
    return out


def primary_statement(task_label: str, prereg: "PreRegistration" = None) -> str:
    """The claim a primary verdict is about, as the notebook prints it."""
    prereg = PreRegistration() if prereg is None else prereg
    return (f"{task_label}: MARA (tau={prereg.tau:g}) raises the unique-hit yield at the {prereg.screen:g} screen by "
            f"the paper's gain (paired over seeds, one-sided)")


def noninferiority(x_treat, x_base, margin: float, relative: bool = False, alpha: float = 0.05,
                   power: float = 0.8) -> dict:
    """Paired non-inferiority: one-sided t-test of mean(x_treat - x_base) > -margin (``relative``:
    margin x mean(x_base)); ``non_inferior`` when p < alpha. Also the smallest margin this n and
    spread would show at ``power`` when the true difference is 0 (``min_margin``)."""
    a, b = _vector(x_treat, "x_treat"), _vector(x_base, "x_base")
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths (got {len(a)} and {len(b)}): one per seed")
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0")
    m = margin * float(b.mean()) if relative else margin
    out = _one_sided(a - b, -m, alpha)
    out["margin"] = m
    out["non_inferior"] = bool(out["p"] < alpha)
    out["min_margin"] = min_detectable_shift(out["se"], out["df"], alpha, power) if out["se"] > 0 else 0.0
    return out


def mara_activity(anchors: dict, reward_calls: int) -> dict:
    """One run's MARA activity from :func:`mdkl.chem.reinvent.run_rl`'s ``anchors``: share of batches with
    >= 2 samples at or above tau, share of reward calls whose reward MARA changed, and the mean
    change over the changed samples."""
    if reward_calls < 1 or anchors.get("batches", 0) < 1:
        raise ValueError("need run_rl(...)['anchors'] of a run with >= 1 batch and reward_calls >= 1")
    return {**_activity_shares(anchors, reward_calls), "mean_augmentation": anchors["mean_augmentation"]}


def _activity_shares(anchors: dict, reward_calls: int) -> dict:
    """The two shares the activity floor is about: batches with >= 2 good samples, calls changed."""
    return {"batches_2plus_frac": anchors["batches_with_2plus"] / anchors["batches"],
            "changed_frac": anchors["augmented"] / reward_calls}


def mara_activity_verdict(anchors: list[dict], reward_calls: int, prereg: PreRegistration = PreRegistration()) -> str:
    """'tested' if MARA acted enough in its runs (``anchors`` of :func:`mdkl.chem.reinvent.run_rl`, one per
    run): the median share of reward calls it changed >= ``prereg.min_changed_frac`` and the
    median share of batches with >= 2 good samples >= ``prereg.min_batches_2plus_frac``; else
    'not tested' (a comparison where MARA hardly acts says nothing about MARA)."""
    if not anchors or reward_calls < 1:
        raise ValueError("need the anchors of >= 1 MARA run and reward_calls >= 1")
    for a in anchors:
        missing = {"batches", "batches_with_2plus", "augmented"} - set(a)
        if missing or a["batches"] < 1:
            raise ValueError(f"anchors without {sorted(missing) or 'batches'}: pass run_rl(...)['anchors']")
    shares = [_activity_shares(a, reward_calls) for a in anchors]
    ok = acted_enough([x["changed_frac"] for x in shares], [x["batches_2plus_frac"] for x in shares], prereg)
    return "tested" if ok else "not tested"


class SetupError(ValueError):
    """A knob of notebook 06 out of range, or a step it needs that has not run; the message names the
    fix. IPython shows the message alone, on one line, without a traceback."""

    def _render_traceback_(self):
        return [f"{type(self).__name__}: {self}"]


def _integer(name: str, value, low: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer() or value < low:
        raise SetupError(f"{name} = {value!r}: use an integer >= {low} ({why})")
    return int(value)


def _number(name: str, value, ok, rule: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or not ok(float(value)):
        raise SetupError(f"{name} = {value!r}: {rule}")
    return float(value)


def check_knobs(*, seed, max_seeds, reward_calls, claim_calls, tau, sigma, batch_size, lr) -> dict:
    """Notebook 06's knobs, checked, with their types fixed (an integer-valued float becomes an int,
    a number a float: ``-p sigma 128`` then keys the same cached runs as the default 128.0). ``None``
    (the profile's or the calibration's value) is kept for ``max_seeds``, ``reward_calls`` and ``lr``.
    Raises :class:`SetupError` naming the fix."""
    out = {"seed": _integer("seed", seed, 0, "the first evaluation seed"),
           "batch_size": _integer("batch_size", batch_size, 2, "MARA acts only in a batch with >= 2 good samples")}
    b = out["batch_size"]
    out["max_seeds"] = None if max_seeds is None else _integer("max_seeds", max_seeds, 2,
                                                               "the paired test needs >= 2 seeds; None: the profile's")
    out["reward_calls"] = None if reward_calls is None else _integer(
        "reward_calls", reward_calls, b, f"at least one batch of batch_size = {b}; None: the profile's")
    out["claim_calls"] = _integer("claim_calls", claim_calls, b, f"at least one batch of batch_size = {b}")
    out["tau"] = _number("tau", tau, lambda x: 0 < x <= 1,
                         "rewards lie in [0, 1], so tau > 1 leaves no good sample (MARA never acts: REINVENT) and "
                         "tau <= 0 lets an invalid SMILES (reward 0) anchor a batch; use a tau in (0, 1]")
    out["sigma"] = _number("sigma", sigma, lambda x: x > 0,
                           "DAP's sigma is 1/beta, a positive number (REINVENT's default 128)")
    out["lr"] = None if lr is None else _number("lr", lr, lambda x: x > 0,
                                                "a learning rate is a positive number, e.g. 5e-4; None: the "
                                                "calibration's")
    return out


def evaluation_seeds(seed: int, n: int, calibration_seeds) -> list[int]:
    """The evaluation seeds ``seed``, ..., ``seed + n - 1``, checked disjoint from the seeds the reward
    was calibrated on (REINVENT runs that chose the reward must not also judge MARA against it)."""
    seeds = list(range(seed, seed + n))
    if clash := sorted(set(seeds) & set(calibration_seeds)):
        raise SetupError(f"seeds {clash} were the calibration's (seeds {sorted(calibration_seeds)}): choose seed so "
                         f"that seed, ..., seed + {n - 1} avoids them (e.g. seed = 0)")
    return seeds
