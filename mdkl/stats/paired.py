"""Paired comparison of two methods evaluated on the same prompts (the paper's Table 1 rows), and
verdicts that state their power.

Every method answers the same test prompts, so a claim "method B beats method A on a metric" is
tested on the per-prompt differences B - A (:func:`paired_differences`), which cancel how hard
each prompt is. :func:`paired_bootstrap` gives their mean with a bootstrap confidence interval
resampling prompts (and seeds, when there are several), :func:`minimum_detectable_effect` the
smallest true difference a design detects with the wanted power, :func:`standardized_effect` /
:func:`paper_effect` put the paper's reported differences on our metric's scale, and
:func:`compare` / :func:`print_verdict` turn these into a verdict of the one rule set,
:func:`mdkl.stats.verdicts.decide`. Mean +- bootstrap SEM per row is :func:`mdkl.tasks.creative.table_row`
(:func:`mdkl.metrics.bootstrap_sem`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from mdkl.stats import verdicts

__all__ = ["paired_differences", "PairedEstimate", "paired_bootstrap", "t_power", "min_detectable_shift",
           "minimum_detectable_effect",
           "standardized_effect", "paper_effect", "Comparison", "compare", "print_verdict"]


def paired_differences(a: pd.DataFrame, b: pd.DataFrame, col: str, on=("prompt_id",)) -> pd.DataFrame:
    """Per-unit differences ``b[col] - a[col]`` of two methods' per-prompt metrics (e.g.
    :func:`mdkl.tasks.creative.per_prompt_metrics`), matched on the key columns ``on`` (``prompt_id``,
    plus ``seed`` for several training seeds). Returns the keys and ``diff``, sorted by the keys.
    Both methods must cover exactly the same units, each once."""
    on = list(on)
    for name, d in (("a", a), ("b", b)):
        if missing := set(on + [col]) - set(d.columns):
            raise ValueError(f"{name} lacks columns {sorted(missing)}: pass per-prompt metrics with {on + [col]}")
        if d.duplicated(on).any():
            raise ValueError(f"{name} has repeated {on}: one row per unit (average samples per prompt first)")
        if not np.isfinite(d[col].to_numpy(np.float64)).all():
            raise ValueError(f"{name}[{col!r}] has NaN/inf: fix the failed prompts before comparing")
    ka, kb = set(map(tuple, a[on].to_numpy().tolist())), set(map(tuple, b[on].to_numpy().tolist()))
    if ka != kb:
        raise ValueError(f"the two methods were evaluated on different units ({len(ka - kb)} only in a, e.g. "
                         f"{sorted(ka - kb)[:3]}; {len(kb - ka)} only in b, e.g. {sorted(kb - ka)[:3]}): "
                         f"evaluate both on the same prompts and seeds")
    m = a[on + [col]].merge(b[on + [col]], on=on, suffixes=("_a", "_b"))
    return m.assign(diff=m[f"{col}_b"] - m[f"{col}_a"])[on + ["diff"]].sort_values(on).reset_index(drop=True)


def _as_matrix(diff) -> np.ndarray:
    """[n_prompts, n_seeds] from a 1-D per-prompt vector, a 2-D array, or a paired_differences frame."""
    if isinstance(diff, pd.DataFrame):
        if "seed" in diff.columns:
            diff = diff.pivot(index="prompt_id", columns="seed", values="diff")
            if diff.isna().any().any():
                raise ValueError("some prompts lack some seeds: evaluate every seed on every prompt")
        else:
            diff = diff["diff"]
    d = np.asarray(diff, dtype=np.float64)
    d = d[:, None] if d.ndim == 1 else d
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"differences must be [n_prompts] or [n_prompts, n_seeds] (got shape {d.shape})")
    if not np.isfinite(d).all():
        raise ValueError("differences contain NaN/inf: fix the failed prompts before comparing")
    return d


class PairedEstimate(NamedTuple):
    """What :func:`paired_bootstrap` returns."""

    estimate: float
    """mean difference over all prompts (and seeds)."""
    ci_low: float
    """lower end of the percentile bootstrap interval."""
    ci_high: float
    """upper end."""
    se: float
    """bootstrap standard error of the mean difference."""
    sd: float
    """sd (ddof 1) of the per-unit differences (prompt x seed): what :func:`minimum_detectable_effect` plans with."""
    n_prompts: int
    n_seeds: int
    p_greater: float
    """one-sided bootstrap p-value of "mean > 0": (1 + #resampled means <= 0) / (1 + n_boot)."""


def paired_bootstrap(diff, level: float = 0.90, n_boot: int = 2000, seed: int = 0) -> PairedEstimate:
    """Mean of paired differences ``diff`` ([n_prompts], [n_prompts, n_seeds] or a
    :func:`paired_differences` frame) with a percentile bootstrap interval at ``level``: each
    resample draws prompts with replacement and, with several seeds, seeds with replacement too
    (a two-way bootstrap, so training-seed variation shared by all prompts widens the interval).
    ``level = 0.90`` makes ``ci_low > 0`` a one-sided test at alpha = 0.05. One prompt and one
    seed: a zero-width interval (no spread can be measured)."""
    d = _as_matrix(diff)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1) (got {level})")
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2 (got {n_boot})")
    n, s = d.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, n, size=(int(n_boot), n))
    cols = rng.integers(0, s, size=(int(n_boot), 1, s)) if s > 1 else np.zeros((int(n_boot), 1, 1), dtype=np.int64)
    means = np.take_along_axis(d[rows], np.broadcast_to(cols, (int(n_boot), n, s)), axis=2).mean((1, 2))
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
    p = (1 + int((means <= 0).sum())) / (1 + int(n_boot))
    return PairedEstimate(float(d.mean()), float(lo), float(hi), float(means.std(ddof=1)), sd, n, s, p)


def t_power(shift: float, se: float, df: float, alpha: float = 0.05) -> float:
    """Power of a one-sided t-test at level ``alpha`` when the true mean difference is ``shift``
    and its standard error ``se`` (noncentral t with ``df`` degrees of freedom)."""
    if se <= 0 or df <= 0:
        raise ValueError(f"se={se}, df={df}: need a positive standard error and degrees of freedom (>= 2 samples)")
    return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, shift / se))


def min_detectable_shift(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a one-sided t-test (standard error ``se``, ``df`` degrees of
    freedom) detects with probability ``power`` at level ``alpha``."""
    t_power(1.0, se, df, alpha)  # validates
    hi = se
    while t_power(hi, se, df, alpha) < power:
        hi *= 2
    return float(optimize.brentq(lambda d: t_power(d, se, df, alpha) - power, 0.0, hi, xtol=1e-12))


def minimum_detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean difference a one-sided paired t-test at level ``alpha`` detects with
    probability ``power``, from the sd of the per-unit differences and ``n`` units (prompts x
    seeds when seeds are independent replicates): :func:`min_detectable_shift` with standard error
    sd / sqrt(n) and n - 1 degrees of freedom (exact noncentral t; the familiar approximation
    (t_{1-alpha} + t_{power}) sd / sqrt(n) is a little larger, i.e. conservative; both -> 2.486 sd / sqrt(n) for large
    n at the defaults). Seed-to-seed variation shared by all prompts is not in ``sd_diff``: with
    several seeds take the sd from :func:`paired_bootstrap`'s ``se`` (``se * sqrt(n)``) to include it."""
    if not (math.isfinite(sd_diff) and sd_diff >= 0):
        raise ValueError(f"sd_diff must be finite and >= 0 (got {sd_diff})")
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (got {n}): one unit has no spread to test against")
    if not (0 < alpha < 0.5 and 0 < power < 1):
        raise ValueError(f"alpha must be in (0, 0.5) and power in (0, 1) (got {alpha}, {power})")
    if sd_diff == 0:
        return 0.0
    return min_detectable_shift(sd_diff / math.sqrt(n), int(n) - 1, alpha, power)


def standardized_effect(diff: float, sem_a: float, sem_b: float, n: int) -> float:
    """Cohen's d over prompts of a reported difference: ``diff`` divided by the per-prompt sd of
    the metric, recovered from the two rows' SEMs over ``n`` prompts as
    sqrt((sem_a^2 + sem_b^2) / 2) sqrt(n) (the paper reports means +- SEM, not per-prompt data)."""
    if not all(math.isfinite(x) for x in (diff, sem_a, sem_b)) or min(sem_a, sem_b) <= 0 or n < 2:
        raise ValueError(f"need a finite difference, SEMs > 0 and n >= 2 (got {diff}, {sem_a}, {sem_b}, {n})")
    return float(diff / (math.sqrt((sem_a**2 + sem_b**2) / 2) * math.sqrt(n)))


def paper_effect(table: pd.DataFrame, a: str, b: str, col: str, n: int, our_sd: float) -> float:
    """The paper's difference ``b - a`` on metric ``col`` (``table``: one row per method with
    ``col`` and ``col_sem``, e.g. :data:`mdkl.tasks.creative_design.PAPER_TABLE1`, over ``n`` prompts),
    carried to our scale through its standardized effect: d * ``our_sd`` (our per-prompt sd of the
    metric, e.g. the base model's). Our metrics' units differ from the paper's (other reward
    models and model sizes); the standardized effect is what can be compared."""
    t = table.set_index("method") if "method" in table.columns else table
    for m in (a, b):
        if m not in t.index:
            raise ValueError(f"method {m!r} not in the table (has {list(t.index)})")
    if f"{col}_sem" not in t.columns:
        raise ValueError(f"the table has no {col}_sem column: the standardized effect needs each row's SEM")
    d = standardized_effect(t.loc[b, col] - t.loc[a, col], t.loc[a, f"{col}_sem"], t.loc[b, f"{col}_sem"], n)
    return float(d * our_sd)


class Comparison(NamedTuple):
    """What :func:`compare` returns: the paired estimate, the design's power and the verdict."""

    estimate: float
    ci_low: float
    ci_high: float
    se: float
    mde: float
    """minimum detectable effect of the design, fixed before the run (the power gate uses it)."""
    mde_measured: float
    """the same computed after the run from the bootstrap se (seed variation counts): shown, never gates."""
    paper_effect: float
    p: float
    """one-sided bootstrap p-value of "difference > 0"."""
    verdict: str
    n_prompts: int
    n_seeds: int


def compare(diff, paper_effect: float, mde: float, alpha: float = 0.05, power: float = 0.8, n_boot: int = 2000,
            seed: int = 0, acted: bool = True, control_trained: bool = True) -> Comparison:
    """:func:`paired_bootstrap` at level 1 - 2 alpha and the verdict of
    :func:`mdkl.stats.verdicts.decide` against ``paper_effect`` (our scale), gated by the design's
    minimum detectable effect ``mde`` fixed before the run (e.g. :func:`minimum_detectable_effect`
    from a pilot's spread), ``acted`` and ``control_trained``. The minimum detectable effect this
    run's own spread implies (:func:`minimum_detectable_effect` with sd = se sqrt(n_prompts)) is
    returned as ``mde_measured`` for comparison with the plan."""
    e = paired_bootstrap(diff, level=1 - 2 * alpha, n_boot=n_boot, seed=seed)
    if e.n_prompts < 2:
        raise ValueError("a paired comparison needs >= 2 prompts")
    measured = minimum_detectable_effect(e.se * math.sqrt(e.n_prompts), e.n_prompts, alpha, power)
    v = verdicts.decide(paper_effect, e.estimate, e.ci_low, e.ci_high, mde, acted, control_trained)
    return Comparison(e.estimate, e.ci_low, e.ci_high, e.se, float(mde), measured, float(paper_effect), e.p_greater, v,
                      e.n_prompts, e.n_seeds)


def print_verdict(statement: str, c: Comparison, digits: int = 3, p_holm: float | None = None) -> str:
    """Print ``[verdict] statement`` and, on a second line, the numbers (estimate, interval,
    planned and measured MDE, paper's effect, p with its Holm adjustment when given, prompts x
    seeds; profile-dependent, so kept out of the statement as in :func:`mdkl.runtime.claim`).
    Returns the verdict."""
    print(f"[{c.verdict}] {statement}")
    f = f"{{:+.{digits}f}}"
    print("    " + verdicts.format_measured(
        c.estimate, c.ci_low, c.ci_high, c.mde, c.paper_effect, f, c.p, p_holm,
        f"measured MDE {c.mde_measured:.{digits}f}; {c.n_prompts} prompts x {c.n_seeds} seeds"))
    return c.verdict
