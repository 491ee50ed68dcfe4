"""Do notebook 05's headline verdicts survive another numeric path? (``make onetwo-paths``)

Trains notebook 05's cpu grid (the paper's four betas x 5 seeds x both KLs x both methods, the
same configs and cache) on the numeric path in force, writes its per-run table to
``data/results/onetwo_small_runs_<path>.csv`` (``pinned`` or ``native``), recomputes the verdicts
from it and from the committed table (the headline, :func:`mdkl.tasks.onetwo_claims.headline_claims`,
and the per-beta view, :func:`~mdkl.tasks.onetwo_claims.cell_claims`; the same frozen design) and writes them side by side to ``data/results/onetwo_headlines_paths.csv``.
``make onetwo-paths`` runs it on the CPU's native kernels (``MDKL_NATIVE_KERNELS=1``), the second
numeric path on every machine; ~21 min on 2 cores.

It also asks whether a headline survives one seed swapped for another (:func:`swap_one_seed`): for
each seed, that seed's runs (both methods, every cell) are replaced by the same seed's runs on the
other path, an independent replicate of the same configuration, and every verdict is recomputed;
``data/results/onetwo_headlines_swaps.csv``. ``--tables-only`` recomputes both tables from the
committed per-run tables without training.
"""

from __future__ import annotations

import argparse
import os

import pandas as pd

from mdkl import runtime
from mdkl.lm import smalllm
from mdkl.tasks import onetwo, onetwo_claims, onetwo_runs

__all__ = ["LEVELS", "path_tag", "grid_runs", "compare_paths", "swap_one_seed", "main"]


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


#: the two views of the claims: the headline (every beta pooled per KL) and the per-beta breakdown
LEVELS = {"headline": onetwo_claims.headline_claims, "per beta": onetwo_claims.cell_claims}


def _verdicts(runs: pd.DataFrame, design) -> pd.DataFrame:
    return pd.concat([f(runs, design)[["statement", "verdict"]].assign(level=level) for level, f in LEVELS.items()],
                     ignore_index=True)[["level", "statement", "verdict"]]


def compare_paths(committed: pd.DataFrame, other: pd.DataFrame, tag: str) -> pd.DataFrame:
    """Verdicts of the committed per-run table beside another path's, one row per claim of each
    level (``headline``: every beta pooled; ``per beta``: the exploratory breakdown)."""
    design = onetwo_claims.load_design(runtime.DATA_DIR / "onetwo_planning.json")
    a, b = _verdicts(committed, design), _verdicts(other, design)
    out = a.merge(b, on=["level", "statement"], suffixes=("_committed", f"_{tag}"), validate="one_to_one")
    out["same"] = out.verdict_committed == out[f"verdict_{tag}"]
    return out


def swap_one_seed(committed: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """One row per claim of each level: its committed verdict, the verdict with each seed's runs replaced
    by that seed's runs from ``other`` (``swap_<seed>``), and ``n_changed``: how many of those single
    swaps change it (0: the verdict does not hang on any one seed's last bits)."""
    design = onetwo_claims.load_design(runtime.DATA_DIR / "onetwo_planning.json")
    out = _verdicts(committed, design)
    seeds = sorted(set(committed.seed) & set(other.seed))
    if not seeds:
        raise ValueError("the two per-run tables share no seed: nothing to swap")
    for s in seeds:
        alt = pd.concat([committed[committed.seed != s], other[other.seed == s]], ignore_index=True)
        v = _verdicts(alt, design)
        out = out.merge(v.rename(columns={"verdict": f"swap_{s}"}), on=["level", "statement"], validate="one_to_one")
    cols = [f"swap_{s}" for s in seeds]
    out["n_changed"] = out[cols].ne(out.verdict, axis=0).sum(axis=1)
    return out


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="parallel training processes (default 2)")
    ap.add_argument("--tables-only", action="store_true",
                    help="recompute the comparison tables from the committed per-run tables; train nothing")
    args = ap.parse_args(argv)
    tag = "native" if args.tables_only else path_tag()
    committed = pd.read_csv(runtime.RESULTS_DIR / "onetwo_small_runs.csv")
    if args.tables_only:
        runs = pd.read_csv(runtime.RESULTS_DIR / f"onetwo_small_runs_{tag}.csv")
    else:
        print(f"numeric path: {runtime.numeric_path()}")
        runs = grid_runs(workers=args.workers)
        runtime.write_csv(runs, f"onetwo_small_runs_{tag}")
    cmp = compare_paths(committed, runs, tag)
    runtime.write_csv(cmp, "onetwo_headlines_paths")
    swaps = swap_one_seed(committed, runs)
    runtime.write_csv(swaps, "onetwo_headlines_swaps")
    with pd.option_context("display.width", 250, "display.max_colwidth", 100):
        print(cmp.to_string(index=False))
    for level in LEVELS:
        c, w = cmp[cmp.level == level], swaps[swaps.level == level]
        print(f"{level}: {int((~c.same).sum())} of {len(c)} verdicts differ between the committed path and {tag}; "
              f"{int((w.n_changed == 0).sum())} of {len(w)} survive every single-seed swap")
    return cmp


if __name__ == "__main__":
    main()
