"""Do notebook 07's Table 1 verdicts (the naming task) survive another numeric path? (``make naming-paths``)

Trains the naming task's cpu design (:data:`mdkl.tasks.naming_table1.DESIGNS`: the naming LM, the pilot,
every row x 5 seeds, the frontier and the matched-reward runs, as notebook 07 Part 1 runs them) on the
numeric path in force, writes its per-run table to ``data/results/naming_table1_runs_<tag>.csv``
(:func:`mdkl.checks.onetwo_paths.other_path_runs`: ``native``, or e.g. ``amd-pinned`` on another CPU
vendor), and puts the claims' verdicts recomputed from it (:func:`mdkl.tasks.naming_table1.claim_summary`)
beside the committed table's in ``data/results/naming_table1_paths_<tag>.csv``. ``make naming-paths`` runs it on
the CPU's native kernels (``MDKL_NATIVE_KERNELS=1``), where the naming LM itself is pretrained again on
that path (~13 min on 2 cores). On another CPU vendor notebook 07's own cpu run is that vendor's pinned
path (its per-run table saved under that tag). ``--tables-only`` recomputes the comparisons from the
committed per-run tables (every other path's, or ``--tag``'s).
"""

from __future__ import annotations

import argparse

import pandas as pd

from mdkl import runtime
from mdkl.checks.onetwo_paths import other_path_runs, write_derived
from mdkl.tasks import naming, naming_table1 as t1, naming_world

__all__ = ["design_runs", "compare_paths", "main"]


def design_runs(design: t1.Design = t1.DESIGNS["cpu"]) -> pd.DataFrame:
    """Every run of ``design`` on this path, as notebook 07 runs them
    (:func:`~mdkl.tasks.naming_table1.run_design`): the per-run table."""
    import torch

    torch.set_num_threads(2)  # as notebook 07 (the naming LM's pretraining fixes its own threads)
    model, tok = naming_world.load_naming_lm(design.world, progress=False)
    task = naming.NamingTask(design.world, k=design.k)
    ref = naming.answer_probs(model, tok, task.world)
    base = naming.split_metrics(ref, task.world, design.k, ref)
    return t1.run_design(design, task, t1.reference_reward_sd(task, ref), base)[0]


def compare_paths(committed: pd.DataFrame, other: pd.DataFrame, tag: str) -> pd.DataFrame:
    """One row per claim of :data:`~mdkl.tasks.naming_table1.CLAIMS`: the statement, the verdict from
    the committed per-run table and from ``other``'s (``verdict_<tag>``), and ``same``; both gated by
    the cpu design's frozen plan (:func:`~mdkl.tasks.naming_table1.frozen_plan`), as notebook 07 gates them."""
    spread = t1.frozen_plan(t1.DESIGNS["cpu"]).spread_series()
    a = t1.claim_summary(t1.verdicts_from_runs(committed, spread=spread))[["claim", "statement", "verdict"]]
    b = t1.claim_summary(t1.verdicts_from_runs(other, spread=spread))[["claim", "verdict"]]
    out = a.merge(b, on="claim", suffixes=("_committed", f"_{tag}"), validate="one_to_one")
    out["same"] = out.verdict_committed == out[f"verdict_{tag}"]
    return out


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tables-only", action="store_true",
                    help="recompute the comparison from the committed per-run tables; train nothing")
    ap.add_argument("--tag", help="with --tables-only: only this path's table (default: every committed one)")
    args = ap.parse_args(argv)
    committed = pd.read_csv(runtime.RESULTS_DIR / "naming_table1_runs.csv")
    others = other_path_runs("naming_table1_runs", design_runs, tables_only=args.tables_only, tag=args.tag,
                             make_target="make naming-paths")
    for tag, runs in others.items():
        cmp = compare_paths(committed, runs, tag)
        write_derived(cmp, f"naming_table1_paths_{tag}", f"naming_table1_runs_{tag}.csv")
        with pd.option_context("display.width", 250, "display.max_colwidth", 110):
            print(cmp.to_string(index=False))
        print(f"{int((~cmp.same).sum())} of {len(cmp)} Table 1 verdicts differ between the committed path and {tag}")
    return cmp


if __name__ == "__main__":
    main()
