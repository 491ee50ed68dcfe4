"""Calibration of the chemistry reward analogue on the baseline only (paper §4, Table 2).

The paper's REINVENT finds unique hits (reward >= screen) on 55-65% of its reward calls at the
0.80 screen and 11-16% at 0.85 (:data:`TARGET_RATES`). The offline analogue
(:mod:`mdkl.chem_reward`) has free parameters of its own that the paper does not fix: the
potency transform (:attr:`RewardConfig.potency_*`), the SYNTH analogue's SA thresholds
(``sa_good`` / ``sa_bad``) and the ALL-AMIDE stock rule (``stock_max_heavy_atoms``); the agent's
learning rate is chosen here too. :func:`calibrate` runs REINVENT only (never MARA), on seeds
disjoint from the evaluation seeds, over a small stated grid (:class:`CalibrationGrid`), and
:func:`choose` keeps the grid point whose unique-hit rates land closest to the paper's (within a
factor ``tolerance``, ALL-AMIDE harder than SYNTH). The result is a :class:`RewardCalibration`,
written once to ``data/chem_reward_<profile>.json`` and frozen: its ``version`` (a label plus a
hash of every parameter) goes into each run's cache key through :attr:`RewardConfig.version`,
and :func:`load_calibration` refuses a file edited after calibration.

``python -m mdkl.chem_calibration --profile P`` (``make chem-calibrate``) runs it for the
profile's prior; the quick profile reuses the cpu profile's file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from mdkl.chem import RLConfig, run_rl
from mdkl.chem_reward import TASKS, RewardConfig
from mdkl.runtime import DATA_DIR, resolve_profile

__all__ = ["TARGET_RATES", "SCREENS", "EVAL_SEEDS", "RewardCalibration", "calibration_path", "save_calibration",
           "load_calibration", "CalibrationGrid", "unique_hit_rates", "calibrate", "choose",
           "calibration_from_choice", "main"]

#: the paper's REINVENT: unique hits per reward call (Table 2; 10,000 calls)
TARGET_RATES = {("synth", 0.80): 0.6569, ("synth", 0.85): 0.1614,
                ("amide", 0.80): 0.5433, ("amide", 0.85): 0.1098}
SCREENS = (0.80, 0.85)
#: evaluation seeds are drawn from range(EVAL_SEEDS); calibration seeds must lie outside it
EVAL_SEEDS = 1000


@dataclass(frozen=True)
class RewardCalibration:
    """The frozen reward configuration of one prior: both tasks' rewards and the agent's lr."""

    label: str
    """human-readable part of the version (e.g. 'v1')."""
    profile: str
    """profile whose prior it was calibrated on."""
    prior: str
    """cache folder name of that prior (its config and code hash)."""
    lr: float
    """agent learning rate chosen (REINVENT 5e-4 or REINVENT 4's 1e-4)."""
    synth: RewardConfig
    """the SYNTH analogue's reward."""
    amide: RewardConfig
    """the ALL-AMIDE analogue's reward."""
    seeds: tuple = ()
    """calibration seeds (disjoint from range(EVAL_SEEDS))."""

    def __post_init__(self):
        if not self.label or not isinstance(self.label, str):
            raise ValueError("label must be a non-empty string (e.g. 'v1')")
        resolve_profile(self.profile)
        if self.synth.task != "synth" or self.amide.task != "amide":
            raise ValueError(f"synth / amide rewards have tasks {self.synth.task!r} / {self.amide.task!r}: swap them")
        RLConfig(lr=self.lr)  # same lr check as the runs
        bad = [s for s in self.seeds if not isinstance(s, int) or 0 <= s < EVAL_SEEDS]
        if bad:
            raise ValueError(f"calibration seeds {bad} overlap the evaluation seeds range({EVAL_SEEDS}): use >= {EVAL_SEEDS}")

    def _params(self) -> dict:
        d = asdict(self)
        for t in TASKS:
            d[t].pop("version")
        d.pop("label")
        d["seeds"] = list(self.seeds)
        return d

    @property
    def version(self) -> str:
        """``<label>-<hash of every parameter>``: changes with any value."""
        blob = json.dumps(self._params(), sort_keys=True).encode()
        return f"{self.label}-{hashlib.sha256(blob).hexdigest()[:10]}"

    def reward(self, task: str) -> RewardConfig:
        """The task's :class:`RewardConfig`, carrying this version (hence in the run's cache key)."""
        if task not in TASKS:
            raise ValueError(f"task={task!r}: use one of {TASKS}")
        return replace(getattr(self, task), version=self.version)


def calibration_path(profile: str | None = None) -> Path:
    """``data/chem_reward_<profile>.json``; the quick profile reuses the cpu profile's."""
    p = resolve_profile(profile)
    return DATA_DIR / f"chem_reward_{'cpu' if p == 'quick' else p}.json"


def save_calibration(cal: RewardCalibration, path: Path) -> Path:
    """Write ``cal`` as JSON (with its version) and return the path."""
    d = {"version": cal.version, "label": cal.label, **cal._params()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(d, indent=1, sort_keys=True) + "\n")
    return Path(path)


def load_calibration(path: Path) -> RewardCalibration:
    """Read a calibration file; a clear ValueError for a missing / unreadable file, unknown or
    missing keys, out-of-range values, or parameters edited after calibration (version mismatch)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no reward calibration at {path}: run `make chem-calibrate PROFILE=...` first")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): re-run `make chem-calibrate`") from None
    want = {f.name for f in fields(RewardCalibration)} | {"version"}
    if not isinstance(d, dict) or set(d) != want:
        got = set(d) if isinstance(d, dict) else set()
        raise ValueError(f"{path}: keys {sorted(got)} != {sorted(want)} (missing {sorted(want - got)}, unknown "
                         f"{sorted(got - want)}): re-run `make chem-calibrate`")
    rewards = {}
    for t in TASKS:
        if not isinstance(d[t], dict):
            raise ValueError(f"{path}: {t!r} must be an object of RewardConfig fields")
        unknown = set(d[t]) - {f.name for f in fields(RewardConfig)}
        if unknown:
            raise ValueError(f"{path}: unknown {t} reward fields {sorted(unknown)}")
        rewards[t] = RewardConfig(**d[t])  # range checks
    cal = RewardCalibration(d["label"], d["profile"], d["prior"], float(d["lr"]), rewards["synth"],
                            rewards["amide"], tuple(d["seeds"]))
    if cal.version != d["version"]:
        raise ValueError(f"{path}: its parameters do not match version {d['version']!r} (now {cal.version!r}): the "
                         f"configuration is frozen once calibrated; re-run `make chem-calibrate` with a new label")
    return cal


@dataclass(frozen=True)
class CalibrationGrid:
    """The small grid of REINVENT-only calibration runs (defaults: the proposal for the cpu prior).
    Every combination of the shared choices (potency x lr) is run with every task-specific one."""

    potency: tuple = ((-3.0, -1.0), (-3.0, -0.5))
    """(floor, ceiling) pairs of log10 P(DRD2) for the saturating potency transform."""
    potency_transform: str = "sigmoid"
    """transform of every grid point ('sigmoid': REINVENT's, saturating at the ceiling)."""
    sa: tuple = ((2.5, 3.0), (3.0, 3.5))
    """SYNTH analogue (sa_good, sa_bad) pairs."""
    stock_max_heavy_atoms: tuple = (10, 14)
    """ALL-AMIDE stock rule: building blocks with at most this many heavy atoms count as in stock."""
    lr: tuple = (1e-4, 5e-4)
    """agent learning rates (REINVENT 4 / REINVENT)."""
    seeds: tuple = (1000,)
    """calibration seeds, disjoint from the evaluation seeds range(EVAL_SEEDS)."""
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

    def __post_init__(self):
        if not (self.potency and self.sa and self.stock_max_heavy_atoms and self.lr and self.seeds):
            raise ValueError("every grid axis needs >= 1 value")
        bad = [s for s in self.seeds if 0 <= s < EVAL_SEEDS]
        if bad:
            raise ValueError(f"calibration seeds {bad} overlap the evaluation seeds range({EVAL_SEEDS}): use >= {EVAL_SEEDS}")
        if self.tolerance <= 1 or not 0 <= self.min_synth_fail < 1 or self.reward_calls < 1:
            raise ValueError("need tolerance > 1, 0 <= min_synth_fail < 1 and reward_calls >= 1")
        list(self.rewards())  # every grid point must be a valid RewardConfig (its error names the field)

    def rewards(self):
        """(task, RewardConfig) of every task-specific grid point under every potency choice."""
        for lo, hi in self.potency:
            pot = dict(potency_floor=lo, potency_ceiling=hi, potency_transform=self.potency_transform, **self.base)
            for good, bad in self.sa:
                yield "synth", RewardConfig("synth", sa_good=good, sa_bad=bad, **pot)
            for ha in self.stock_max_heavy_atoms:
                yield "amide", RewardConfig("amide", stock_max_heavy_atoms=ha, **pot)


def unique_hit_rates(log, screens=SCREENS) -> dict:
    """Unique valid molecules with reward >= screen per reward call, for each screen."""
    n = len(log)
    if n == 0:
        raise ValueError("empty run log: no reward calls")
    ok = log[log["canonical"].notna()]
    return {s: ok.loc[ok["reward"] >= s, "canonical"].nunique() / n for s in screens}


def calibrate(prior, vocab, make_scorer, grid: CalibrationGrid = CalibrationGrid(), prior_smiles=(),
              progress: bool = False):
    """Run REINVENT (``mara='none'``) once per grid point x lr x seed and return a DataFrame with
    one row per run: task, the reward's parameters, lr, seed, unique-hit rates at both screens,
    their ratio to the paper's, and the share of ``prior_smiles`` failing the synth term (SYNTH).
    ``make_scorer(RewardConfig)`` returns a scorer for :func:`mdkl.chem.run_rl` (closed by the caller)."""
    import pandas as pd

    rows = []
    for task, rcfg in grid.rewards():
        scorer = make_scorer(rcfg)
        fail = float("nan")
        if task == "synth" and len(prior_smiles):
            out = scorer.score(list(prior_smiles))
            comp = np.asarray(out["components"])[np.asarray(out["valid"], dtype=bool)]
            fail = float((comp[:, 3] < 1).mean()) if len(comp) else float("nan")
        for lr in grid.lr:
            for seed in grid.seeds:
                cfg = RLConfig(reward_calls=grid.reward_calls, seed=seed, lr=lr, mara="none", duplicates=grid.duplicates)
                rates = unique_hit_rates(run_rl(prior, vocab, scorer, cfg, progress=progress)["log"])
                rows.append({"task": task, "potency_floor": rcfg.potency_floor, "potency_ceiling": rcfg.potency_ceiling,
                             "sa_good": rcfg.sa_good, "sa_bad": rcfg.sa_bad,
                             "stock_max_heavy_atoms": rcfg.stock_max_heavy_atoms, "lr": lr, "seed": seed,
                             "synth_fail_share": fail,
                             **{f"rate_{s:.2f}": r for s, r in rates.items()},
                             **{f"vs_paper_{s:.2f}": r / TARGET_RATES[task, s] for s, r in rates.items()}})
        close = getattr(scorer, "close", None)
        if close is not None:
            close()
    return pd.DataFrame(rows)


def _miss(row, task) -> float:
    """Largest |log(rate / paper's rate)| over the screens (0: on target)."""
    return max(abs(math.log(max(row[f"rate_{s:.2f}"], 1e-12) / TARGET_RATES[task, s])) for s in SCREENS)


def choose(table, grid: CalibrationGrid = CalibrationGrid()) -> dict:
    """The grid point closest to the paper's regime: for each shared choice (potency, lr), the
    SYNTH point (among those whose synth term binds, ``synth_fail_share >= min_synth_fail``) and
    the ALL-AMIDE point with the smallest worst-screen miss (seed-averaged rates); then the shared
    choice whose worse task misses least, preferring those where ALL-AMIDE is harder at both
    screens. Returns the chosen parameters, the misses and ``in_regime`` (every rate within
    ``tolerance`` of the paper's and ALL-AMIDE harder)."""
    if len(table) == 0:
        raise ValueError("empty calibration table: run calibrate() first")
    keys = ["task", "potency_floor", "potency_ceiling", "sa_good", "sa_bad", "stock_max_heavy_atoms", "lr"]
    mean = table.groupby(keys, as_index=False)[[f"rate_{s:.2f}" for s in SCREENS] + ["synth_fail_share"]].mean()
    best = []
    for (lo, hi, lr), g in mean.groupby(["potency_floor", "potency_ceiling", "lr"]):
        syn = g[g.task == "synth"]
        syn = syn[~(syn.synth_fail_share < grid.min_synth_fail)]  # NaN (not measured) is kept
        ami = g[g.task == "amide"]
        if len(syn) == 0 or len(ami) == 0:
            continue
        s = min(syn.to_dict("records"), key=lambda r: _miss(r, "synth"))
        a = min(ami.to_dict("records"), key=lambda r: _miss(r, "amide"))
        harder = all(a[f"rate_{x:.2f}"] < s[f"rate_{x:.2f}"] for x in SCREENS)
        miss = max(_miss(s, "synth"), _miss(a, "amide"))
        best.append({"potency": (lo, hi), "lr": lr, "synth": s, "amide": a, "miss": miss, "amide_harder": harder,
                     "in_regime": harder and miss <= math.log(grid.tolerance)})
    if not best:
        raise ValueError(f"no grid point has a SYNTH term that binds (synth_fail_share >= {grid.min_synth_fail}): "
                         f"widen the grid's sa thresholds")
    return min(best, key=lambda b: (not b["amide_harder"], b["miss"]))


def calibration_from_choice(choice: dict, grid: CalibrationGrid, label: str, profile: str,
                            prior: str) -> RewardCalibration:
    """The :class:`RewardCalibration` of :func:`choose`'s result."""
    lo, hi = choice["potency"]
    pot = dict(potency_floor=lo, potency_ceiling=hi, potency_transform=grid.potency_transform, **grid.base)
    s, a = choice["synth"], choice["amide"]
    return RewardCalibration(label, profile, prior, float(choice["lr"]),
                             RewardConfig("synth", sa_good=s["sa_good"], sa_bad=s["sa_bad"], **pot),
                             RewardConfig("amide", stock_max_heavy_atoms=int(a["stock_max_heavy_atoms"]), **pot),
                             tuple(int(x) for x in grid.seeds))


def main(argv=None) -> None:
    """``python -m mdkl.chem_calibration [--profile P] [--label v1]``: calibrate the reward
    analogue on the profile's prior (REINVENT-only runs, cached), write
    ``data/chem_reward_<profile>.json`` and ``data/results/chem_<profile>_calibration_runs.csv``.
    The quick profile reuses the cpu profile's calibration (nothing to run)."""
    import argparse

    from mdkl import chem_prior
    from mdkl.chem_reward import Scorer
    from mdkl.runtime import cached, write_csv

    ap = argparse.ArgumentParser(prog="python -m mdkl.chem_calibration", description=main.__doc__)
    ap.add_argument("--profile", default=None, help="quick | cpu | paper (default: $MDKL_PROFILE or cpu)")
    ap.add_argument("--label", default="v1")
    args = ap.parse_args(argv)
    profile = resolve_profile(args.profile)
    if profile == "quick":
        print(f"the quick profile reuses {calibration_path('quick')} (calibrate the cpu profile)")
        return
    grid = CalibrationGrid()
    pcfg = chem_prior.prior_config(profile)
    path = chem_prior.train_prior(pcfg)
    prior, vocab, _ = chem_prior.load_prior(path)
    q = chem_prior.prior_quality(prior, vocab, 2000, [], seed=EVAL_SEEDS)

    def compute():
        return calibrate(prior, vocab, Scorer, grid, q["smiles"], progress=True)

    table = cached("chem-calibration", {"prior": path.name, "grid": grid}, compute, code=[compute])
    write_csv(table, f"chem_{profile}_calibration_runs")
    choice = choose(table, grid)
    cal = calibration_from_choice(choice, grid, args.label, profile, path.name)
    out = save_calibration(cal, calibration_path(profile))
    print(table.round(4).to_string())
    print(f"chosen: {choice['potency']} lr {choice['lr']}, worst miss x{math.exp(choice['miss']):.2f}, "
          f"ALL-AMIDE harder: {choice['amide_harder']}, in the paper's regime: {choice['in_regime']}")
    print(f"wrote {out} (version {cal.version})")


if __name__ == "__main__":
    main()
