"""Table 1 on the naming task (mdkl.tasks.naming_table1): configs, bad input, verdicts recomputed from
the committed per-run table and checked against the committed notebook's printed verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mdkl.mara import batch_percentile_tau, mara_rewards, mara_substitute
from mdkl.stats import verdicts
from mdkl.tasks import naming, naming_table1 as t1
from mdkl.tasks.creative import expected_rating
from mdkl.tasks.naming_world import Category, NamingConfig

ROOT = Path(__file__).resolve().parents[1]
RUNS_CSV = ROOT / "data" / "results" / "naming_table1_runs.csv"
NOTEBOOK = ROOT / "notebooks" / "07_creative_qa.ipynb"


def _fake_task():
    return naming.NamingTask(NamingConfig())


def _fake_ref(task):
    # a made-up reference: each category's answers in corpus proportions, 10% invalid
    return [0.9 * np.asarray(c.corpus_p) for c in task.world.categories]


# ---------------------------------------------------------------- design and configs
def test_every_row_has_a_config_and_matched_beta():
    task, d = _fake_task(), t1.Design()
    sd = t1.reference_reward_sd(task, _fake_ref(task))
    assert 0 < sd < 1
    for row in t1.ROWS:
        c = t1.row_config(d, task, row, 3, d.beta, sd)
        assert c.seed == 3 and c.tau_percentile == d.tau_percentile
        if c.advantage == "grpo" and not c.best_of_n:
            assert c.beta == pytest.approx(d.beta / (sd + 1e-4))  # effective beta matched to RLOO's
        else:
            assert c.beta == d.beta
    assert t1.row_config(d, task, "Entropy", 0, d.beta, sd).entropy == d.entropy_eta
    assert t1.row_config(d, task, "MARA (fwd)", 0, d.beta, sd).tau_scope == "batch"
    assert t1.row_config(d, task, "MARA (fwd, per group)", 0, d.beta, sd).tau_scope == "group"
    with pytest.raises(ValueError, match="Base and Ensemble are not trained"):
        t1.row_config(d, task, "Base", 0, d.beta, sd)


def test_specs_are_paired_by_seed_and_pilot_disjoint():
    task = _fake_task()
    d = t1.DESIGNS["cpu"]
    specs = t1.run_specs(d, task, 0.3)
    design = [s for s in specs if s["phase"] == "design"]
    assert {(s["row"], s["seed"]) for s in design} == {(r, s) for r in d.rows for s in d.seeds}
    assert not {s["seed"] for s in specs if s["phase"] == "pilot"} & set(d.seeds)
    assert len(d.seeds) >= 5
    with pytest.raises(ValueError, match="disjoint"):
        t1.Design(seeds=(0, 1), pilot_seeds=(1, 2))


def test_reference_tau_is_the_exact_percentile():
    task = _fake_task()
    ref = _fake_ref(task)
    r, p = t1._mixture(task, ref)
    tau = t1.reference_tau(task, ref, 90.0)
    assert p[r < tau].sum() < 0.9 <= p[r <= tau].sum() + 1e-12


# ---------------------------------------------------------------- bad input
def test_beta_zero_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="beta must be > 0"):
        t1.Design(beta=0.0)
    with pytest.raises(ValueError, match="beta must be > 0"):
        t1.Design(frontier_betas=(0.0,))


def test_category_without_valid_answer_is_refused():
    with pytest.raises(ValueError, match="no valid answer"):
        Category("x", (), (), (), (), ())
    with pytest.raises(ValueError, match="n_answers must be >= 1"):
        NamingConfig(n_answers=0)


def test_empty_generation_scores_zero_and_is_counted():
    task = _fake_task()
    c = task.world.categories[0]
    r = task.rewards(["", None, c.answers[0]], prompt_index=[0, 0, 0])
    assert r[:2].tolist() == [0.0, 0.0] and r[2] == pytest.approx(c.proxy[0])
    assert task.metrics(["", "x", c.answers[0]])["empty"] == pytest.approx(1 / 3)


def test_judge_output_that_does_not_parse():
    # naming: a completion that names no answer is invalid (reward 0, counted in the invalid mass)
    task = _fake_task()
    assert naming.parse_answer("Rating: nine", task.world.categories[0]) == naming.INVALID
    # creative: the judge's reward is an expectation over its scale tokens, so it cannot fail to parse
    x = expected_rating(torch.tensor([[0.0] * 9, [-1e9] * 8 + [0.0]]))
    assert torch.isfinite(x).all() and x[0] == pytest.approx(5.0) and x[1] == pytest.approx(9.0)


def test_all_equal_rewards_leave_mara_uniform_and_rloo_silent():
    r = torch.tensor([0.6, 0.6, 0.6, 0.6])
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    g = torch.zeros(4, dtype=torch.long)
    tau = batch_percentile_tau(r, 90.0)
    assert tau.item() == pytest.approx(0.6)  # every sample is "good": MARA equalizes the group
    out = mara_rewards(r, lp, 0.1, tau[g], g)
    assert torch.allclose(out.double(), 0.6 + 0.1 * (lp.max() - lp).double())


def test_group_with_no_sample_above_tau_is_unchanged():
    r = torch.tensor([0.2, 0.6, 1.1, 1.0])
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    g = torch.tensor([0, 0, 1, 1])
    tau = torch.tensor(1.05)  # one batch tau: group 0 has no sample above it
    out = mara_rewards(r, lp, 0.1, tau, g)
    assert torch.equal(out[:2].double(), r[:2].double())
    rs, lrs = mara_substitute(r, lp, tau, g)
    assert torch.equal(rs[:2], r[:2]) and torch.equal(lrs, lp)  # group 1: a single good sample is its anchor


def test_numeric_failure_flags():
    ok = pd.DataFrame({"loss": [0.1, -0.5], "grad_norm": [0.3, 2.0]})
    assert not t1.numeric_failure(ok)
    assert t1.numeric_failure(ok.assign(grad_norm=[0.3, 2e10]))
    assert t1.numeric_failure(ok.assign(loss=[0.1, math.nan]))


# ---------------------------------------------------------------- verdicts from a made-up table
def _toy_runs(effect: float = 0.5, spread: float = 0.05, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    base = {"id_distinct": 6.0, "ood_true": 0.5, "id_entropy": 2.4, "id_proxy": 0.7, "id_valid": 0.9, "id_kl": 0.0}
    for s in range(5):
        rows.append({"phase": "design", "row": "Base", "seed": s, "beta": 0.0, **base})
    for phase, seeds, betas in (("pilot", (100, 101, 102), (0.1,)), ("design", range(5), (0.1,)),
                                ("frontier", range(5), (0.05, 0.2))):
        for b in betas:
            for s in seeds:
                for row in ["RLOO", "MARA (fwd)"] + ([r for r in t1.ROWS if r not in ("RLOO", "MARA (fwd)")]
                                                     if phase == "design" else []):
                    gain = effect if row == "MARA (fwd)" else 0.0
                    rows.append({"phase": phase, "row": row, "seed": s, "beta": b, "id_valid": 0.95,
                                 "id_distinct": 4.0 + gain + rng.normal(0, spread) + 5 * (b - 0.1),
                                 "ood_true": 0.5 + gain / 5 + rng.normal(0, spread / 5),
                                 "id_entropy": 1.5 + gain, "id_proxy": 1.0 - 2 * (b - 0.1) + rng.normal(0, 0.001),
                                 "id_kl": 1.0, "mara_changed_per_step": 3.0, "numeric_failure": False})
                    if row == "RLOO" and phase == "design":
                        rows.append({**rows[-1], "row": "Ensemble", "id_distinct": 5.0})
    df = pd.DataFrame(rows)
    df["numeric_failure"] = df["numeric_failure"].fillna(False).astype(bool)
    df["degenerate"] = df["id_valid"] < t1.DEGENERATE_VALID
    return df


def test_verdicts_hold_for_a_large_effect_and_fail_for_none():
    v = t1.verdicts_from_runs(_toy_runs(effect=2.0))
    s = t1.claim_summary(v).set_index("claim")
    assert s.loc["diverse", "verdict"] in (verdicts.HOLDS, verdicts.HOLDS_SMALLER)
    assert s.loc["premise", "verdict"] == verdicts.HOLDS  # Base 6.0 vs RLOO ~4.0
    v0 = t1.verdicts_from_runs(_toy_runs(effect=-1.0))
    assert t1.claim_summary(v0).set_index("claim").loc["diverse", "verdict"] == verdicts.FAILS


def test_failed_runs_are_dropped_from_the_pairs_never_averaged():
    runs = _toy_runs(effect=2.0)
    bad = (runs.row == "MARA (fwd)") & (runs.phase == "design") & (runs.seed == 0)
    runs.loc[bad, "numeric_failure"] = True
    runs.loc[bad, "id_distinct"] = 1e9
    d = t1.seed_differences(runs, "RLOO", "MARA (fwd)", "id_distinct")
    assert 0 not in d.index and d.max() < 10
    assert t1.row_summary(runs, cols=("id_distinct",)).loc["MARA (fwd)", "numeric_failures"] == 1


def test_matched_reward_difference_interpolates_without_extrapolating():
    runs = _toy_runs(effect=1.0, spread=0.0)
    d = t1.matched_reward_difference(runs)
    assert len(d) == 5 and np.allclose(d, 1.0, atol=1e-2)
    far = runs.copy()
    far.loc[(far.row == "MARA (fwd)") & (far.phase == "design"), "id_proxy"] = 9.0
    assert t1.matched_reward_difference(far).empty


def test_matched_specs_run_each_control_on_the_side_of_maras_reward():
    """Every other control reaches MARA (fwd)'s reward along its own frontier: a row below it in ID
    reward runs at the smaller frontier beta, a row above at the larger, on every seed; then the
    frontier claim compares at matched reward for every row."""
    task, d = _fake_task(), t1.DESIGNS["cpu"]
    runs = _toy_runs(effect=1.0, spread=0.0)
    design = runs.phase == "design"
    runs.loc[design & (runs.row == "Unlikely"), "id_proxy"] -= 0.05
    runs.loc[design & (runs.row == "MARA (rev)"), "id_proxy"] += 0.05
    specs = t1.matched_specs(d, task, 0.3, runs)
    got = {(sp["row"], sp["beta"]) for sp in specs}
    assert ("Unlikely", 0.05) in got and ("Unlikely", 0.2) not in got
    assert ("MARA (rev)", 0.2) in got and ("MARA (rev)", 0.05) not in got
    assert {sp["phase"] for sp in specs} == {"matched"} and {r for r, _ in got} == set(d.matched_rows)
    # one frontier beta per row and seed, on that seed's side of MARA (fwd)'s reward
    assert sorted((sp["row"], sp["seed"]) for sp in specs) == sorted((r, s) for r in d.matched_rows for s in d.seeds)
    assert t1.matched_specs(d, task, 0.3, runs[runs.row != "MARA (fwd)"]) == []  # nothing to match
    # the frontier claim reads each control's interpolated diversity at MARA (fwd)'s reward
    extra = []
    for sp in specs:
        base = runs[design & (runs.row == sp["row"]) & (runs.seed == sp["seed"])].iloc[0].to_dict()
        step = 1 if sp["beta"] < 0.1 else -1
        extra.append({**base, "phase": "matched", "beta": sp["beta"], "id_proxy": base["id_proxy"] + 0.1 * step,
                      "id_distinct": base["id_distinct"] - 0.5 * step})
    full = pd.concat([runs, pd.DataFrame(extra)], ignore_index=True)
    d_unl = t1.matched_reward_difference(full, control="Unlikely")
    assert len(d_unl) == 5 and np.allclose(d_unl, 1.0 + 0.25, atol=1e-2)  # 0.05 of 0.1 along the frontier
    v = t1.verdicts_from_runs(full)
    fr = v[v.claim == "frontier"].set_index("comparison")
    assert len(fr) == 7 and (fr.n_seeds == 5).all()
    assert t1.verdicts_from_runs(runs).set_index("comparison").loc["MARA (fwd) - Unlikely"].shape  # no matched runs: fewer seeds


# ---------------------------------------------------------------- the committed results
def _committed_verdict_lines() -> list[str]:
    runs = pd.read_csv(RUNS_CSV)
    s = t1.claim_summary(t1.verdicts_from_runs(runs, spread=t1.frozen_plan(t1.DESIGNS["cpu"]).spread_series()))
    return [f"[{r.verdict}] {r.statement}" for r in s.itertuples()]


@pytest.mark.skipif(not RUNS_CSV.exists(), reason="no committed naming_table1_runs.csv")
def test_committed_notebook_prints_the_verdicts_of_the_committed_csv():
    expected = _committed_verdict_lines()
    nb = json.loads(NOTEBOOK.read_text())
    printed = []
    for c in nb["cells"]:
        if c["cell_type"] == "code" and "# verdicts of Table 1 on the naming task" in "".join(c["source"]):
            for o in c.get("outputs", []):
                printed += "".join(o.get("text", "")).splitlines()
    assert printed, "the notebook has no executed verdict cell"
    got = [ln for ln in printed if ln.startswith("[")]
    assert got == expected


def test_planned_mde_at_a_given_spread_equals_the_pilots_own():
    runs = _toy_runs(effect=2.0)
    sd = t1.pilot_spread(runs)
    assert list(sd.index) == list(t1.METRIC_PAPER) and (sd >= 0).all()
    pd.testing.assert_series_equal(t1.planned_mde(runs), t1.planned_mde(runs, spread=sd))
    assert (t1.planned_mde(runs, spread=2 * sd) >= t1.planned_mde(runs)).all()
    assert t1.planned_mde(runs, spread=2 * sd)["id_distinct"] > t1.planned_mde(runs)["id_distinct"]
    with pytest.raises(ValueError, match="no sd for"):
        t1.planned_mde(runs, spread=sd.drop("ood_true"))


def test_a_frozen_plan_belongs_to_one_design(tmp_path):
    runs = _toy_runs(effect=2.0)
    design = t1.DESIGNS["cpu"]
    path = tmp_path / "plan.json"
    plan = t1.freeze_plan(design, runs, "toy pilot", path)
    assert t1.frozen_plan(design, path) == plan
    assert t1.frozen_plan(replace(design, workers=1), path) == plan  # workers do not change a run
    assert t1.frozen_plan(replace(design, steps=50), path) is None  # another design plans from its own pilot
    assert t1.frozen_plan(t1.DESIGNS["quick"], path) is None
    here = t1.pilot_spread(runs)
    assert t1.plan_report(plan, here, 5).endswith("this machine's pilot: the same")
    other = t1.plan_report(plan, 3 * here, 5)
    assert other.endswith("the frozen plan decides") and all(len(ln) <= 200 for ln in other.splitlines())
    assert t1.plan_report(None, here, 5).startswith("no plan is frozen for this design")
    with pytest.raises(FileNotFoundError, match="restore it from git"):
        t1.frozen_plan(design, tmp_path / "missing.json")


@pytest.mark.skipif(not RUNS_CSV.exists(), reason="no committed naming_table1_runs.csv")
def test_the_frozen_plan_is_the_committed_runs_pilot():
    """The cpu design's frozen spread is its committed run's pilot (seeds disjoint from the design's),
    so on the committed path the notebook's gates are the ones that pilot planned."""
    plan = t1.frozen_plan(t1.DESIGNS["cpu"])
    assert plan is not None
    committed = t1.pilot_spread(pd.read_csv(RUNS_CSV))
    pd.testing.assert_series_equal(plan.spread_series(), committed)
