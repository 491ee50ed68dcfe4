"""The second chemistry reward analogue (v2): the weighted geometric mean against hand-computed rows
(zero components, zero weights, NaN), its bad input, the classifier-log-odds potency, the frozen files
of both analogues (v1's meaning and version unchanged), the 'rates+narrowing' choice rule on synthetic
numbers, the conservative planning spread, and the MOSES screens' consistency with the scorer."""

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from mdkl.chem import calibration as cc, calibration_v2 as cv2, frozen as chem_frozen, regime
from mdkl.chem.aggregation import aggregate, check_aggregator
from mdkl.chem.reward import RewardConfig, Scorer, aggregate_reward, potency, score_smiles

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
HALOPERIDOL = "O=C(CCCN1CCC(CC1)(O)c2ccc(Cl)cc2)c3ccc(F)cc3"
V2 = dict(aggregator="geomean", potency_transform="logit_sigmoid", potency_floor=-2.0, potency_ceiling=2.0)


# ---------------------------------------------------------------------------------------------
# aggregation
# ---------------------------------------------------------------------------------------------
def test_geometric_mean_and_product_on_hand_computed_rows():
    c = np.array([[0.5, 0.5, 1.0, 1.0],      # product 0.25; geometric mean 0.25 ** (1/4)
                  [0.9, 0.8, 1.0, 0.5],      # 0.36; 0.36 ** (1/4)
                  [0.0, 0.9, 1.0, 1.0],      # a zero component: 0 under both
                  [0.9, np.nan, 1.0, 1.0]])  # NaN: reward 0, flagged
    r, bad = aggregate(c, "product")
    np.testing.assert_allclose(r, [0.25, 0.36, 0.0, 0.0], rtol=1e-15)
    g, bad_g = aggregate(c, "geomean")
    np.testing.assert_allclose(g, [0.25 ** 0.25, 0.36 ** 0.25, 0.0, 0.0], rtol=1e-15)
    assert g[2] == 0.0 and bad.tolist() == bad_g.tolist() == [False, False, False, True]
    assert g[0] == pytest.approx(0.7071067811865476) and g[1] == pytest.approx(0.7745966692414834)
    # weights: normalized (any positive scale gives the same), a weight-0 component does not enter (0 ** 0 = 1)
    w, _ = aggregate(np.array([[0.5, 0.8, 1.0, 0.0]]), "geomean", (2, 1, 1, 0))
    assert w[0] == pytest.approx(0.5 ** 0.5 * 0.8 ** 0.25)
    np.testing.assert_array_equal(aggregate(c, "geomean", (3, 3, 3, 3))[0], g)
    assert aggregate(np.zeros((0, 4)), "geomean")[0].shape == (0,)


def test_default_aggregation_is_v1s_plain_product():
    assert RewardConfig().aggregator == "product" and RewardConfig().weights == (1.0, 1.0, 1.0, 1.0)
    c = np.array([[0.5, 0.5, 1, 1], [0.9, np.nan, 1, 1]])
    r, bad = aggregate_reward(c)  # the call v1's scorer made, same numbers as before
    assert r.tolist() == [0.25, 0.0] and bad.tolist() == [False, True]


@pytest.mark.parametrize("agg, weights, match", [
    ("mean", None, "aggregator='mean': use one of"), ("geomean", (0, 0, 0, 0), "sum to a positive number"),
    ("geomean", (1, -1, 1, 1), "finite weights >= 0"), ("geomean", (1, 1, 1), "one weight per component"),
    ("geomean", (1, float("nan"), 1, 1), "finite weights"), ("product", (2, 1, 1, 1), "plain product has no weights"),
    ("geomean", "abcd", "weights="), ("geomean", 3, "one number per component"),
])
def test_aggregator_bad_input_names_the_fix(agg, weights, match):
    with pytest.raises(ValueError, match=match):
        aggregate(np.ones((2, 4)), agg, weights)
    if weights is not None and not isinstance(weights, (str, int)):
        with pytest.raises(ValueError, match=match):
            RewardConfig(aggregator=agg, weights=weights)
    with pytest.raises(ValueError, match="2-D"):
        aggregate(np.ones(4), "geomean")


def test_reward_config_weights_from_a_list_become_a_tuple():
    cfg = RewardConfig(aggregator="geomean", weights=[2, 1, 1, 1])
    assert cfg.weights == (2.0, 1.0, 1.0, 1.0) and hash(cfg) == hash(RewardConfig(aggregator="geomean", weights=(2, 1, 1, 1)))
    assert check_aggregator("geomean", [1, 1], 2) == (1.0, 1.0)


def test_scorer_uses_the_configs_aggregator_and_never_crashes_on_bad_smiles():
    cfg = RewardConfig("synth", **V2)
    with Scorer(cfg, n_workers=1) as sc:
        out = sc.score([ASPIRIN, HALOPERIDOL, "", "C1CC", None, "not a smiles"])
        assert sc.n_invalid == 4 and sc.n_calls == 6
    comp = out["components"][:2]
    np.testing.assert_allclose(out["reward"][:2], np.prod(comp, axis=1) ** 0.25, rtol=1e-12)
    assert (out["reward"][2:] == 0).all() and out["valid"].tolist() == [True, True] + [False] * 4
    assert out["reward"][1] > 0.85 > out["reward"][0]  # haloperidol: DRD2-active; aspirin: not
    np.testing.assert_allclose(comp, score_smiles([ASPIRIN, HALOPERIDOL], cfg))


# ---------------------------------------------------------------------------------------------
# potency on the classifier's log-odds
# ---------------------------------------------------------------------------------------------
def test_logit_sigmoid_potency():
    odds = np.array([-3.0, -2.0, 0.0, 1.0, 2.0])
    p = 10 ** odds / (1 + 10 ** odds)
    got = potency(np.r_[p, 0.0, 1.0, np.nan], -2, 2, "logit_sigmoid", 0.5)
    want = 1 / (1 + 10 ** (-10 * 0.5 * odds / 4))  # REINVENT's sigmoid of the log-odds, centred at P = 0.5
    np.testing.assert_allclose(got[:5], want, rtol=1e-12)
    assert got[2] == pytest.approx(0.5) and got[5] == pytest.approx(0.0) and got[6] == pytest.approx(1.0)
    assert np.isnan(got[7]) and np.all(np.diff(got[:5]) > 0)
    # centred at a confident call: P = 0.91 (log-odds 1) scores 0.5
    assert potency([10 / 11], -1, 3, "logit_sigmoid", 0.5)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="logit_sigmoid.*-7 <= potency_floor"):
        RewardConfig(potency_transform="logit_sigmoid", potency_floor=-8, potency_ceiling=2)
    with pytest.raises(ValueError, match="potency_floor < potency_ceiling <= 0"):
        RewardConfig(potency_transform="sigmoid", potency_floor=-2, potency_ceiling=2)


# ---------------------------------------------------------------------------------------------
# frozen files: v1 unchanged, v2's own file
# ---------------------------------------------------------------------------------------------
def test_v1_frozen_file_keeps_its_version_and_meaning():
    v1 = chem_frozen.load_calibration(chem_frozen.calibration_path("cpu"))
    assert v1.version == "v1-476d59f810"  # the hash v1 was frozen with (the aggregator is not in it at 'product')
    assert all(v1.reward(t).aggregator == "product" for t in ("synth", "amide"))
    assert "aggregator" not in json.loads(chem_frozen.calibration_path("cpu").read_text())["synth"]


def _cal(**kw):
    syn = RewardConfig("synth", sa_good=2.5, sa_bad=3.0, **V2)
    d = dict(label="v2", profile="cpu", prior="chem-prior-x", lr=5e-4, synth=syn,
             amide=replace(syn, task="amide", sa_good=3.5, sa_bad=4.5), seeds=(2000, 2001, 2002))
    return chem_frozen.RewardCalibration(**{**d, **kw})


def test_v2_file_round_trip_states_its_aggregator_and_weights(tmp_path):
    cal = replace(_cal(), planning_sd={"synth": 0.3, "amide": 0.5},
                  planning={"bound": "upper 90%", "sd_point": {"synth": 0.1, "amide": 0.2}})
    path = chem_frozen.save_calibration(cal, tmp_path / "chem_reward_cpu_v2.json")
    d = json.loads(path.read_text())
    assert d["synth"]["aggregator"] == "geomean" and d["synth"]["weights"] == [1.0, 1.0, 1.0, 1.0]
    back = chem_frozen.load_calibration(path)
    assert back == cal and back.planning["sd_point"]["amide"] == 0.2
    other = replace(_cal(), synth=replace(_cal().synth, weights=(2, 1, 1, 1)))
    assert other.version != cal.version and cal.version == _cal().version  # weights are a parameter, planning is not
    d["synth"]["weights"] = [2, 1, 1, 1]  # edited after freezing
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="frozen once calibrated"):
        chem_frozen.load_calibration(path)


def test_v2_path_and_bad_analogue(tmp_path, monkeypatch):
    assert chem_frozen.calibration_path("cpu", "v2").name == "chem_reward_cpu_v2.json"
    assert chem_frozen.calibration_path("quick", "v2") == chem_frozen.calibration_path("cpu", "v2")
    with pytest.raises(ValueError, match="analogue='v3'"):
        chem_frozen.calibration_path("cpu", "v3")
    monkeypatch.setattr(chem_frozen, "calibration_path", lambda profile=None, analogue="v1": tmp_path / "none.json")
    with pytest.raises(ValueError, match="python -m mdkl.chem.calibration_v2 --profile cpu"):
        chem_frozen.load_for_prior("cpu", "chem-prior-x", "v2")
    path = chem_frozen.save_calibration(_cal(prior="chem-prior-a"), tmp_path / "c.json")
    monkeypatch.setattr(chem_frozen, "calibration_path", lambda profile=None, analogue="v1": path)
    with pytest.raises(ValueError, match="made on prior chem-prior-a.*calibration_v2"):
        chem_frozen.load_for_prior("cpu", "chem-prior-b", "v2")  # a reward config from another prior


# ---------------------------------------------------------------------------------------------
# the 'rates+narrowing' rule on synthetic numbers
# ---------------------------------------------------------------------------------------------
def _row(task, lo, hi, stock, r80, r85, circles, med_p, lr=5e-4, seed=2000, sa=(2.5, 3.0)):
    return {"stage": "coarse", "task": task, "potency_floor": lo, "potency_ceiling": hi, "sa_good": sa[0],
            "sa_bad": sa[1], "stock_max_heavy_atoms": stock, "lr": lr, "seed": seed,
            "synth_fail_share": 0.4 if task == "synth" else float("nan"), "rate_0.80": r80, "rate_0.85": r85,
            "circles_0.85": circles, "intdiv1_0.85": 0.7, "circles_0.80": circles * 2, "intdiv1_0.80": 0.75,
            "median_p_0.80": med_p, "median_p_0.85": med_p}


def test_task_miss_and_assess_by_hand():
    row = {"rate_0.80": 0.6569 / 2, "rate_0.85": 0.1614, "circles_0.85": 14}
    assert regime.task_miss(row, "synth", "rates") == pytest.approx(math.log(2))
    assert regime.task_miss(row, "synth", "rates+narrowing") == pytest.approx(2 * math.log(2) / 3)
    with pytest.raises(ValueError, match="regime='x'"):
        regime.task_miss(row, "synth", "x")
    s = _row("synth", -2, 2, 14, 0.6, 0.16, 8, 0.9)
    a = _row("amide", -2, 2, 14, 0.5, 0.1, 7, 0.9)
    out = regime.assess({"potency": (-2, 2), "lr": 5e-4, "synth": s, "amide": a}, cv2.GRID)
    assert out["in_regime"] and all(out["checks"].values())
    out = regime.assess({"potency": (-2, 2), "lr": 5e-4, "synth": s, "amide": {**a, "circles_0.85": 40}}, cv2.GRID)
    assert not out["in_regime"] and out["checks"]["circles_0.85"] is False and out["checks"]["rates_0.80"]


def test_choose_rates_and_narrowing_skips_points_whose_potency_does_not_bind():
    rows = [  # potency (-2, 2): close to the paper on every number but its hits are inactive (median P 0.2)
        _row("synth", -2, 2, 14, 0.6, 0.16, 7, 0.2), _row("amide", -2, 2, 14, 0.5, 0.11, 8, 0.2),
        _row("amide", -2, 2, 18, 0.5, 0.11, 8, 0.2),
        # potency (-1, 3): binds; stock 18 closer than 14
        _row("synth", -1, 3, 14, 0.2, 0.15, 7, 0.95), _row("amide", -1, 3, 14, 0.05, 0.04, 3, 0.9),
        _row("amide", -1, 3, 18, 0.12, 0.10, 9, 0.9)]
    table = pd.DataFrame(rows)
    c = cc.choose(table, cv2.GRID)
    assert c["potency"] == (-1, 3) and c["amide"]["stock_max_heavy_atoms"] == 18
    assert c["checks"]["potency_binds"] and not c["checks"]["rates_0.80"] and not c["in_regime"]
    want = max(regime.task_miss(c["synth"], "synth", "rates+narrowing"), regime.task_miss(c["amide"], "amide", "rates+narrowing"))
    assert c["miss"] == pytest.approx(want)
    # v1's rule on the same numbers ignores the potency and the circles
    assert cc.choose(table, replace(cv2.GRID, regime="rates", min_median_p=0.0))["potency"] == (-2, 2)
    with pytest.raises(ValueError, match="median P\\(active\\) >= 0.5"):
        cc.choose(table.assign(**{"median_p_0.85": 0.3}), cv2.GRID)
    assert "circles" in cc.describe_choice(c) and "median P(active)" in cc.describe_choice(c)


@pytest.mark.parametrize("kw, match", [(dict(regime="x"), "regime='x'"), (dict(min_median_p=1.0), "min_median_p")])
def test_bad_v2_grid(kw, match):
    with pytest.raises(ValueError, match=match):
        replace(cv2.GRID, **kw)


def test_v2_grid_follows_v1s_rules():
    g = cv2.GRID
    seeds = set(g.seeds) | set(g.spread_seeds)
    assert g.n_runs == 10 and g.lr == (5e-4,) and not g.lr_check and min(seeds) >= chem_frozen.EVAL_SEEDS and not seeds & {1000, 1001, 1002, 1500, 1501}
    assert g.regime == "rates+narrowing" and g.min_median_p == 0.5 and g.reward_calls == 10_000
    assert all(r.aggregator == "geomean" and r.weights == (1.0,) * 4 and r.potency_transform == "logit_sigmoid"
               for _, r in g.rewards())


def test_conservative_planning_spread():
    from scipy import stats

    cal = _cal()
    rows = [{"task": t, **{k: getattr(cal.reward(t), k) for k in ("potency_floor", "potency_ceiling", "sa_good", "sa_bad",
                                                                  "stock_max_heavy_atoms")},
             "lr": cal.lr, "seed": s, "yield_0.85": y} for t in ("synth", "amide")
            for s, y in zip((2000, 2001, 2002), (100, 200, 150))]
    up, rec = cv2.spread_upper_bound(pd.DataFrame(rows), cal)
    sd = np.log([100, 200, 150]).std(ddof=1)
    assert rec["sd_point"]["synth"] == pytest.approx(sd) and rec["runs"]["amide"] == 3
    assert up["synth"] == pytest.approx(sd * math.sqrt(2 / stats.chi2.ppf(0.1, 2))) and up["amide"] > 3 * sd
    with pytest.raises(ValueError, match="level=1.5"):
        cv2.spread_upper_bound(pd.DataFrame(rows), cal, 1.5)


# ---------------------------------------------------------------------------------------------
# MOSES screens: the same numbers as the scorer
# ---------------------------------------------------------------------------------------------
def test_moses_screens_match_the_scorer():
    from mdkl.chem import reward as chem_reward
    from mdkl.chem.smiles import mol_from_smiles

    smi = [ASPIRIN, HALOPERIDOL, "CCN(CC)C(=O)c1ccccc1", "Cc1ccc(NC(=O)c2ccccc2)cc1"]
    mols = [mol_from_smiles(s) for s in smi]
    stock = chem_reward.amide_stock(RewardConfig("amide"))
    raw = pd.DataFrame({"smiles": smi, "p": chem_reward.drd2_proba(mols), "qed": [chem_reward.qed(m) for m in mols],
                        "hbd": [chem_reward.n_hbd(m) for m in mols], "sa": [chem_reward.sa_score(m) for m in mols],
                        "amide_14": [chem_reward.amide_solved(m, stock, max_heavy_atoms=14) for m in mols]})
    for cfg in (RewardConfig("synth", sa_good=2.5, sa_bad=3.0, **V2), RewardConfig("amide", **V2)):
        np.testing.assert_allclose(cv2.components_from_raw(raw, cfg), score_smiles(smi, cfg, stock), rtol=1e-12)
    scr = cv2.moses_screens({"s": RewardConfig("synth", **V2)}, raw)
    assert scr.loc[0, "n_0.85"] == 1 and scr.loc[0, "median_p_0.85"] == pytest.approx(raw.p[1])  # haloperidol only
    with pytest.raises(ValueError, match="stock rule 18"):
        cv2.components_from_raw(raw, RewardConfig("amide", stock_max_heavy_atoms=18, **V2))


# ---------------------------------------------------------------------------------------------
# the hit profile of a run (narrowing, and whether the hits are classifier-active)
# ---------------------------------------------------------------------------------------------
def test_hit_profile_on_a_hand_made_log():
    from mdkl.chem import metrics
    from mdkl.chem.reward import drd2_proba
    from mdkl.chem.smiles import mol_from_smiles

    other = "CCN(CC)C(=O)c1ccccc1"
    log = pd.DataFrame({"canonical": [HALOPERIDOL, None, ASPIRIN, HALOPERIDOL, other, ASPIRIN],
                        "reward": [0.9, 0.0, 0.82, 0.9, 0.5, 0.82]})
    prof = regime.hit_profile(log)
    p = drd2_proba([mol_from_smiles(s) for s in (HALOPERIDOL, ASPIRIN)])
    assert prof["median_p_0.85"] == pytest.approx(p[0]) and prof["median_p_0.80"] == pytest.approx(np.median(p))
    assert prof["active_share_0.80"] == 0.5 and prof["active_share_0.85"] == 1.0
    assert prof["circles_0.85"] == 1 and prof["circles_0.80"] == metrics.n_circles([HALOPERIDOL, ASPIRIN])
    assert prof["intdiv1_0.80"] == pytest.approx(metrics.int_div1([HALOPERIDOL, ASPIRIN]))
    none = regime.hit_profile(log.assign(reward=0.1))
    assert none["circles_0.85"] == 0 and np.isnan(none["median_p_0.80"]) and np.isnan(none["intdiv1_0.85"])


def test_fingerprint_metrics_equal_the_smiles_ones():
    from mdkl.chem import metrics
    from mdkl.chem.smiles import mol_from_smiles

    smi = [ASPIRIN, HALOPERIDOL, "c1ccccc1CCO", "CCCCCCCCCC(=O)O", "C1CCNCC1"]
    mols = [mol_from_smiles(s) for s in smi]
    assert metrics.int_div1_of_fps(metrics.morgan_fps(mols, 2, 1024)) == metrics.int_div1_both(smi)
    assert metrics.n_circles_of_fps(metrics.morgan_fps(mols, 2, 2048)) == metrics.n_circles(smi)
    assert metrics.n_circles_of_fps(np.zeros((0, 2048), np.uint8)) == 0


# ---------------------------------------------------------------------------------------------
# the committed v2 calibration
# ---------------------------------------------------------------------------------------------
def test_committed_v2_file_is_its_rules_choice_on_its_committed_runs():
    from mdkl.runtime import RESULTS_DIR

    cal = chem_frozen.load_calibration(chem_frozen.calibration_path("cpu", "v2"))
    v1 = chem_frozen.load_calibration(chem_frozen.calibration_path("cpu", "v1"))
    assert cal.label == "v2" and cal.version != v1.version and cal.prior_recipe == v1.prior_recipe
    assert all(cal.reward(t).aggregator == "geomean" and cal.reward(t).potency_transform == "logit_sigmoid"
               for t in ("synth", "amide"))
    table = pd.read_csv(RESULTS_DIR / "chem_cpu_v2_calibration_runs.csv")
    assert len(table) == cv2.GRID.n_runs and set(table.seed) == set(cal.seeds)
    coarse = table[table.stage == "coarse"]
    choice = cc.choose_lr(coarse, cc.choose(coarse, cv2.GRID), cv2.GRID)
    own = cc.calibration_from_choice(choice, cv2.GRID, "v2", cal.profile, cal.prior, cal.prior_recipe)
    assert own.version == cal.version
    # the conservative planning spread: the upper 90% bound of the chosen point's sd, recorded beside it
    up, rec = cv2.spread_upper_bound(table, cal)
    assert cal.planning_sd == pytest.approx(up) and cal.planning["sd_point"] == pytest.approx(rec["sd_point"])
    assert all(cal.planning_sd[t] > cal.planning["sd_point"][t] for t in ("synth", "amide"))
    # v2's hits are classifier-active; v1's were not
    reg = pd.read_csv(RESULTS_DIR / "chem_cpu_v1_v2_regime.csv")
    v2 = reg[reg.analogue == "v2"].set_index("task")
    want = cv2.regime_table({"v2": cc.chosen_runs(table, cal)})
    want = want[want.analogue == "v2"].set_index("task")
    np.testing.assert_allclose(v2[["rate_0.80", "rate_0.85", "circles_0.85", "median_p_0.85"]].to_numpy(),
                               want[["rate_0.80", "rate_0.85", "circles_0.85", "median_p_0.85"]].to_numpy())
    assert (v2["median_p_0.80"] >= 0.5).all() and (reg[reg.analogue == "v1"]["median_p_0.85"] < 0.05).all()
    screens = pd.read_csv(RESULTS_DIR / "chem_cpu_v2_moses_screens.csv")
    grid_rows = screens[screens.reward.str.startswith("v2 grid")]
    assert (grid_rows["active_share_0.80"].dropna() == 1.0).all() and (grid_rows["pass_0.80"] < 0.01).all()
