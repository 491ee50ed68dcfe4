"""``make readme``: the README's results table, generated from what the repository commits.

Every number in the README's front-page table comes from a committed source, never typed by hand:
the paper's numbers from :data:`PAPER` (transcribed from the paper, each with its figure or table),
ours from the committed result CSVs under ``data/results/`` (and the run configurations they
record: seeds, betas, steps), the verdicts from the claim lines the committed notebooks print (the
notebooks compute them; ``tests/test_headlines.py`` recomputes the training notebooks' headline
verdicts from the same CSVs), and the runtimes from ``data/timings.csv`` (measured wall times, with
the machine and the cache state they were measured in).

``python -m mdkl.checks.readme`` rewrites the block between ``<!-- results:begin -->`` and
``<!-- results:end -->`` in README.md; ``--check`` exits 1 when the README differs from what the
committed sources give (``tests/test_readme.py`` runs it, so a stale README fails CI).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mdkl.reproduce import claim_lines
from mdkl.runtime import DATA_DIR, RESULTS_DIR, ROOT
from mdkl.stats.tables import flag_column

__all__ = ["Row", "ROWS", "verdict_summary", "results_table", "render", "main", "BEGIN", "END"]

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
NOTEBOOKS = ROOT / "notebooks"
TIMINGS = DATA_DIR / "timings.csv"


def _csv(name: str) -> pd.DataFrame:
    path = RESULTS_DIR / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path.relative_to(ROOT)} is missing: run the notebook that writes it "
                                f"(make all), then `make readme`")
    return pd.read_csv(path)


@lru_cache(maxsize=None)
def _claims(notebook: str) -> dict[str, str]:
    return claim_lines(NOTEBOOKS / f"{notebook}.ipynb")


def verdict_summary(claims: dict[str, str], prefix: str | tuple[str, ...] = "") -> str:
    """Count the verdicts of the claim statements starting with ``prefix`` (``""``: every claim),
    e.g. ``"6 of 6 hold"`` or ``"2 hold, 1 FAILS"`` (``"holds, smaller than the paper's"`` counts as
    its own kind). Raises when no statement matches, so a renamed claim cannot drop out silently."""
    prefixes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    picked = [v for s, v in claims.items() if s.startswith(prefixes)]
    if not picked:
        raise ValueError(f"no claim line starts with {prefixes!r}: the notebook's claims were renamed; "
                         f"update mdkl/checks/readme.py")
    counts = Counter(picked)
    if set(counts) == {"holds"}:
        return f"{len(picked)} of {len(picked)} hold"
    order = ["holds", "holds, smaller than the paper's", "inconclusive", "FAILS"]
    kinds = sorted(counts, key=lambda k: (order.index(k) if k in order else len(order), k))
    return ", ".join(f"{counts[k]} {_word(k, counts[k])}" for k in kinds)


def _word(kind: str, n: int) -> str:
    if kind == "holds":
        return "hold" if n > 1 else "holds"
    if kind == "holds, smaller than the paper's":
        return "hold, smaller than the paper's" if n > 1 else "holds, smaller than the paper's"
    return kind


@lru_cache(maxsize=None)
def _timings() -> pd.DataFrame:
    return pd.read_csv(TIMINGS)


def _minutes(stage: str, profile: str) -> float | None:
    t = _timings()
    row = t[(t.stage == stage) & (t.profile == profile)]
    return None if row.empty else float(row.minutes.iloc[-1])


def _runtime(notebook: str) -> str:
    cpu, quick = _minutes(notebook, "cpu"), _minutes(notebook, "quick")
    extra = {"06_chemistry": ("chem-prior", "chem-calibrate-v2")}.get(notebook, ())
    pre = sum(_minutes(s, "cpu") or 0.0 for s in extra)
    cpu_s = f"{cpu:g}" + (f" (+{pre:g} once)" if pre else "")
    return f"{cpu_s} / {quick:g}" if quick is not None else cpu_s


# ---------------------------------------------------------------------------------------------
# "ours": one function per row, from the committed result CSVs
# ---------------------------------------------------------------------------------------------

def _vec(s: str) -> str:
    return "[" + ", ".join(f"{float(x):.3f}" for x in s.strip("[]").split()) + "]"


def _fig2() -> str:
    d = _csv("fig2_bimodal_cpu")
    r = d[d.KL == "reverse"].set_index("beta")
    return (f"reverse target and trained policy prefer {r.loc[0.10, 'trained prefers']} at beta 0.10, "
            f"{r.loc[0.15, 'trained prefers']} at 0.15")


def _fig3() -> str:
    d = _csv("fig3_three_actions_cpu")
    a = d[(d.beta == 0.5) & (d.iterations == 1000)].iloc[0]
    b = d[d.beta == 0.001].sort_values("iterations")
    return (f"beta 0.5: {_vec(a['trained mean'])}; beta 1e-3: {_vec(b.iloc[0]['trained mean'])} after "
            f"{b.iloc[0].iterations} iterations, {_vec(b.iloc[-1]['trained mean'])} after {b.iloc[-1].iterations}")


def _fig4() -> str:
    d = _csv("fig4_equal_rewards_cpu").sort_values("iterations")
    first, last = d.iloc[0], d.iloc[-1]
    return (f"{_vec(last['trained mean'])} after {last.iterations} iterations (ratio "
            f"{last['ratio pi[1]/pi[2] (mean policy)']:.1f}); ratio {first['ratio pi[1]/pi[2] (mean policy)']:.2f} "
            f"after {first.iterations}")


def _fig5() -> str:
    d = _csv("fig5_mara_toy_cpu")
    d = d[d.iterations == d.iterations.max()]
    m, v = d[d.method == "MARA"], d[d.method == "vanilla"]
    col = "max/min on good (seed mean)"
    return (f"max/min over the good tokens: MARA {m[col].min():.2f}-{m[col].max():.2f} (seed median up to "
            f"{m['max/min on good (seed median)'].max():.2f}), vanilla {v[col].min():.0f}-{v[col].max():.0f}")


def _onetwo(claim: str) -> Callable[[], str]:
    def ours() -> str:
        r = _csv("onetwo_small_runs")
        design = f"{r.beta.nunique()} betas x {r.seed.nunique()} seeds x 2 KLs"
        v, m = r[r.method == "vanilla"], r[r.method == "MARA"]
        if claim == "one":
            n = int((v.H < 0.05).sum())
            on1 = int(((v.H < 0.05) & (v.p1_valid > 0.5)).sum())
            return f"{n} of {len(v)} vanilla runs end below 0.05 nats ({on1} on '1'); {design}, pooled per KL"
        if claim == "ref":
            return (f"vanilla's final P('1' | valid): median {v.p1_valid.median():.3f} (reference "
                    f"{v.target_p1.iloc[0]:.3f})")
        if claim == "uniform":
            near = int(((m.p1_valid - 0.5).abs() < 0.1).sum())
            return f"{near} of {len(m)} MARA runs end with P('1' | valid) within 0.1 of 1/2"
        if claim == "front":
            p = r.pivot_table(index=["kl", "beta", "seed"], columns="method", values="hv")
            return (f"hypervolume MARA - vanilla per seed: median {float(np.median(p.MARA - p.vanilla)):+.2f} "
                    f"(predicted +0.50)")
        gone = flag_column(r.reward_collapse)
        collapsed = int(gone.sum())
        dips = int(((r.min_batch_reward < 0.2) & ~gone).sum())
        return f"{collapsed} of {len(r)} runs end collapsed, {dips} more dip below a batch reward of 0.2"
    return ours


def _chem(task: str) -> Callable[[], str]:
    def ours() -> str:
        p = _csv("chem_cpu_v2_primary_test").set_index("task").loc[task]
        return (f"{p.ratio - 1:+.1%} [{p.ratio_low - 1:+.1%}, {p.ratio_high - 1:+.1%}] over {int(p.n)} paired seeds "
                f"(planned MDE {p.planned_mde:+.0%})")
    return ours


def _creative(method: str, control: str) -> Callable[[], str]:
    def ours() -> str:
        d = _csv("creative_paired")
        c = d[(d.kind == "MARA - control") & (d.method == method) & (d.metric == "r_out")].iloc[0]
        return (f"out-of-distribution reward {c.est:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}] vs {control} "
                f"(planned MDE {c.mde:.3f}); {int(c.n_seeds)} seed(s), {int(c.n_prompts)} prompts")
    return ours


def _naming_table1() -> str:
    from mdkl.tasks import naming_table1

    r = _csv("naming_table1_runs")
    g = naming_table1.row_summary(r)
    return (f"exact OOD reward Base {g.loc['Base', 'ood_true']:.3f}, RLOO {g.loc['RLOO', 'ood_true']:.3f}, MARA (fwd) "
            f"{g.loc['MARA (fwd)', 'ood_true']:.3f}; distinct answers of 10: {g.loc['Base', 'id_distinct']:.2f} / "
            f"{g.loc['RLOO', 'id_distinct']:.2f} / {g.loc['MARA (fwd)', 'id_distinct']:.2f} "
            f"({int(g.seeds.min())} seeds per row)")


def _successors() -> str:
    d = _csv("onetwo_successors_runs")
    g = d[~flag_column(d.numeric_failure)].groupby("method").p1_valid.mean()  # failed runs: listed, never summarized
    return ("on the 1-2 task (notebook 05, 2 seeds), P('1' | valid): "
            + ", ".join(f"{k} {g[k]:.2f}" if k in g.index else f"{k} failed numerically" for k in sorted(set(d.method))))


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One line of the results table: the paper's item and number, ours, the notebook's verdict."""
    paper: str
    notebook: str
    paper_number: str
    ours: Callable[[], str]
    claims: str | tuple[str, ...]
    """statement prefix(es) of the notebook's claim lines this row summarises ("" = all)"""


_VAN = "vanilla runs end on one answer"
ROWS: tuple[Row, ...] = (
    Row("Fig. 1 (a-c)", "01_distribution_matching", "reverse KL fits one mode; G_beta is a single spike",
        lambda: "reverse-KL Gaussian on one mode; the RL policies follow G_beta's single spike", ""),
    Row("Rem. 3.1-3.4, App. B", "02_optimal_targets", "closed-form targets of each objective",
        lambda: "sympy = closed form; exact gradient ascent reaches each target", ""),
    Row("Prop. 4.1, Rem. 4.2-4.3", "03_probability_ratios", "ratio 2.6e43 (Rem. 4.2); ratio 15 kept (Rem. 4.3)",
        lambda: f"ratio {np.exp(100):.4g}; equal rewards keep the reference ratio for beta 1e-6 to 1e3",
        ("Prop. 4.1", "Rem. 4.2", "Rem. 4.3")),
    Row("Fig. 2, Rem. 4.4", "03_probability_ratios", "reverse-KL mode flips between beta 0.10 and 0.15",
        _fig2, ("Fig. 2", "Rem. 4.4")),
    Row("Fig. 3", "03_probability_ratios", "beta 0.5: [0.066, 0.422, 0.512]; beta 1e-3: [0, 0, 1]", _fig3, "Fig. 3"),
    Row("Fig. 4", "03_probability_ratios", "[0.000, 0.937, 0.063]: ratio 15 kept", _fig4, "Fig. 4"),
    Row("Fig. 5", "04_mara_toy", "MARA uniform on the high-reward tokens, close to pi_ref below tau", _fig5,
        "Fig. 5"),
    Row("Fig. 6a", "05_one_two_task", "vanilla: all but one run end on one answer, mostly '1'", _onetwo("one"), _VAN),
    Row("Rem. 4.3 on the 1-2 task", "05_one_two_task", "equal rewards: vanilla keeps the reference's split",
        _onetwo("ref"), "vanilla converges to the reference's split"),
    Row("Fig. 6a", "05_one_two_task", "MARA: near-uniform 1/2, both KLs, every beta", _onetwo("uniform"),
        "MARA converges to the uniform split"),
    Row("Fig. 6b", "05_one_two_task", "MARA's checkpoints dominate vanilla's", _onetwo("front"),
        "MARA's checkpoints dominate vanilla's"),
    Row("Fig. 6a", "05_one_two_task", "reward about 1.0 for every run", _onetwo("collapse"),
        "no vanilla or MARA run's reward collapses"),
    Row("Table 2a (SYNTH)", "06_chemistry", "MARA tau 0.85 vs REINVENT, yield at 0.85: +36%", _chem("synth"),
        "SYNTH analogue"),
    Row("Table 2b (ALL-AMIDE)", "06_chemistry", "MARA tau 0.85 vs REINVENT, yield at 0.85: +31%", _chem("amide"),
        "ALL-AMIDE analogue"),
    Row("Table 1 (powered, naming task)", "07_creative_qa", "MARA (fwd): best out-dist reward, most diverse",
        _naming_table1, ("MARA (fwd) has the best", "MARA (fwd) is the most diverse", "MARA (fwd) is more diverse than every",
                         "RLOO loses diversity")),
    Row("Table 1 (SmolLM2 demo)", "07_creative_qa", "MARA (rev) - RLOO: out-dist reward +0.171", _creative("MARA (rev)", "RLOO"),
        "MARA (rev) raises"),
    Row("Table 1 (SmolLM2 demo)", "07_creative_qa", "MARA (fwd) - RLOO: out-dist reward +0.324", _creative("MARA (fwd)", "RLOO + k3"),
        "MARA (fwd) raises"),
    Row("§5, later methods", "08_successors", "(beyond the paper)", _successors, ""),
)


def results_table() -> str:
    """The README's results table (markdown), from the committed notebooks, CSVs and timings."""
    lines = ["| paper | notebook | the paper | ours | verdict (as the notebook prints it) | runtime cpu / quick (min) |",
             "|---|---|---|---|---|---|"]
    seen: set[str] = set()
    for r in ROWS:
        runtime = _runtime(r.notebook) if r.notebook not in seen else ""
        seen.add(r.notebook)
        cells = [r.paper, f"[`{r.notebook[:2]}`](notebooks/{r.notebook}.ipynb)", r.paper_number, r.ours(),
                 verdict_summary(_claims(r.notebook), r.claims), runtime]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


#: the stages ``make all`` runs besides the notebooks (the Makefile's prerequisites of notebook 06); the
#: v1 calibration (``make chem-calibrate``) is not one: notebook 06 reads v1 from its committed CSVs
MAKE_ALL_EXTRA_STAGES = ("environment", "chem-prior", "chem-calibrate-v2")


def total_minutes(profile: str = "cpu") -> float:
    """Sum of the measured stages of ``make all`` under ``profile``: the environment, every notebook,
    the chemistry prior and the v2 calibration (:data:`MAKE_ALL_EXTRA_STAGES`)."""
    t = _timings()
    stages = {p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")} | set(MAKE_ALL_EXTRA_STAGES)
    t = t[(t.profile == profile) & t.stage.isin(stages)]
    return float(t.groupby("stage").minutes.last().sum())


def render(readme: str) -> str:
    """``readme`` with the block between :data:`BEGIN` and :data:`END` regenerated."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README.md needs the markers {BEGIN} and {END} around the results block")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    test = _minutes("make test", "quick")
    block = (f"\n`make all` (default profile, 2 cores, cold): about {total_minutes():.0f} min; `make test`: "
             f"{test:g} min.\n\n{results_table()}\n")
    return head + BEGIN + block + END + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md is stale; write nothing")
    args = ap.parse_args(argv)
    path = ROOT / "README.md"
    old = path.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md's results block is stale: run `make readme` and commit README.md")
            return 1
        print("README.md's results block matches the committed notebooks, CSVs and timings")
        return 0
    path.write_text(new)
    print("README.md: results block regenerated" if new != old else "README.md: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
