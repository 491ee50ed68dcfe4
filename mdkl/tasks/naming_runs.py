"""The runs of Table 1 on the naming task (:mod:`mdkl.tasks.naming_table1`): one RL run from the naming
LM with its exact metrics (:func:`_train_one`, cached per run by config and this module's code, so an
edit to the design or verdict code keeps the runs), the grid of runs in spawned one-thread workers
(:func:`run_grid`), the history's summary (:func:`history_summary`: loss and gradient-norm extremes,
empty completions, all-equal-reward groups, MARA's activity) and the numeric-failure flag
(:func:`numeric_failure`, :func:`mdkl.numerics.numeric_failure`'s bounds).
"""

from __future__ import annotations

import copy
import math
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context

import numpy as np
import pandas as pd

from mdkl.lm.trainer import LMConfig
from mdkl.numerics import numeric_failure as _numeric_failure
from mdkl.runtime import cached, progress_bar
from mdkl.tasks.naming import NamingTask, answer_probs, split_metrics
from mdkl.tasks.naming_world import NamingConfig

__all__ = ["numeric_failure", "run_grid", "history_summary"]


def numeric_failure(history: pd.DataFrame, max_grad_norm: float = 1.0) -> bool:
    """Whether a run failed numerically (:func:`mdkl.numerics.numeric_failure`: a non-finite loss or
    gradient norm, a pre-clip gradient norm above 1e3 x the clip, or |loss| above 1e6)."""
    return _numeric_failure(history, max_grad_norm=max_grad_norm).failed


def _train_one(world: NamingConfig, cfg: LMConfig, k: int, ensemble_alpha: float | None) -> dict:
    """Train ``cfg`` from the naming LM of ``world``; the exact metrics of the trained model (and of
    its WiSE-FT ensemble with the base, if ``ensemble_alpha``) and the history's summary."""
    from mdkl.baselines import interpolate_state_dicts
    from mdkl.lm.trainer import train
    from mdkl.tasks.naming_world import load_naming_lm

    model, tok = load_naming_lm(world, progress=False)
    task = NamingTask(world, k=k)
    ref = answer_probs(model, tok, task.world)
    task = replace(task, reference=tuple(tuple(float(x) for x in p) for p in ref))
    base_state = copy.deepcopy(model.state_dict())
    res = train(cfg, task, model, tok, progress=False)
    out = {"metrics": split_metrics(answer_probs(model, tok, task.world), task.world, k, ref),
           "history": res.history, "seconds": res.seconds}
    if ensemble_alpha is not None:
        model.load_state_dict(interpolate_state_dicts(base_state, model.state_dict(), ensemble_alpha))
        out["ensemble"] = split_metrics(answer_probs(model, tok, task.world), task.world, k, ref)
    return out


def _worker(args) -> dict:
    world, cfg, k, alpha, force = args
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    return cached("naming-t1", {"world": world, "run": cfg, "k": k, "ensemble": alpha},
                  lambda: _train_one(world, cfg, k, alpha), code=[_train_one], force=force)


def run_grid(design, specs: list[dict], *, force: bool = False, progress: bool = True) -> list[dict]:
    """Train every spec (dicts with ``row``, ``beta``, ``config``) of ``design``
    (:class:`mdkl.tasks.naming_table1.Design`) in ``design.workers`` spawned one-thread processes
    (``workers=1``: here); returns, per spec, :func:`_train_one`'s result (RLOO runs at the
    design's beta also carry their Ensemble's metrics)."""
    jobs = [(design.world, sp["config"], design.k,
             design.ensemble_alpha if sp["row"] == "RLOO" and sp["beta"] == design.beta else None, force)
            for sp in specs]
    if design.workers <= 1:
        return [_worker(j) for j in progress_bar(jobs, desc="runs", show=progress)]
    with ProcessPoolExecutor(design.workers, mp_context=get_context("spawn")) as ex:
        return list(progress_bar(ex.map(_worker, jobs), total=len(jobs), desc="runs", show=progress))


def history_summary(h: pd.DataFrame, max_grad_norm: float = 1.0) -> dict:
    """One run's per-step history reduced for the per-run table: the largest |loss| and the median and
    largest pre-clip gradient norm over finite steps, the share of clipped steps (norm above
    ``max_grad_norm``, the runs' clip), empty completions, all-equal-reward groups, MARA's changes per
    step and its idle steps, the numeric-failure flag with its reason (:func:`mdkl.numerics.numeric_failure`
    at that clip, computed once) and the training loop's seconds."""
    loss, g = h["loss"].to_numpy(np.float64), h["grad_norm"].to_numpy(np.float64)
    fin = np.isfinite(loss) & np.isfinite(g)
    nf = _numeric_failure(h, max_grad_norm=max_grad_norm)
    return {"loss_max_abs": float(np.abs(loss[fin]).max()) if fin.any() else math.nan,
            "grad_norm_median": float(np.median(g[fin])) if fin.any() else math.nan,
            "grad_norm_max": float(g[fin].max()) if fin.any() else math.nan,
            "clipped_share": float((g > max_grad_norm).mean()), "empty_share": float(h["empty"].mean()),
            "all_equal_groups": float(h["zero_var_frac"].mean()), "mara_changed_per_step": float(h["mara_changed"].mean()),
            "mara_idle_steps": int((h["mara_changed"] == 0).sum()), "numeric_failure": nf.failed,
            "failure_reason": nf.reason, "train_seconds": float(h["seconds"].sum())}
