"""The frozen reward configurations of the chemistry analogue (paper §4, Table 2): one file per
analogue and profile, versioned and checked.

A :class:`RewardCalibration` holds both tasks' rewards (:class:`mdkl.chem.reward.RewardConfig`)
and the agent's learning rate, as chosen by a REINVENT-only calibration
(:mod:`mdkl.chem.calibration` for v1, :mod:`mdkl.chem.calibration_v2` for v2). It is written once
(:func:`save_calibration`) to ``data/chem_reward_<profile>.json`` (v1) or
``data/chem_reward_<profile>_<analogue>.json`` (later analogues, :func:`calibration_path`) and
frozen: its ``version`` (a label plus a hash of every parameter) enters each run's cache key through
:attr:`RewardConfig.version`, :func:`load_calibration` refuses a file edited after calibration, and
:func:`load_for_prior` refuses a calibration made on another prior. Fields added to
:class:`RewardConfig` after v1 was frozen (the aggregator and its weights) are left out of the
version and the file while they hold the values v1 meant, so v1's file and version are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from mdkl.chem.reinvent import RLConfig
from mdkl.chem.reward import TASKS, RewardConfig
from mdkl.runtime import DATA_DIR, resolve_profile

__all__ = ["EVAL_SEEDS", "ANALOGUES", "RewardCalibration", "calibration_path", "save_calibration", "load_calibration",
           "load_for_prior"]

#: evaluation seeds are drawn from range(EVAL_SEEDS); calibration seeds must lie outside it
EVAL_SEEDS = 1000
#: the reward analogues with a frozen file each (:func:`calibration_path`)
ANALOGUES = ("v1", "v2")
#: RewardConfig fields added after v1 was frozen, at the values v1 meant (the plain product): left
#: out of the version and the file when they all hold these values
_LATER_FIELDS = {"aggregator": "product", "weights": [1.0, 1.0, 1.0, 1.0]}
#: how each analogue's calibration is run (named in the errors)
_CALIBRATE = {"v1": "make chem-calibrate PROFILE={p}", "v2": "python -m mdkl.chem.calibration_v2 --profile {p}"}


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
    prior_recipe: str = ""
    """the prior's recipe (:func:`mdkl.chem.prior.prior_recipe`: its config's hash, the same on every
    machine and code version), which :func:`load_for_prior` checks; not part of the version (a
    record of what the calibration belongs to, not a parameter). Empty: ``prior`` is checked."""
    planning_sd: dict = field(default_factory=dict)
    """per task, the between-seed sd of log yield at 0.85 that the primary test plans with
    (:func:`mdkl.chem.stats.plan_seeds`), frozen with the point so every machine plans the same seeds
    and MDE: v1, the point estimate of the chosen point's calibration runs
    (:func:`mdkl.chem.calibration.seed_spread`); v2, its upper 90% confidence bound (``planning``
    says how it was obtained). Not in the version (a measurement, not a parameter)."""
    planning: dict = field(default_factory=dict)
    """how ``planning_sd`` was obtained (v2: per task the point estimate, the number of runs and the
    bound's level); a record, not in the version. Empty for v1."""

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
        sd = self.planning_sd
        if not isinstance(sd, dict) or (sd and (set(sd) != set(TASKS) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in sd.values()))):
            raise ValueError(f"planning_sd={sd!r}: one positive, finite sd per task {TASKS} (or none yet)")
        if not isinstance(self.planning, dict):
            raise ValueError(f"planning={self.planning!r}: a dict recording how planning_sd was obtained (or empty)")

    def _params(self) -> dict:
        d = asdict(self)
        for t in TASKS:
            d[t].pop("version")
            d[t]["weights"] = list(d[t]["weights"])
            if all(d[t][k] == v for k, v in _LATER_FIELDS.items()):  # v1's meaning: its version unchanged
                for k in _LATER_FIELDS:
                    d[t].pop(k)
        for k in ("label", "prior_recipe", "planning_sd", "planning"):
            d.pop(k)
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


def calibration_path(profile: str | None = None, analogue: str = "v1") -> Path:
    """``data/chem_reward_<profile>.json`` (v1) or ``data/chem_reward_<profile>_<analogue>.json``;
    the quick profile reuses the cpu profile's."""
    if analogue not in ANALOGUES:
        raise ValueError(f"analogue={analogue!r}: use one of {ANALOGUES}")
    p = resolve_profile(profile)
    return DATA_DIR / f"chem_reward_{'cpu' if p == 'quick' else p}{'' if analogue == 'v1' else '_' + analogue}.json"


def save_calibration(cal: RewardCalibration, path: Path) -> Path:
    """Write ``cal`` as JSON (with its version) and return the path."""
    d = {"version": cal.version, "label": cal.label, "prior_recipe": cal.prior_recipe, "planning_sd": cal.planning_sd,
         **({"planning": cal.planning} if cal.planning else {}), **cal._params()}
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
    if isinstance(d, dict):  # files written before these were recorded
        d.setdefault("prior_recipe", ""), d.setdefault("planning_sd", {}), d.setdefault("planning", {})
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
    cal = RewardCalibration(d["label"], d["profile"], d["prior"], float(d["lr"]), rewards["synth"], rewards["amide"],
                            tuple(d["seeds"]), str(d["prior_recipe"]), d["planning_sd"], d["planning"])
    if cal.version != d["version"]:
        raise ValueError(f"{path}: its parameters do not match version {d['version']!r} (now {cal.version!r}): the "
                         f"configuration is frozen once calibrated; re-run `make chem-calibrate` with a new label")
    return cal


def load_for_prior(profile: str, prior: str, analogue: str = "v1") -> RewardCalibration:
    """The frozen calibration of ``analogue`` a profile's runs use (:func:`calibration_path`), checked against the
    prior they start from (its recipe name ``prior``, :func:`mdkl.chem.prior.prior_recipe`: the same
    recipe trained on another CPU kind is the same prior): a calibration made on another prior
    raises, naming the fix. The quick profile borrows the cpu profile's (made on the cpu prior)."""
    path = calibration_path(profile, analogue)
    if not path.exists():
        raise ValueError(f"no {analogue} reward calibration at {path}: run `{_CALIBRATE[analogue].format(p=profile)}` "
                         f"first")
    cal = load_calibration(path)
    made_on = cal.prior_recipe if cal.prior_recipe and prior.startswith("chem-prior-recipe-") else cal.prior
    if resolve_profile(profile) != "quick" and made_on != prior:
        raise ValueError(f"the reward calibration {cal.version} was made on prior {made_on}, but the {profile} profile's "
                         f"prior is {prior}: re-run `{_CALIBRATE[analogue].format(p=profile)}` (with --recalibrate "
                         f"--label <new> if the committed file must be replaced)")
    return cal
