"""The design of the creative-QA comparison (paper §4, LLM task 2, Table 1): which rows are matched
controls of which, how strong each row's KL term is on the judge's reward scale, and how often
MARA acts at a given group size, batch and tau scope.

* :data:`TABLE1_ROWS`: the trained rows as changes to a shared :class:`mdkl.lm.LMConfig`, with
  :data:`MATCHED_CONTROL`: MARA (rev) against RLOO (k1 in the reward), MARA (fwd) against
  RLOO + k3 (the same k3 loss, the same RLOO advantage). :data:`PAPER_TABLE1`: the paper's numbers.
* :func:`regularizer`, :func:`effective_beta`, :func:`matched_beta`, :func:`target_tilt`,
  :func:`group_reward_sd`, :func:`row_table`: each row's regularizer and its beta in reward units. GRPO divides each
  group's advantages by the group's reward sd (:func:`mdkl.shaping.group_advantages`), so its
  KL term weighs beta * sd in reward units where RLOO's weighs beta.
* :func:`mara_changed_count`, :func:`prompt_reward_spreads`, :func:`expected_mara_activity`: how
  many rewards MARA changes per step (the trainer's ``mara_changed`` column), predicted from
  measured per-prompt reward means and sds for a group size G, P prompts per step and a tau
  scope (Algorithm 1 / 2 change every good sample of a group except its anchor).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from mdkl.baselines import UNLIKELY_BETA_RANK
from mdkl.shaping import ShapingConfig
from mdkl.stats import paired, verdicts

__all__ = ["TABLE1_ROWS", "MATCHED_CONTROL", "CLAIM_ROWS", "TABLE_ORDER", "CLAIMS", "PREMISE", "PAPER_TABLE1",
           "PAPER_N_PROMPTS", "ONE_SEED", "paper_difference", "regularizer", "effective_beta",
           "matched_beta", "target_tilt", "group_reward_sd", "row_table", "mara_changed_count", "prompt_reward_spreads",
           "expected_mara_activity", "METRIC_NAMES", "claim_statement", "row_differences", "claim_comparisons"]

#: the trained rows of Table 1 as changes to one shared LMConfig (Base and Ensemble are not trained)
TABLE1_ROWS: dict[str, dict] = {
    "GRPO": dict(advantage="grpo", kl="forward", kl_placement="loss"),
    "RLOO": dict(advantage="rloo", kl="reverse", kl_placement="reward"),
    "RLOO + k3": dict(advantage="rloo", kl="forward", kl_placement="loss"),
    "Entropy": dict(advantage="rloo", kl="reverse", kl_placement="reward", entropy=0.01),
    "Unlikely": dict(advantage="grpo", kl="forward", kl_placement="loss", unlikely=UNLIKELY_BETA_RANK),
    "BoN training": dict(best_of_n=True, kl="forward", kl_placement="loss"),
    "MARA (rev)": dict(advantage="rloo", kl="reverse", kl_placement="reward", mara="auto", tau_percentile=75.0,
                       tau_scope="group"),
    "MARA (fwd)": dict(advantage="rloo", kl="forward", kl_placement="loss", mara="auto", tau_percentile=75.0,
                       tau_scope="group"),
}
#: each MARA row's control: the same advantage and the same KL estimator and placement, without MARA
MATCHED_CONTROL = {"MARA (rev)": "RLOO", "MARA (fwd)": "RLOO + k3"}
#: the rows the paper's claim is about (evaluated on every test prompt); the other rows are context
CLAIM_ROWS = ("Base", "RLOO", "RLOO + k3", "MARA (rev)", "MARA (fwd)")
#: every row of our Table 1, in the paper's order, with MARA (fwd)'s control before the MARA rows
TABLE_ORDER = ("Base", "GRPO", "RLOO", "RLOO + k3", "Entropy", "Unlikely", "BoN training", "Ensemble",
               "MARA (rev)", "MARA (fwd)")
#: the paper's claim as (MARA row, its matched control, metric, the paper's row the control stands for):
#: MARA raises out-of-distribution reward, n-gram EAD and mean distinct over its control (§4, Table 1;
#: the paper has no RLOO + k3 row, so MARA (fwd)'s effect is the paper's MARA (fwd) - RLOO)
CLAIMS = tuple((m, MATCHED_CONTROL[m], col, "RLOO") for m in ("MARA (rev)", "MARA (fwd)")
               for col in ("r_out", "ead", "n_distinct"))
#: the claim's premise, reported first: RLOO - Base on each diversity metric (the paper: EAD up, semantic
#: diversity and mean distinct down)
PREMISE = tuple(("RLOO", "Base", col) for col in ("ead", "semantic_div", "n_distinct"))

#: the paper's Table 1 (mean +- bootstrap SEM over prompts; in-dist R without SEM)
PAPER_TABLE1 = pd.DataFrame([
    ("Base", 10.94, 1.166, 0.076, 0.413, 0.015, 0.220, 0.009, 4.01, 0.254),
    ("GRPO", 14.80, 1.317, 0.102, 0.497, 0.014, 0.193, 0.009, 3.96, 0.249),
    ("RLOO", 15.56, 1.280, 0.100, 0.514, 0.014, 0.192, 0.008, 3.88, 0.243),
    ("Entropy", 1.44, 0.786, 0.073, 0.267, 0.009, 0.228, 0.009, 3.45, 0.193),
    ("Unlikely", 10.04, 1.381, 0.114, 0.532, 0.015, 0.191, 0.008, 4.24, 0.239),
    ("BoN training", 16.88, 0.596, 0.055, 0.541, 0.010, 0.162, 0.008, 2.29, 0.173),
    ("Ensemble", np.nan, 1.143, 0.086, 0.438, 0.014, 0.211, 0.010, 4.19, 0.269),
    ("MARA (rev)", 15.42, 1.451, 0.103, 0.543, 0.014, 0.186, 0.008, 4.14, 0.233),
    ("MARA (fwd)", 15.33, 1.604, 0.113, 0.568, 0.012, 0.193, 0.009, 4.62, 0.258),
], columns=["method", "r_in", "r_out", "r_out_sem", "ead", "ead_sem", "semantic_div", "semantic_div_sem",
            "n_distinct", "n_distinct_sem"])
#: the verdict of every claim of a design with one training seed
ONE_SEED = "not tested (one seed)"
#: test prompts behind the paper's SEMs [reading: NoveltyBench's curated set, 100 prompts]
PAPER_N_PROMPTS = 100


def paper_difference(a: str, b: str, col: str) -> float:
    """The paper's Table 1 difference ``b - a`` on metric ``col`` (raw units of the paper's metric)."""
    t = PAPER_TABLE1.set_index("method")
    for m in (a, b):
        if m not in t.index:
            raise ValueError(f"method {m!r} not in the paper's Table 1 (has {list(t.index)})")
    if col not in t.columns:
        raise ValueError(f"unknown metric {col!r} (has {[c for c in t.columns if not c.endswith('_sem')]})")
    return float(t.loc[b, col] - t.loc[a, col])


# ----------------------------------------------------------------------------------------------
# each row's regularizer and its strength on the reward scale
# ----------------------------------------------------------------------------------------------
def regularizer(cfg) -> str:
    """What regularizes a row, in words, from any config with the shaping fields
    (:meth:`mdkl.shaping.ShapingConfig.from_fields`): the KL estimator and where it sits (k1 in the
    reward = reverse KL, Rem. 3.1; k2 loss = reverse; k3 loss = forward, per token or per
    sequence), then the entropy bonus, the unlikeliness ranks, the BoN mask, MARA's algorithm and tau."""
    sh = ShapingConfig.from_fields(cfg)
    est = sh.estimator
    if est is None:
        parts = ["no KL"]
    elif sh.kl_placement == "reward":
        parts = [f"{est} in the reward ({sh.kl} KL)"]
    else:
        parts = [f"{est} loss per {sh.kl_level} ({sh.kl} KL)"]
    if sh.entropy:
        parts.append(f"entropy bonus eta = {sh.entropy:g}")
    if sh.unlikely:
        parts.append(f"unlikeliness ranks beta_rank = {sh.unlikely:g}")
    if sh.best_of_n:
        parts.append("best-of-G mask")
    alg = sh.mara_algorithm
    if alg != "none":
        tau = (f"tau = {sh.tau:g}" if sh.tau_percentile is None
               else f"tau = {sh.tau_percentile:g}th percentile per {sh.tau_scope}")
        parts.append(f"MARA Alg. {alg[-1]}, {tau}")
    return "; ".join(parts)


def effective_beta(beta: float, advantage: str, group_sd: float, eps: float = 1e-4) -> float:
    """The KL coefficient in reward units: the beta a plain-reward-difference advantage (RLOO,
    mean, none) would need for the same balance of reward and KL. RLOO / mean / none: ``beta``.
    GRPO: its advantage is (r - mean) / (sd + eps), so its loss is the reward-unit loss divided by
    sd + eps and its KL weighs ``beta * (group_sd + eps)`` (``group_sd``: the mean within-group sd
    of the raw rewards, the trainer's ``reward_group_sd`` column; exact for equal groups since the
    scaling is linear). ``'bon'`` (best-of-G mask, no reward units): NaN."""
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be finite and >= 0 (got {beta})")
    if advantage in ("rloo", "mean", "none"):
        return float(beta)
    if advantage == "bon":
        return math.nan
    if advantage != "grpo":
        raise ValueError(f"unknown advantage {advantage!r}: use 'rloo', 'grpo', 'mean', 'none' or 'bon'")
    if not (math.isfinite(group_sd) and group_sd >= 0):
        raise ValueError(f"group_sd must be a finite reward sd >= 0 (got {group_sd}): take the history's "
                         f"reward_group_sd mean")
    return float(beta * (group_sd + eps))


def matched_beta(beta: float, advantage: str, group_sd: float, eps: float = 1e-4) -> float:
    """The beta to give a row with ``advantage`` so that its :func:`effective_beta` equals ``beta``
    (an RLOO row's): GRPO ``beta / (group_sd + eps)``, the others ``beta``."""
    if advantage != "grpo":
        return effective_beta(beta, advantage, group_sd, eps)
    if not (math.isfinite(group_sd) and group_sd > 0):
        raise ValueError(f"group_sd must be a finite reward sd > 0 to match GRPO's beta (got {group_sd})")
    return float(beta / (group_sd + eps))


def target_tilt(beta: float, reward_sd: float) -> float:
    """log G_beta(y1) / G_beta(y2) for two answers one within-prompt reward sd apart and equally
    likely under pi_ref (Prop. 4.1, Rem. 4.2): ``reward_sd / beta`` nats. It says how sharp the
    reverse-KL target is on the judge's scale: 1 = e-fold per sd; 5.8 (beta 0.05 against sd
    0.29) = 330-fold per sd, i.e. close to the single best answer."""
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0 (got {beta})")
    if not (math.isfinite(reward_sd) and reward_sd >= 0):
        raise ValueError(f"reward_sd must be finite and >= 0 (got {reward_sd})")
    return float(reward_sd / beta)


def group_reward_sd(history: pd.DataFrame) -> float:
    """Mean over steps of a training history's ``reward_group_sd`` (the raw rewards' within-group
    sd, logged by :func:`mdkl.lm.train`): the scale GRPO divides its advantages by."""
    if "reward_group_sd" not in getattr(history, "columns", ()):
        raise ValueError("the history has no reward_group_sd column (trained before the trainer logged it): "
                         "re-run the row, or measure the within-prompt sd with prompt_reward_spreads")
    v = history["reward_group_sd"].to_numpy(np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        raise ValueError("reward_group_sd is empty or not finite: the run logged no valid step")
    return float(v.mean())


def row_table(configs: Mapping[str, object], group_sd: float | Mapping[str, float]) -> pd.DataFrame:
    """One line per row: ``advantage``, ``regularizer`` (:func:`regularizer`), ``beta``,
    ``effective_beta`` (reward units, :func:`effective_beta`), ``beta_per_sd`` (effective beta
    over the within-group reward sd: the KL's weight against the spread the advantage sees; equal
    across matched rows) and ``control`` (:data:`MATCHED_CONTROL`). ``group_sd``: one sd for all rows
    or one per row (:func:`group_reward_sd` of its history)."""
    rows = []
    for name, cfg in configs.items():
        sd = group_sd[name] if isinstance(group_sd, Mapping) else group_sd
        adv = "bon" if getattr(cfg, "best_of_n", False) else cfg.advantage
        beta = float(cfg.beta) if ShapingConfig.from_fields(cfg).estimator is not None else 0.0
        eff = effective_beta(beta, adv, float(sd))
        rows.append({"row": name, "advantage": adv, "regularizer": regularizer(cfg), "beta": beta,
                     "effective_beta": eff, "beta_per_sd": eff / sd if sd > 0 else math.nan,
                     "control": MATCHED_CONTROL.get(name, "")})
    return pd.DataFrame(rows).set_index("row")


# ----------------------------------------------------------------------------------------------
# how often MARA acts
# ----------------------------------------------------------------------------------------------
def mara_changed_count(good) -> np.ndarray:
    """Rewards MARA changes, from the good set ``good`` [..., P, G] (R >= tau; P groups of G): in a
    group with n >= 1 good samples Algorithms 1 and 2 replace the reward (and, Alg. 2, the
    reference log-prob) of all but the anchor, n - 1 samples; a group with none is unchanged.
    Returns sum over groups of max(n - 1, 0), shape [...] (ties in pi_ref aside, this is the
    trainer's ``mara_changed``)."""
    g = np.asarray(good, dtype=bool)
    if g.ndim < 2:
        raise ValueError(f"good must be [..., P, G] (got shape {g.shape}): one row of G samples per group")
    return np.clip(g.sum(-1) - 1, 0, None).sum(-1)


def prompt_reward_spreads(samples: pd.DataFrame, method: str | None = "Base", col: str = "r_in") -> pd.DataFrame:
    """Per-prompt ``mean``, ``sd`` (ddof 1) and ``n`` of ``col`` over the samples of ``method``
    (``samples``: one row per sample with ``prompt_id``, ``method``, ``col``, e.g. the committed
    ``creative_table1_samples.csv``; ``method=None`` uses every row). Needs >= 2 samples per prompt."""
    need = {"prompt_id", col} | ({"method"} if method is not None else set())
    if missing := need - set(samples.columns):
        raise ValueError(f"samples lack columns {sorted(missing)}: pass one row per sample with prompt_id and {col}")
    d = samples if method is None else samples[samples["method"] == method]
    if d.empty:
        raise ValueError(f"no samples of method {method!r} (has {sorted(set(samples['method']))})")
    out = d.groupby("prompt_id")[col].agg(mean="mean", sd="std", n="count").reset_index()
    if (out["n"] < 2).any() or not np.isfinite(out[["mean", "sd"]].to_numpy()).all():
        raise ValueError(f"every prompt needs >= 2 finite {col} values to measure its spread")
    return out


def expected_mara_activity(prompt_mean, prompt_sd, group_size: int, prompts_per_step: int,
                           tau_percentile: float = 90.0, tau_scope: str = "batch", n_steps: int = 4000,
                           seed: int = 0) -> dict[str, float]:
    """Monte Carlo prediction of MARA's activity per RL step, as :func:`mdkl.lm.train` samples:
    ``prompts_per_step`` prompts drawn uniformly with replacement from the pool, ``group_size``
    rewards each, prompt j's rewards Normal(``prompt_mean[j]``, ``prompt_sd[j]``) (the judge's
    expected rating is continuous); tau = the ``tau_percentile``-th percentile (linear, as
    :func:`mdkl.mara.batch_percentile_tau`) of each group's rewards (``tau_scope='group'``) or of
    the whole batch's (``'batch'``); good = R >= tau; changed = :func:`mara_changed_count`.

    Returns ``changed_per_step`` (mean), ``changed_share`` (of the batch), ``steps_without_change``
    (share of steps where MARA changes nothing), ``good_per_step`` and ``groups_acted_share`` (share
    of prompt groups in which MARA changes a reward: under the batch scope the good samples pile up
    in the prompts the judge rates highest, so MARA acts on few prompts). Per-group scope needs no
    simulation: every group has G - ceil(q (G - 1) / 100) good samples (continuous rewards), so
    q = 90 changes nothing for G <= 10; the batch scope's count depends on how far apart the
    prompts' means are relative to their sds."""
    mu, sd = np.asarray(prompt_mean, dtype=np.float64).ravel(), np.asarray(prompt_sd, dtype=np.float64).ravel()
    if mu.size == 0 or mu.shape != sd.shape:
        raise ValueError(f"prompt_mean and prompt_sd need one value per prompt (got {mu.size} and {sd.size})")
    if not (np.isfinite(mu).all() and np.isfinite(sd).all()) or (sd < 0).any():
        raise ValueError("prompt means and sds must be finite and sds >= 0: measure them with prompt_reward_spreads")
    if (int(group_size) != group_size or group_size < 2
            or int(prompts_per_step) != prompts_per_step or prompts_per_step < 1):
        raise ValueError(f"group_size must be an integer >= 2 and prompts_per_step >= 1 "
                         f"(got {group_size}, {prompts_per_step})")
    if not 0 <= tau_percentile <= 100:
        raise ValueError(f"tau_percentile must be in [0, 100] (got {tau_percentile})")
    if tau_scope not in ("group", "batch"):
        raise ValueError(f"tau_scope must be 'group' or 'batch' (got {tau_scope!r})")
    rng = np.random.default_rng(seed)
    S, P, G = int(n_steps), int(prompts_per_step), int(group_size)
    rows = rng.integers(0, mu.size, size=(S, P))
    r = mu[rows][..., None] + sd[rows][..., None] * rng.standard_normal((S, P, G))
    if tau_scope == "batch":
        tau = np.percentile(r.reshape(S, P * G), tau_percentile, axis=1)[:, None, None]
    else:
        tau = np.percentile(r, tau_percentile, axis=2)[..., None]
    good = r >= tau
    changed = mara_changed_count(good)
    return {"changed_per_step": float(changed.mean()), "changed_share": float(changed.mean() / (P * G)),
            "steps_without_change": float((changed == 0).mean()), "good_per_step": float(good.sum((1, 2)).mean()),
            "groups_acted_share": float((good.sum(-1) >= 2).mean())}


#: how the claim lines name each metric
METRIC_NAMES = {"r_in": "in-dist reward", "r_out": "out-of-distribution reward", "ead": "n-gram EAD",
                "semantic_div": "semantic diversity", "n_distinct": "mean distinct"}


def claim_statement(method: str, control: str, metric: str) -> str:
    """The claim a verdict line states: "<MARA row> raises the <metric> over <control>"."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"metric={metric!r}: use one of {sorted(METRIC_NAMES)}")
    return f"{method} raises the {METRIC_NAMES[metric]} over {control}"


def row_differences(per_prompt: pd.DataFrame, a: str, b: str, col: str) -> pd.DataFrame:
    """Per (prompt, seed) differences ``b - a`` of metric ``col`` on the units both rows answered
    (``per_prompt``: one row per method, seed and prompt, as notebook 07 writes it)."""
    need = {"method", "seed", "prompt_id", col}
    if missing := need - set(per_prompt.columns):
        raise ValueError(f"per_prompt lacks columns {sorted(missing)}: one row per method, seed and prompt")
    pa, pb = (per_prompt[per_prompt.method == m].drop(columns="method") for m in (a, b))
    if pa.empty or pb.empty:
        raise ValueError(f"no per-prompt rows for {a if pa.empty else b!r}")
    both = pb[["prompt_id", "seed"]].merge(pa[["prompt_id", "seed"]])
    return paired.paired_differences(pa.merge(both), pb.merge(both), col, on=("prompt_id", "seed"))


def claim_comparisons(per_prompt: pd.DataFrame, planned: pd.DataFrame, acted: Mapping[str, bool],
                      seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """The headline of the creative notebook as a function of its per-prompt table: for each of
    :data:`CLAIMS`, MARA minus its matched control with a 90% paired bootstrap interval
    (:func:`mdkl.stats.paired.compare`), gated by MARA having acted (``acted``, per MARA row), the
    control having trained (control minus Base on the in-dist reward, interval above 0) and the
    design's minimum detectable effect fixed before training (``planned``: columns ``claim``
    ("<MARA row> - <control>"), ``metric``, ``MDE`` and ``paper (our scale)``). Holm-adjusted
    p-values over the claims in ``p_holm``. With a single training seed every verdict is
    :data:`ONE_SEED` (the interval says how two checkpoints differ, not two methods)."""
    need = {"claim", "metric", "MDE", "paper (our scale)"}
    if missing := need - set(planned.columns):
        raise ValueError(f"planned lacks columns {sorted(missing)}: pass the design's power table")
    plan = planned.set_index(["claim", "metric"])
    trained = {ctl: paired.paired_bootstrap(row_differences(per_prompt, "Base", ctl, "r_in"), level=1 - 2 * alpha,
                                            seed=seed).ci_low > 0 for ctl in dict.fromkeys(c for _, c, _, _ in CLAIMS)}
    rows = []
    for m, ctl, col, _ in CLAIMS:
        if (f"{m} - {ctl}", col) not in plan.index:
            raise ValueError(f"no planned MDE for {m} - {ctl} on {col}")
        if m not in acted:
            raise ValueError(f"acted has no entry for {m!r}: pass whether MARA changed rewards in every step")
        p = plan.loc[(f"{m} - {ctl}", col)]
        c = paired.compare(row_differences(per_prompt, ctl, m, col), float(p["paper (our scale)"]), float(p["MDE"]),
                           alpha=alpha, seed=seed, acted=bool(acted[m]), control_trained=bool(trained[ctl]))
        rows.append({"method": m, "control": ctl, "metric": col, **c._asdict(), "acted": bool(acted[m]),
                     "control_trained": bool(trained[ctl])})
    out = pd.DataFrame(rows)
    out["p_holm"] = verdicts.holm(out.p)
    if per_prompt["seed"].nunique() < 2:  # two single runs are two checkpoints, not two methods
        out["verdict"] = ONE_SEED
    return out
