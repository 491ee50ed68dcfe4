"""Do notebook 05's headline verdicts survive another numeric path? (``make onetwo-paths``)

Trains notebook 05's cpu grid (the paper's four betas x 5 seeds x both KLs x both methods, the
same configs and cache) on the numeric path in force, writes its per-run table to
``data/results/onetwo_small_runs_<tag>.csv`` (:func:`path_tag`: ``native`` on the committed results' CPU
vendor with its native kernels; on another vendor e.g. ``amd-pinned``), recomputes the verdicts
from it and from the committed table (the headline, :func:`mdkl.tasks.onetwo_claims.headline_claims`,
and the per-beta view, :func:`~mdkl.tasks.onetwo_claims.cell_claims`; the same frozen design) and writes
them side by side to ``data/results/onetwo_headlines_paths_<tag>.csv``.
``make onetwo-paths`` runs it on the CPU's native kernels (``MDKL_NATIVE_KERNELS=1``), the second
numeric path on every machine; ~21 min on 2 cores. On a CPU of another vendor, notebook 05's own cpu
run is that vendor's pinned path: its per-run table, saved as ``onetwo_small_runs_<vendor>-pinned.csv``,
is compared the same way (``--tables-only --tag <vendor>-pinned``).

It also asks whether a headline survives one seed swapped for another (:func:`swap_one_seed`): for
each seed, that seed's runs (both methods, every cell) are replaced by the same seed's runs on the
other path, an independent replicate of the same configuration, and every verdict is recomputed;
``data/results/onetwo_headlines_swaps_<tag>.csv``. ``--tables-only`` recomputes these tables from the
committed per-run tables without training (every other path's, or ``--tag``'s).

Where a headline verdict differs between paths, :func:`margins` says why: it pools every committed
path's grid (:func:`pool_replicates`, independent replicates of one design: a seed's final entropies
on two paths are uncorrelated within a cell), takes each claim's pooled estimate and per-unit spread,
its distance to the nearest boundary of its rule (:mod:`mdkl.stats.verdicts`: 1/2 for a rate, the
+-margin of a convergence claim, 0 and the predicted effect for the front comparison), and the number
of units (runs, or paired seeds) per arm at which one replicate grid's interval would clear that boundary
with probability 0.8 if the pooled estimate were the truth (the :func:`~mdkl.stats.verdicts.equivalence_mde`
formula solved for n); ``data/results/onetwo_headlines_margins.csv``. A verdict that differs between
paths while the design has fewer units than that is a claim sitting near its boundary, not a defect of
one path; a pair ``holds`` / ``FAILS`` (a contradiction) would be one.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Callable

import numpy as np
import pandas as pd

from mdkl import runtime
from mdkl.lm import smalllm
from mdkl.stats import verdicts
from mdkl.tasks import onetwo, onetwo_claims, onetwo_runs

__all__ = ["LEVELS", "committed_vendor", "vendor_tag", "committed_tag", "write_derived", "replicate_tables", "pool_replicates", "within_cell_correlation", "units_needed", "contradicts", "margins", "path_tag", "other_path_tags", "other_path_runs", "grid_runs", "compare_paths",
           "swap_one_seed", "main"]

#: short names of CPU vendors in path tags
VENDOR_TAGS = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


def committed_vendor(result: str = "onetwo_small_runs.csv") -> str:
    """The CPU vendor a committed result file was computed on (its numeric path in
    ``data/results/provenance.json``, e.g. 'GenuineIntel')."""
    import json

    record = json.loads(runtime.PROVENANCE.read_text()).get(result) if runtime.PROVENANCE.exists() else None
    if record is None:
        raise ValueError(f"{result} has no entry in {runtime.PROVENANCE.name}: write it with mdkl.runtime.write_csv")
    return record["numeric_path"].split()[1]


def vendor_tag(vendor: str) -> str:
    """A CPU vendor's short name in path tags ('GenuineIntel' -> 'intel')."""
    return VENDOR_TAGS.get(vendor, vendor.lower())


def path_tag(result: str = "onetwo_small_runs.csv") -> str:
    """This machine's numeric path relative to the committed ``result``'s: 'pinned' or 'native'
    (``MDKL_NATIVE_KERNELS=1``) on the committed results' CPU vendor, else prefixed by this CPU's
    vendor, e.g. 'amd-pinned': pinned kernels do not repeat bits across vendors."""
    from mdkl.machine import cpu_model

    kernels = "native" if os.environ.get("MDKL_NATIVE_KERNELS") == "1" else "pinned"
    vendor = cpu_model()["vendor"]
    if vendor == committed_vendor(result):
        return kernels
    return f"{vendor_tag(vendor)}-{kernels}"


def committed_tag(result: str = "onetwo_small_runs.csv") -> str:
    """The committed ``result``'s own path as a tag that names its vendor, e.g. 'intel-pinned' (its
    table is ``<stem>.csv`` itself; :func:`path_tag` calls that path 'pinned')."""
    return f"{vendor_tag(committed_vendor(result))}-pinned"


def replicate_tables(stem: str = "onetwo_small_runs") -> dict[str, pd.DataFrame]:
    """Every committed per-run table of ``stem``'s grid by tag: the committed path's
    (:func:`committed_tag`) first, then each other path's (:func:`other_path_tags`)."""
    out = {committed_tag(f"{stem}.csv"): pd.read_csv(runtime.RESULTS_DIR / f"{stem}.csv")}
    out.update({t: pd.read_csv(runtime.RESULTS_DIR / f"{stem}_{t}.csv") for t in other_path_tags(stem)})
    return out


def other_path_tags(stem: str) -> list[str]:
    """Tags of the committed per-run tables ``data/results/<stem>_<tag>.csv`` of other numeric paths
    ('native', 'pinned' or '<vendor>-<kernels>'; a profile's table such as ``<stem>_quick.csv`` is not one)."""
    tags = (p.stem[len(stem) + 1:] for p in runtime.RESULTS_DIR.glob(f"{stem}_*.csv"))
    return sorted(t for t in tags if t in ("native", "pinned") or "-" in t)


def write_derived(df: pd.DataFrame, name: str, source: str) -> None:
    """Write a table computed from committed per-run tables alone (no training) to
    ``data/results/<name>.csv``. Any machine derives the same numbers from the same files, so its
    provenance record is not this machine's: it keeps the one it was committed with, and a new table
    takes the record of ``source`` (the per-run table it comes from)."""
    import json

    before = json.loads(runtime.PROVENANCE.read_text()) if runtime.PROVENANCE.exists() else {}
    if source not in before:
        raise ValueError(f"{source} has no entry in {runtime.PROVENANCE.name}: write it with mdkl.runtime.write_csv")
    runtime.write_csv(df, name)
    record = json.loads(runtime.PROVENANCE.read_text())
    record[f"{name}.csv"] = before.get(f"{name}.csv", before[source])
    runtime.atomic_write_bytes(runtime.PROVENANCE, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def other_path_runs(stem: str, train: Callable[[], pd.DataFrame], *, tables_only: bool, tag: str | None,
                    make_target: str) -> dict[str, pd.DataFrame]:
    """The per-run tables of other numeric paths, by tag: with ``tables_only`` the committed
    ``<stem>_<tag>.csv`` (``tag``'s, or every one), else this machine's path, trained by ``train`` and
    written as ``<stem>_<path_tag>.csv``. The committed results' own path (pinned kernels on their CPU
    vendor) is refused: its table is ``<stem>.csv`` itself."""
    if tables_only:
        tags = [tag] if tag else other_path_tags(stem)
        return {t: pd.read_csv(runtime.RESULTS_DIR / f"{stem}_{t}.csv") for t in tags}
    here = path_tag(f"{stem}.csv")
    if here == "pinned":
        raise SystemExit(f"this is the committed results' own path (pinned kernels, same CPU vendor): {stem}.csv is "
                         f"its table. Run `{make_target}` (native kernels) or on another CPU vendor.")
    print(f"numeric path: {runtime.numeric_path()}")
    runs = train()
    runtime.write_csv(runs, f"{stem}_{here}")
    return {here: runs}


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


def pool_replicates(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The per-run tables of several numeric paths as one table with a ``replicate`` column (the tag),
    refused unless every table holds the same design: the same (kl, method, beta, seed, steps) runs."""
    if len(tables) < 1:
        raise ValueError("no per-run table to pool")
    design = {t: set(zip(d.kl, d.method, d.beta, d.seed, d.steps)) for t, d in tables.items()}
    first = next(iter(design.values()))
    odd = [t for t, d in design.items() if d != first]
    if odd:
        raise ValueError(f"the per-run tables of {odd} hold another design than {next(iter(design))}'s: only "
                         f"replicates of one grid (same arms, betas, seeds, steps) can be pooled")
    return pd.concat([d.assign(replicate=t) for t, d in tables.items()], ignore_index=True)


def within_cell_correlation(a: pd.DataFrame, b: pd.DataFrame, column: str = "H") -> float:
    """Correlation over runs of ``column`` between two paths' grids, paired by (kl, method, beta, seed),
    after each cell's (kl, method, beta) mean is taken out of each path: near 0 when the same seed on
    two numeric paths gives independent replicates (the premise of :func:`pool_replicates`)."""
    key = ["kl", "method", "beta", "seed"]
    m = a[key + [column]].merge(b[key + [column]], on=key, suffixes=("_a", "_b"), validate="one_to_one")
    if len(m) < 3:
        raise ValueError(f"{len(m)} paired runs: need >= 3 for a correlation")
    g = m.groupby(["kl", "method", "beta"])
    da = m[f"{column}_a"] - g[f"{column}_a"].transform("mean")
    db = m[f"{column}_b"] - g[f"{column}_b"].transform("mean")
    return float(np.corrcoef(da, db)[0, 1])


def units_needed(sd: float, distance: float, n_max: int = 10_000) -> float:
    """Smallest number of units whose :func:`~mdkl.stats.verdicts.equivalence_mde` (90% interval,
    power 0.8) at per-unit spread ``sd`` is at most ``distance``: about how many runs one grid needs
    for its interval to clear a boundary ``distance`` away from the estimate (inf beyond ``n_max``)."""
    if not (math.isfinite(sd) and math.isfinite(distance)) or sd < 0 or distance < 0:
        raise ValueError(f"sd = {sd}, distance = {distance}: both must be finite and >= 0")
    if distance == 0:
        return math.inf
    lo, hi = 2, n_max
    if verdicts.equivalence_mde(sd, hi) > distance:
        return math.inf
    while lo < hi:  # the MDE falls with n
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if verdicts.equivalence_mde(sd, mid) <= distance else (mid + 1, hi)
    return float(lo)


def contradicts(verdict_list) -> bool:
    """Whether some verdict reads holds (or holds, smaller than the paper's) where another reads FAILS."""
    v = set(verdict_list)
    return verdicts.FAILS in v and bool(v & {verdicts.HOLDS, verdicts.HOLDS_SMALLER})


def margins(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per headline claim: its verdict on each path's grid (``verdict_<tag>``), on every grid
    pooled, the pooled estimate and per-unit spread, the nearest boundary of its rule and the distance
    to it, the units per arm of one grid (``units_per_grid``: the fewest over paths) and
    :func:`units_needed`; ``differs`` (the paths' verdicts are not all equal) and ``contradicts`` (one
    path reads holds where another reads FAILS). The reward-collapse claim is a count of events with no
    boundary to measure (``units_needed`` empty)."""
    design = onetwo_claims.load_design(runtime.DATA_DIR / "onetwo_planning.json")
    per = {t: onetwo_claims.headline_claims(d, design) for t, d in tables.items()}
    pooled = onetwo_claims.headline_claims(pool_replicates(tables), design)
    out = pooled[["claim", "kl", "statement"]].copy()  # the pooled table's rows: the same claims in the same order
    for t, c in per.items():
        out[f"verdict_{t}"] = c.verdict.to_numpy()
    out["verdict_pooled"] = pooled.verdict
    out["estimate"], out["sd"] = pooled.estimate, pooled.sd
    near = [min(b, key=lambda x: abs(e - x)) if isinstance(b, tuple) and math.isfinite(e) else math.nan
            for e, b in zip(pooled.estimate, pooled.bounds)]
    out["boundary"] = near
    out["distance"] = (out.estimate - out.boundary).abs()
    out["units_per_grid"] = [min(c.n_units.iloc[i] for c in per.values()) for i in range(len(out))]
    out["units_needed"] = [units_needed(s, d) if math.isfinite(d) else math.nan for s, d in zip(out.sd, out.distance)]
    cols = [f"verdict_{t}" for t in tables]
    out["differs"] = out[cols].nunique(axis=1) > 1
    out["contradicts"] = out[cols].apply(contradicts, axis=1)
    return out


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2, help="parallel training processes (default 2)")
    ap.add_argument("--tables-only", action="store_true",
                    help="recompute the comparison tables from the committed per-run tables; train nothing")
    ap.add_argument("--tag", help="with --tables-only: only this path's table (default: every committed one)")
    args = ap.parse_args(argv)
    committed = pd.read_csv(runtime.RESULTS_DIR / "onetwo_small_runs.csv")
    others = other_path_runs("onetwo_small_runs", lambda: grid_runs(workers=args.workers),
                             tables_only=args.tables_only, tag=args.tag, make_target="make onetwo-paths")
    for tag, runs in others.items():
        cmp = compare_paths(committed, runs, tag)
        write_derived(cmp, f"onetwo_headlines_paths_{tag}", f"onetwo_small_runs_{tag}.csv")
        swaps = swap_one_seed(committed, runs)
        write_derived(swaps, f"onetwo_headlines_swaps_{tag}", f"onetwo_small_runs_{tag}.csv")
        with pd.option_context("display.width", 250, "display.max_colwidth", 100):
            print(cmp.to_string(index=False))
        for level in LEVELS:
            c, w = cmp[cmp.level == level], swaps[swaps.level == level]
            print(f"{level}: {int((~c.same).sum())} of {len(c)} verdicts differ between the committed path and {tag}; "
                  f"{int((w.n_changed == 0).sum())} of {len(w)} survive every single-seed swap")
    tables = replicate_tables()
    m = margins(tables)
    write_derived(m, "onetwo_headlines_margins", "onetwo_small_runs.csv")
    print(f"headline, over {len(tables)} paths ({', '.join(tables)}): {int(m.differs.sum())} of {len(m)} verdicts differ, "
          f"{int(m.contradicts.sum())} contradict (holds against FAILS); every one that differs needs more units "
          f"than one grid has: {bool((m.units_needed[m.differs] > m.units_per_grid[m.differs]).all())}")
    return cmp


if __name__ == "__main__":
    main()
