"""Notebook 05's claims (mdkl.tasks.onetwo_claims) on hand-built per-run tables whose verdicts are
known: every claim can hold and can fail, collapses are never averaged in or waived; the headline
pools every beta per KL, the per-beta view is the same rules cell by cell."""

import math

import numpy as np
import pandas as pd
import pytest

from mdkl.tasks import onetwo_claims as oc

DESIGN = oc.ClaimDesign(margin=0.1, collapse_entropy=0.05, reward_floor=0.2,
                        planning_sd={"reverse/vanilla": 0.06, "reverse/MARA": 0.03,
                                     "forward/vanilla": 0.06, "forward/MARA": 0.03}, source="test")
Q_REF = 0.95
H_REF = float(oc.binary_entropy(Q_REF))


def table(vanilla_h, mara_h, kl="reverse", beta=0.03, collapse=(), dips=(), mara_changed=50.0, failed=()):
    rows = []
    for meth, hs in (("vanilla", vanilla_h), ("MARA", mara_h)):
        for seed, h in enumerate(hs):
            rows.append(dict(kl=kl, method=meth, beta=beta, seed=seed, H=h, H_prev=h, p1_valid=0.99 if h < 0.3 else 0.5,
                             target_p1=Q_REF, hv=h, reward=1.0, reward_start=0.9,
                             reward_collapse=(meth, seed) in collapse, numeric_failure=(meth, seed) in failed,
                             min_batch_reward=0.1 if (meth, seed) in dips else 0.6,
                             mara_changed=mara_changed if meth == "MARA" else 0.0))
    return pd.DataFrame(rows)


def verdicts(runs):
    c = oc.cell_claims(runs, DESIGN)
    return {(r.claim, r.method): r.verdict for r in c.itertuples()}, c


def test_the_paper_holds_on_collapsed_vanilla_and_uniform_mara():
    v, c = verdicts(table([0.01, 0.02, 0.005, 0.01, 0.03], [0.69, 0.68, 0.685, 0.69, 0.692]))
    assert v["one answer", "vanilla"] == "holds"
    assert v["vanilla target", "vanilla"] == "FAILS"  # collapsed runs are not the reference's split
    assert v["MARA target", "MARA"] == "holds"
    assert v["front", "MARA"] == "holds"
    assert v["no collapse", "vanilla"] == v["no collapse", "MARA"] == "holds"
    assert "5 of 5 runs end below 0.05 nats (5 on '1', 0 on '2')" in c[c.claim == "one answer"].measured.iloc[0]


def test_remark_4_3_holds_and_the_paper_fails_when_vanilla_keeps_the_reference_split():
    jitter = np.array([-0.02, 0.01, 0.0, 0.015, -0.01])
    v, _ = verdicts(table(list(H_REF + jitter), list(math.log(2) - 0.4 + jitter)))
    assert v["one answer", "vanilla"] == "FAILS"
    assert v["vanilla target", "vanilla"] == "holds"
    assert v["MARA target", "MARA"] == "FAILS"
    assert v["front", "MARA"] == "holds, smaller than the paper's"  # +0.09, significant, far below the predicted +0.49
    flat = table(list(H_REF + jitter), list(H_REF + jitter[::-1]))
    assert verdicts(flat)[0]["front", "MARA"] == "FAILS"  # no significant gain and +0.49 ruled out


def test_gates_apply_to_would_be_holds():
    v, _ = verdicts(table([0.01] * 5, [0.69] * 4 + [0.68], mara_changed=0.0))
    assert v["MARA target", "MARA"] == "not tested (did not act)"
    assert v["front", "MARA"] == "not tested (did not act)"
    runs = table([0.01] * 5, [0.69] * 5)
    runs["reward_start"] = 1.0  # the control never improved: nothing trained
    assert verdicts(runs)[0]["front", "MARA"] == "not tested (control did not train)"


def test_still_moving_is_shown_and_only_stops_the_convergence_claim():
    runs = table([0.01] * 5, [0.40, 0.42, 0.45, 0.41, 0.43])
    runs.loc[runs.method == "MARA", "H_prev"] = runs.loc[runs.method == "MARA", "H"] - 0.35
    v, c = verdicts(runs)
    assert v["MARA target", "MARA"] == "not tested (still moving toward the target)"
    assert "still moving (5 of 5): seed 0, 1, 2, 3, 4" in c[c.claim == "MARA target"].measured.iloc[0]
    assert v["one answer", "vanilla"] == "holds"


def test_a_collapse_is_left_out_named_and_fails_its_claim():
    v, c = verdicts(table([0.01] * 5, [0.69] * 5, collapse={("MARA", 2)}, dips={("vanilla", 4)}))
    assert v["no collapse", "MARA"] == "FAILS" and v["no collapse", "vanilla"] == "FAILS"
    line = c[c.claim == "MARA target"].measured.iloc[0]
    assert "left out (reward collapse): seed 2" in line and "[0.69, 0.69, 0.69, 0.69]" in line
    assert "beta 0.03 seed 4" in c[(c.claim == "no collapse") & (c.method == "vanilla")].measured.iloc[0]


def test_holm_runs_over_the_front_claims_and_bad_tables_are_refused():
    runs = pd.concat([table([0.01, 0.02, 0.005, 0.01, 0.03], [0.69, 0.6, 0.685, 0.5, 0.692], beta=b)
                      for b in (0.001, 0.03)])
    _, c = verdicts(runs)
    f = c[c.claim == "front"]
    assert len(f) == 2 and (f.p_holm >= f.p).all() and "Holm" in f.measured.iloc[0]
    with pytest.raises(ValueError, match="lacks"):
        oc.headline_claims(runs.drop(columns="hv"), DESIGN)


def test_planning_pools_the_spread_over_betas():
    runs = pd.DataFrame({"kl": "reverse", "method": "MARA", "beta": [0.1] * 3 + [0.2] * 3, "H": [0, 1, 2, 0, 0, 0]})
    assert oc.planning_from_pilot(runs)["reverse/MARA"] == pytest.approx(math.sqrt((1.0 * 2 + 0.0 * 2) / 4))


def test_report_keeps_each_verdict_line_whole_and_wraps_the_detail():
    runs = table([0.01] * 5, [0.40, 0.42, 0.45, 0.41, 0.43])
    runs.loc[runs.method == "MARA", "H_prev"] = runs.loc[runs.method == "MARA", "H"] - 0.35
    _, c = verdicts(runs)
    for claim in oc.CLAIMS:
        lines = oc.report(c, claim, width=60).splitlines()
        rows = c[c.claim == claim]
        assert [s for s in lines if s.startswith("[")] == [f"[{r.verdict}] {r.statement}" for r in rows.itertuples()]
        detail = [s for s in lines if not s.startswith("[")]
        assert detail and all(len(s) <= 60 for s in detail) and detail[0].startswith("    measured: ")
        assert " ".join(s.strip() for s in detail) == " ".join(rows.measured)  # nothing lost in the wrapping
    with pytest.raises(ValueError, match="unknown claim"):
        oc.report(c, "everything")


def test_verdict_grid_has_one_cell_per_claim():
    runs = pd.concat([table([0.01] * 5, [0.69] * 5, beta=b, kl=kl) for b in (0.001, 0.03) for kl in ("reverse", "forward")])
    _, c = verdicts(runs)
    g = oc.verdict_grid(c)
    assert list(g.columns) == ["0.001", "0.03", "every beta"]
    assert len(g) == 4 * 2 + 2 * 2  # claims 1-4 per KL, the collapse claim per method and KL
    assert (g != "").sum().sum() == len(c)
    assert g.loc[("3. MARA -> uniform split", "forward"), "0.03"] == "holds"
    assert g.loc[("5. no reward collapse, vanilla", "reverse"), "every beta"] == "holds"
    moving = table([0.01] * 5, [0.40, 0.42, 0.45, 0.41, 0.43])
    moving.loc[moving.method == "MARA", "H_prev"] = moving.loc[moving.method == "MARA", "H"] - 0.35
    _, c = verdicts(moving)
    assert oc.verdict_grid(c).loc[("3. MARA -> uniform split", "reverse"), "0.03"] == "not tested"
    assert oc.verdict_grid(c, short=False).loc[("3. MARA -> uniform split", "reverse"), "0.03"] == \
        "not tested (still moving toward the target)"


def test_a_minority_of_still_moving_runs_stays_in_the_mean_and_is_named():
    runs = table([0.01] * 5, [0.69, 0.69, 0.69, 0.40, 0.45])
    mara = runs.method == "MARA"
    runs.loc[mara & (runs.seed >= 3), "H_prev"] = runs.loc[mara & (runs.seed >= 3), "H"] - 0.35
    v, c = verdicts(runs)
    line = c[c.claim == "MARA target"].measured.iloc[0]
    assert v["MARA target", "MARA"] != "not tested (still moving toward the target)"
    assert "still moving (2 of 5): seed 3, 4" in line and "over 5 runs" in line


def test_the_headline_pools_every_beta_per_kl_and_pairs_by_beta_and_seed():
    runs = pd.concat([table([0.01, 0.02, 0.005, 0.01, 0.03], [0.69, 0.68, 0.685, 0.69, 0.692], beta=b, kl=kl,
                            collapse={("MARA", 2)} if b == 0.03 else ())
                      for b in (0.001, 0.03) for kl in ("reverse", "forward")])
    c = oc.headline_claims(runs, DESIGN)
    assert len(c) == 2 * 5  # five claims per KL direction
    assert c.beta.isna().all()
    assert set(c.statement.str.extract(r"(every beta \(2 betas pooled\)|\(every beta\))")[0]) == \
        {"every beta (2 betas pooled)", "(every beta)"}
    one = c[(c.claim == "one answer") & (c.kl == "reverse")].iloc[0]
    assert one.verdict == "holds" and "10 of 10 runs" in one.measured and "per beta 0.001: 5/5, 0.03: 5/5" in one.measured
    front = c[(c.claim == "front") & (c.kl == "reverse")].iloc[0]
    assert "9 (beta, seed) pairs" in front.measured and "beta 0.03 seed 2" in front.measured
    coll = c[c.claim == "no collapse"]
    assert (coll.method == "any").all() and (coll.verdict == "FAILS").all()
    assert coll.statement.iloc[0] == "no vanilla or MARA run's reward collapses, reverse KL (every beta)"
    assert "MARA beta 0.03 seed 2" in coll.measured.iloc[0]
    g = oc.verdict_grid(c)
    assert list(g.columns) == ["every beta"] and len(g) == 10
    # the per-beta view of the same table: four claims per KL and beta, the collapse claim per method
    assert len(oc.cell_claims(runs, DESIGN)) == 2 * 2 * 4 + 2 * 2


def test_numerically_failed_runs_are_named_and_left_out_never_averaged():
    """A run whose loss or gradient norm left its bound (mdkl.numerics) is left out of claims 1-4 and
    named; the reward-collapse claim still counts it."""
    good = [0.69, 0.68, 0.685, 0.69, 0.692]
    v, c = verdicts(table([0.01] * 5, good[:4] + [0.0], failed=[("MARA", 4)]))
    assert v["MARA target", "MARA"] == "holds"  # seed 4's H = 0 would have failed it
    line = c[c.claim == "MARA target"].measured.iloc[0]
    assert "over 4 runs" in line and "left out (numerically failed): seed 4" in line
    assert "left out (numerically failed): seed 4" in c[c.claim == "front"].measured.iloc[0]
    assert v["no collapse", "MARA"] == "holds"
    v, _ = verdicts(table([0.01] * 5, good[:4] + [0.0]))
    assert v["MARA target", "MARA"] != "holds"  # the same run, not flagged, is averaged in
    with pytest.raises(ValueError, match="numeric_failure"):
        oc.headline_claims(table([0.01] * 5, good).drop(columns="numeric_failure"), DESIGN)
