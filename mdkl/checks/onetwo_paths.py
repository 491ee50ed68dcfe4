"""Do notebook 05's headline verdicts survive another numeric path? (``make onetwo-paths``)

Trains notebook 05's cpu grid (the paper's four betas x 5 seeds x both KLs x both methods, the
same configs and cache) on the numeric path in force, writes its per-run table to
``data/results/onetwo_small_runs_<path>.csv`` (``pinned`` or ``native``), recomputes the headline
verdicts from it and from the committed table (:func:`mdkl.tasks.onetwo_claims.headline_claims`,
the same frozen design) and writes them side by side to ``data/results/onetwo_headlines_paths.csv``.
``make onetwo-paths`` runs it on the CPU's native kernels (``MDKL_NATIVE_KERNELS=1``), the second
numeric path on every machine; ~21 min on 2 cores.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd

from mdkl import runtime
from mdkl.lm import smalllm
from mdkl.tasks import onetwo, onetwo_claims, onetwo_runs

__all__ = ["path_tag", "grid_runs", "compare_paths", "main"]


def path_tag() -> str:
    """'native' under ``MDKL_NATIVE_KERNELS=1``, else 'pinned'."""
    return "native" if os.environ.get("MDKL_NATIVE_KERNELS") == "1" else "pinned"


def grid_runs(seeds=range(5), workers: int = 2) -> pd.DataFrame:
    """Notebook 05's grid on this path, one :func:`mdkl.tasks.onetwo_runs.run_summary` row per run
    (vanilla's target: this path's reference split over the prompts; MARA's: 1/2)."""
    import torch

    torch.set_num_threads(1)
    model, tok = smalllm.load_small_lm(onetwo_runs.SMALL_P95)
    q_ref = onetwo.exact_answer_split(model, tok, onetwo.PROMPTS)["p1_valid_exact"]
    cfgs = [onetwo_runs.arm_config(onetwo_runs.SMALL_RUN, kl, m, b, s)
            for kl, m in onetwo_runs.ARMS for b in onetwo_runs.PAPER_BETAS for s in seeds]
    res = onetwo_runs.run_grid(cfgs, onetwo.OneTwoTask(prompts_used=onetwo.PROMPTS), onetwo_runs.SMALL_P95,
                               workers=workers)
    return pd.DataFrame([onetwo_runs.run_summary(r, q_ref if c.mara == "none" else 0.5, last=5)
                         for c, r in zip(cfgs, res)])


def compare_paths(committed: pd.DataFrame, other: pd.DataFrame, tag: str) -> pd.DataFrame:
    """Headline verdicts of the committed per-run table beside another path's, one row per claim."""
    design = onetwo_claims.load_design(runtime.DATA_DIR / "onetwo_planning.json")
    a = onetwo_claims.headline_claims(committed, design)[["statement", "verdict"]]
    b = onetwo_claims.headline_claims(other, design)[["statement", "verdict"]]
    out = a.merge(b, on="statement", suffixes=("_committed", f"_{tag}"), validate="one_to_one")
    out["same"] = out.verdict_committed == out[f"verdict_{tag}"]
    return out


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="parallel training processes (default 2)")
    args = ap.parse_args(argv)
    tag = path_tag()
    print(f"numeric path: {runtime.numeric_path()}")
    runs = grid_runs(workers=args.workers)
    runtime.write_csv(runs, f"onetwo_small_runs_{tag}")
    cmp = compare_paths(pd.read_csv(runtime.RESULTS_DIR / "onetwo_small_runs.csv"), runs, tag)
    runtime.write_csv(cmp, "onetwo_headlines_paths")
    with pd.option_context("display.width", 250, "display.max_colwidth", 100):
        print(cmp.to_string(index=False))
    print(f"{int((~cmp.same).sum())} of {len(cmp)} headline verdicts differ between the committed path and {tag}")
    return cmp


if __name__ == "__main__":
    main()
