"""The 1-2 experiment (paper §4, Fig. 6a/6b): the paper-like small model, the grid of RL runs in
parallel processes, and convergence measured against the exact targets.

:data:`SMALL_P95` is the from-scratch model whose corpus prefers "1" like the paper's base model
(P("1" | valid) = 0.95 in the corpus, 10% invalid answers). :func:`arm_config` builds one run of the
grid {reverse, forward} x {vanilla, MARA} x beta x seed, or of a successor method's arm
(:data:`SUCCESSOR_ARMS`: Differential Smoothing, inverse-probability scaling, UCPO, FlowRL;
:func:`method_of` names a config's method); :func:`run_grid` trains a list of them with
:func:`mdkl.lm.train_cached` in ``workers`` spawned processes (one torch thread each; every run is
seeded and cached, so the results do not depend on the scheduling). :func:`run_summary` reduces a
run to its converged metrics: means over its last checkpoints of the exact answer split
(:meth:`mdkl.tasks.onetwo.OneTwoTask.exact_metrics`), the binary KL of that split to the exact target's
(:func:`split_kl`), reward, whether the run suffered a reward collapse, how often MARA acted, and
whether it failed numerically (:func:`mdkl.numerics.numeric_failure` on its loss and pre-clip gradient
norm: such a run is listed, never summarized). :func:`arm_table` gives per-arm means with standard
errors over seeds.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pandas as pd

from mdkl.lm.trainer import LMConfig, LMResult, train_cached
from mdkl.lm.smalllm import ONETWO_SMALL, SmallLMConfig
from mdkl.metrics import hypervolume
from mdkl.numerics import numeric_failure

__all__ = ["SMALL_P95", "SMALL_RUN", "PAPER_BETAS", "ARMS", "SUCCESSOR_ARMS", "METHODS", "method_of", "arm_config", "run_grid", "split_kl", "run_summary", "arm_table"]

#: the paper-like small model: corpus P("1" | valid) = 0.95, 10% invalid answers
SMALL_P95 = ONETWO_SMALL
#: one small-model run of notebook 05's grid (every profile): 4 prompts x G = 16 completions of <= 16
#: tokens per step, 150 steps, a checkpoint every 10 steps; k1 / k3 on sequence log-probs
SMALL_RUN = LMConfig(model="small", group_size=16, prompts_per_step=4, max_new_tokens=16, steps=150,
                     eval_every=10, eval_samples=64, lr=1e-3, tau=1.0, kl_level="sequence")
#: the paper's betas of the 1-2 task (Fig. 6a)
PAPER_BETAS = (0.001, 0.01, 0.02, 0.03)
#: (KL direction, method) of the four arms
ARMS = (("reverse", "vanilla"), ("reverse", "MARA"), ("forward", "vanilla"), ("forward", "MARA"))
#: the successor methods' arms (:mod:`mdkl.successors`): name -> the LMConfig fields that select them.
#: DS with gamma_p = beta (None); IPS with outcome = the parsed answer; UCPO as its released ``iq``
#: estimator computes it (tau = 0.2, sequence log-probs divided by the completion length) and with
#: raw sequence log-probs, both with the KL as a loss (k2 under reverse KL): UCPO redistributes the
#: advantages of a group's correct samples keeping only their sum, so a k1 penalty inside the reward
#: would be redistributed with them and erased in all-correct groups (their RLOO advantages sum to 0);
#: FlowRL at c = 1/beta with GRPO advantages and no KL term of its own.
SUCCESSOR_ARMS = {
    "DS": {"successor": "diff_smooth", "gamma_p": None},
    "IPS": {"successor": "ips", "ips_alpha": 1.0},
    "IPS a=1/2": {"successor": "ips", "ips_alpha": 0.5},
    "UCPO": {"successor": "ucpo", "ucpo_tau": 0.2, "ucpo_length_norm": True, "kl_placement": "loss"},
    "UCPO raw": {"successor": "ucpo", "ucpo_tau": 0.2, "ucpo_length_norm": False, "kl_placement": "loss"},
    "FlowRL": {"successor": "flowrl", "flow_scale": None},
}
#: every method name :func:`arm_config` accepts
METHODS = ("vanilla", "MARA", *SUCCESSOR_ARMS)


def method_of(cfg: LMConfig) -> str:
    """The method name of a run's config: 'MARA', 'vanilla', or the :data:`SUCCESSOR_ARMS` entry
    whose fields it carries (else its ``successor`` value)."""
    if cfg.mara != "none":
        return "MARA"
    if cfg.successor == "none":
        return "vanilla"
    for name, fields in SUCCESSOR_ARMS.items():
        if all(getattr(cfg, k) == v for k, v in fields.items()):
            return name
    return cfg.successor


def arm_config(base: LMConfig, kl: str, method: str, beta: float, seed: int) -> LMConfig:
    """One run of the grid: reverse KL = k1 in the reward (Alg. 1 for MARA), forward KL = k3 as a
    loss (Alg. 2 for MARA), at ``base``'s ``kl_level``. A successor method (:data:`SUCCESSOR_ARMS`)
    takes MARA's place, with the fields listed there (UCPO: the KL as a loss); FlowRL has no KL
    term of its own (its squared loss matches pi_ref exp(A / beta), GRPO advantages), so its
    ``kl`` must be 'none'."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {METHODS}")
    if method == "FlowRL":
        if kl != "none":
            raise ValueError("FlowRL's squared loss replaces the KL term: use kl='none' (beta sets c = 1/beta)")
        fields = dict(kl="none", kl_placement="reward", advantage="grpo")
    elif kl in ("reverse", "forward"):
        fields = dict(kl=kl, kl_placement="reward" if kl == "reverse" else "loss")
    else:
        raise ValueError(f"unknown kl {kl!r}: use 'reverse' or 'forward' ('none' only for FlowRL)")
    fields.update(mara="auto" if method == "MARA" else "none", beta=beta, seed=seed)
    fields.update(SUCCESSOR_ARMS.get(method, {}))
    return base.replace(**fields)


def _train_one(args) -> LMResult:
    cfg, task, small = args
    import warnings

    import torch

    torch.set_num_threads(1)
    # a worker's warnings would reach the notebook's stderr: transformers' deprecation notices under peft
    warnings.filterwarnings("ignore", category=FutureWarning)
    return train_cached(cfg, task, small=small, progress=False)


def run_grid(configs: list[LMConfig], task, small: SmallLMConfig = SMALL_P95, workers: int = 2,
             progress: bool = True) -> list[LMResult]:
    """Train every config (:func:`mdkl.lm.train_cached`), ``workers`` at a time in spawned processes
    (1 torch thread each); results in the order of ``configs``. ``workers=1`` runs in this process."""
    from mdkl.runtime import progress_bar

    jobs = [(c, task, small) for c in configs]
    if workers <= 1:
        return [_train_one(j) for j in progress_bar(jobs, desc="runs", show=progress)]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as ex:
        return list(progress_bar(ex.map(_train_one, jobs), total=len(jobs), desc="runs", show=progress))


def split_kl(p1: float, q1: float) -> float:
    """KL((p1, 1 - p1) || (q1, 1 - q1)) in nats: how far an answer split p1 is from the target's q1."""
    out = 0.0
    for a, b in ((p1, q1), (1 - p1, 1 - q1)):
        if a > 0:
            out += a * (math.log(a) - math.log(b)) if b > 0 else math.inf
    return out


def run_summary(res: LMResult, target_p1: float, last: int = 3, collapse_below: float = 0.5) -> dict:
    """Converged metrics of one run: means over its ``last`` checkpoints of the exact answer split
    (``p1_valid_exact``, ``valid_entropy_exact``), the sampled reward and the exact valid mass; the
    split's KL to the target (:func:`split_kl` of that mean vs ``target_p1``); ``reward_collapse``:
    the training batches' mean reward over the last 10% of steps is below ``collapse_below``;
    ``mara_changed`` / ``mara_anchored``: samples per step whose reward or reference log-prob MARA
    changed / acted on (means over the run). For the claims (:mod:`mdkl.tasks.onetwo_claims`):
    ``H_prev`` the entropy over the ``last`` checkpoints before those (is the run still moving?),
    ``hv`` the hypervolume of the run's checkpoints after step 0 in (reward, entropy)
    (:func:`mdkl.metrics.hypervolume`), ``reward_start`` the reward at step 0. ``grad_norm_max`` /
    ``loss_max_abs``: the largest pre-clip gradient norm and |loss| of the run; ``numeric_failure``
    (with ``failure_reason``): :func:`mdkl.numerics.numeric_failure` at the run's clip."""
    ck, h = res.checkpoints, res.history
    tail = ck.iloc[-last:]
    prev = ck.iloc[-2 * last:-last] if len(ck) > last else ck.iloc[:1]
    after0 = ck[ck.step > 0]
    n_tail = max(1, len(h) // 10)
    p1 = float(tail.p1_valid_exact.mean())
    c = res.config
    nf = numeric_failure(h, max_grad_norm=c.max_grad_norm)
    return {"kl": c.kl, "method": method_of(c), "beta": c.beta, "seed": c.seed,
            "steps": c.steps, "p1_valid": p1, "H": float(tail.valid_entropy_exact.mean()),
            "H_prev": float(prev.valid_entropy_exact.mean()),
            "hv": hypervolume(after0.reward.to_numpy(), after0.valid_entropy_exact.fillna(0).to_numpy()),
            "reward_start": float(ck.reward.iloc[0]),
            "reward": float(tail.reward.mean()), "valid_exact": float(tail.valid_exact.mean()),
            "kl_to_target": split_kl(p1, target_p1), "target_p1": target_p1,
            "reward_collapse": bool(h.reward.iloc[-n_tail:].mean() < collapse_below),
            "min_batch_reward": float(h.reward.min()), "mara_anchored": float(h.mara_anchored.mean()),
            "mara_changed": float(h.mara_changed.mean()), "grad_norm_max": float(h.grad_norm.max()),
            "loss_max_abs": float(h.loss.abs().max()), "numeric_failure": nf.failed, "failure_reason": nf.reason,
            "seconds": res.seconds}


def arm_table(summaries: pd.DataFrame, cols=("p1_valid", "H", "reward", "kl_to_target")) -> pd.DataFrame:
    """Per (kl, method, beta): number of runs, mean and standard error over seeds of ``cols``, and
    the counts of reward collapses and numeric failures. A run that failed numerically
    (``numeric_failure``) is counted, never averaged in: the means and standard errors are over the
    other runs."""
    keys = ["kl", "method", "beta"]
    g = summaries.groupby(keys, sort=False)
    out = g.size().rename("runs").to_frame()
    ok = summaries[~summaries.numeric_failure.astype(bool)] if "numeric_failure" in summaries else summaries
    gk = ok.groupby(keys, sort=False)
    for col in cols:
        out[col] = gk[col].mean()
        out[f"{col}_se"] = gk[col].std(ddof=1) / np.sqrt(gk[col].count())
    out["reward_collapses"] = g.reward_collapse.sum().astype(int)
    if "numeric_failure" in summaries:
        out["numeric_failures"] = g.numeric_failure.sum().astype(int)
    out["mara_changed"] = gk.mara_changed.mean()
    return out.reset_index()
