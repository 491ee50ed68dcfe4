"""The chemistry prior's cache-key isolation, REINVENT 4's duplicate rule and MARA's activity
statistics in run_rl, the saturating potency transform, and the frozen, versioned reward
calibration (mdkl.chem.calibration) on a tiny prior and a fake scorer (seconds, no RDKit runs)."""

import json
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from mdkl import runtime
from mdkl.chem import calibration as cc, frozen as chem_frozen, prior as chem_prior
from mdkl.chem.reinvent import RLConfig, in_batch_duplicates, run_rl
from mdkl.chem.prior import SmilesLSTM, Vocabulary
from mdkl.chem.reward import RewardConfig, potency

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCN", "CCCl", "OCCO", "C1CC1", "CN"]


def test_prior_cache_key_ignores_the_rl_loop_and_the_rewards():
    deps = runtime.module_dependencies(chem_prior.train_prior)
    assert "mdkl.chem.reinvent" not in deps and "mdkl.chem.reward" not in deps
    assert deps == ["mdkl.chem.prior", "mdkl.chem.smiles", "mdkl.machine", "mdkl.runtime"]


def test_in_batch_duplicates_marks_later_repeats_only():
    assert in_batch_duplicates(["A", "B", "A", None, None, "A", "B"]).tolist() == [
        False, False, True, False, False, True, True]
    assert in_batch_duplicates([]).tolist() == []


class _Fake:
    """Reward from a hash of the string (deterministic), canonical = the string itself; the
    reward scale and the synth term depend on the RewardConfig so calibration has something to find."""

    def __init__(self, cfg: RewardConfig = RewardConfig()):
        self.cfg = cfg
        self.reset()

    def reset(self):
        self.n_calls = self.n_invalid = self.n_nan = 0

    def score(self, smiles):
        scale = 1.0 + self.cfg.potency_ceiling  # a lower ceiling saturates earlier: fewer hits
        if self.cfg.task == "amide":
            scale *= self.cfg.stock_max_heavy_atoms / 14
        can = [s if s else None for s in smiles]
        r = np.array([min(1.0, scale * (zlib.crc32(s.encode()) % 1000) / 999) if s else 0.0 for s in smiles])
        synth = np.array([float(len(s) <= 4 * self.cfg.sa_good) for s in smiles])
        comp = np.stack([r, np.ones_like(r), np.ones_like(r), synth], 1)
        self.n_calls += len(smiles)
        return {"reward": r, "canonical": can, "valid": np.array([c is not None for c in can]), "components": comp}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    v = Vocabulary.from_smiles(SMILES)
    return SmilesLSTM(len(v), 8, 16, 1), v


class _Repeat(_Fake):
    """Every batch: the same good molecule twice (0.9), then distinct poor ones (0.1)."""

    def score(self, smiles):
        out = super().score(["CC", "CC"] + [f"C{i}N" for i in range(len(smiles) - 2)])
        out["reward"][:] = 0.1
        out["reward"][:2] = 0.9
        return out


def test_duplicates_zero_scores_repeats_0_and_counts_them_as_calls(tiny):
    model, v = tiny
    base = dict(reward_calls=20, batch_size=10, seed=3, mara="none")
    cached = run_rl(model, v, _Repeat(), RLConfig(duplicates="cached", **base))
    zero = run_rl(model, v, _Repeat(), RLConfig(duplicates="zero", **base))
    for out in (cached, zero):
        assert len(out["log"]) == 20 and out["anchors"]["duplicates"] == 2
        assert out["log"].duplicate.tolist() == ([False, True] + [False] * 8) * 2
    assert (zero["log"].reward == cached["log"].reward).all()  # the molecule's reward is logged either way
    assert zero["log"].reward_used[zero["log"].duplicate].eq(0).all()
    np.testing.assert_allclose(cached["log"].reward_used[cached["log"].duplicate], 0.9, rtol=1e-6)
    assert cached["anchors"]["batches_with_2plus"] == 2 and zero["anchors"]["batches_with_2plus"] == 0


def test_mara_activity_statistics(tiny):
    model, v = tiny
    out = run_rl(model, v, _Repeat(), RLConfig(reward_calls=30, batch_size=10, mara="alg1", tau=0.85, duplicates="cached"))
    a, log = out["anchors"], out["log"]
    changed = log.reward_used != log.reward
    assert a["augmented"] == int(changed.sum()) and a["batches"] == 3
    assert a["augmentation_sum"] == pytest.approx(float((log.reward_used - log.reward).sum()), abs=1e-5)
    if a["augmented"]:
        assert a["mean_augmentation"] == pytest.approx(a["augmentation_sum"] / a["augmented"])
    reinvent = run_rl(model, v, _Repeat(), RLConfig(reward_calls=30, batch_size=10, duplicates="cached"))["anchors"]
    assert reinvent["augmented"] == 0 and reinvent["mean_augmentation"] == 0.0


def test_default_rl_config_is_reinvent4s_loop():
    cfg = RLConfig()
    assert (cfg.duplicates, cfg.batch_size, cfg.sigma, cfg.mara) == ("zero", 64, 128.0, "none")


@pytest.mark.parametrize("kw, match", [(dict(duplicates="drop"), "duplicates='drop'"), (dict(lr=0.0), "lr=0.0"),
                                       (dict(tau=1.2), "tau=1.2")])
def test_rl_config_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        RLConfig(**kw)


def test_potency_transforms():
    p = np.array([1.0, 1e-1, 1e-2, 1e-4, 1e-6, np.nan])
    old = np.clip((np.log10(p[:5]) + 4) / 4, 0, 1)
    np.testing.assert_array_equal(potency(p)[:5], old)  # the default is unchanged
    lin = potency(p, -3.0, -1.0)
    assert lin[:5].tolist() == [1.0, 1.0, 0.5, 0.0, 0.0] and np.isnan(lin[5])
    sig = potency(p, -3.0, -1.0, "sigmoid", 0.5)
    assert sig[1] == pytest.approx(1 / (1 + 10 ** -2.5)) and sig[0] > sig[1] > 0.99  # saturates at the ceiling
    assert sig[2] == pytest.approx(0.5) and sig[3] == pytest.approx(1 / (1 + 10 ** 5)) and np.isnan(sig[5])
    with pytest.raises(ValueError, match="floor < ceiling"):
        potency(p, -1.0, -3.0)


@pytest.mark.parametrize("kw, match", [
    (dict(potency_ceiling=0.5), "potency_ceiling <= 0"), (dict(potency_floor=-1, potency_ceiling=-2), "potency_floor <"),
    (dict(potency_transform="exp"), "potency_transform"), (dict(potency_k=0), "0 < k"),
    (dict(sa_good=0.5), "1 <= sa_good"), (dict(sa_bad=11), "sa_bad <= 10"), (dict(sa_good=4, sa_bad=3), "sa_good < sa_bad"),
    (dict(stock_max_heavy_atoms=-1), "stock_max_heavy_atoms"), (dict(max_hbd=-1), "max_hbd"), (dict(task="x"), "task"),
])
def test_reward_config_out_of_range(kw, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**kw)


def _cal(**kw):
    d = dict(label="v1", profile="cpu", prior="chem-prior-x", lr=1e-4,
             synth=RewardConfig("synth", sa_good=2.5, sa_bad=3.0, potency_transform="sigmoid", potency_floor=-3,
                                potency_ceiling=-1),
             amide=RewardConfig("amide", stock_max_heavy_atoms=10), seeds=(1000, 1001))
    return cc.RewardCalibration(**{**d, **kw})


def test_calibration_file_round_trip_and_frozen(tmp_path):
    cal = _cal()
    path = cc.save_calibration(cal, tmp_path / "c.json")
    back = cc.load_calibration(path)
    assert back == cal and back.version == cal.version and cal.version.startswith("v1-")
    assert cal.reward("synth").version == cal.version and cal.reward("amide").stock_max_heavy_atoms == 10
    assert _cal(lr=5e-4).version != cal.version  # any parameter changes the version
    d = json.loads(path.read_text())
    d["synth"]["sa_bad"] = 3.2  # edited after calibration
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="frozen once calibrated"):
        cc.load_calibration(path)
    assert cc.calibration_path("quick") == cc.calibration_path("cpu") != cc.calibration_path("paper")


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("lr"), "missing \\['lr'\\]"), (lambda d: d.update(extra=1), "unknown \\['extra'\\]"),
    (lambda d: d["synth"].update(sa_good=0.1), "1 <= sa_good"), (lambda d: d["amide"].update(colour=1), "unknown amide"),
    (lambda d: d.update(lr=2.0), "lr=2.0"), (lambda d: d.update(seeds=[3]), "overlap the evaluation seeds"),
    (lambda d: d.update(profile="huge"), "unknown profile"), (lambda d: d.update(synth=3), "must be an object"),
])
def test_bad_calibration_file(tmp_path, edit, match):
    path = cc.save_calibration(_cal(), tmp_path / "c.json")
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match):
        cc.load_calibration(path)


def test_calibration_of_another_prior_is_refused(tmp_path, monkeypatch):
    path = cc.save_calibration(_cal(prior="chem-prior-a"), tmp_path / "chem_reward_cpu.json")
    monkeypatch.setattr(chem_frozen, "calibration_path", lambda profile=None, analogue="v1": path)
    assert cc.load_for_prior("cpu", "chem-prior-a").prior == "chem-prior-a"
    assert cc.load_for_prior("quick", "chem-prior-q").prior == "chem-prior-a"  # quick borrows cpu's
    with pytest.raises(ValueError, match="made on prior chem-prior-a.*make chem-calibrate PROFILE=cpu"):
        cc.load_for_prior("cpu", "chem-prior-b")


def test_missing_or_broken_calibration_file(tmp_path):
    with pytest.raises(ValueError, match="make chem-calibrate"):
        cc.load_calibration(tmp_path / "none.json")
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        cc.load_calibration(tmp_path / "b.json")
    with pytest.raises(ValueError, match="swap them"):
        _cal(synth=RewardConfig("amide"))


@pytest.mark.parametrize("kw, match", [(dict(seeds=(0,)), "overlap the evaluation seeds"), (dict(lr=()), "grid axis"),
                                       (dict(spread_seeds=(5,)), "overlap the evaluation seeds"),
                                       (dict(spread_seeds=(1000,)), "must all differ"),
                                       (dict(lr_check=(2.0,)), "lr=2.0"), (dict(reward_calls=0), "reward_calls=0"),
                                       (dict(sa=((3.0, 2.0),)), "sa_good < sa_bad"), (dict(tolerance=1.0), "tolerance"),
                                       (dict(potency=((-1.0, 0.5),)), "potency_ceiling <= 0"),
                                       (dict(min_synth_fail=1.0), "min_synth_fail")])
def test_bad_grid(kw, match):
    with pytest.raises(ValueError, match=match):
        cc.CalibrationGrid(**kw)


def _fake_run(model, v):
    def run(rcfg, cfg):
        return cc.calibration_run(model, v, _Fake(rcfg), cfg)
    return run


def test_calibrate_runs_three_stages_and_chooses(tiny):
    model, v = tiny
    grid = cc.CalibrationGrid(potency=((-3.0, -0.5), (-3.0, -0.1)), sa=((1.0, 2.0), (3.0, 3.5)),
                              stock_max_heavy_atoms=(7, 14), lr=(5e-4,), lr_check=(1e-4,), seeds=(1000,),
                              spread_seeds=(1001, 1002), reward_calls=40, min_synth_fail=0.3)
    prior_sa = [1.5, 2.5, 3.2, 4.0]
    table, choice = cc.calibrate(_fake_run(model, v), grid, prior_sa)
    assert len(table) == grid.n_runs == 2 * (2 + 2) + 2 + 2 * 2  # coarse, lr check, spread
    assert table.stage.value_counts().to_dict() == {"coarse": 8, "lr": 2, "spread": 4}
    assert table["rate_0.80"].between(0, 1).all() and (table["rate_0.85"] <= table["rate_0.80"]).all()
    assert (table["yield_0.85"] == (table["rate_0.85"] * 40).round()).all() and table.repeat_share.between(0, 1).all()
    syn = table[table.task == "synth"]
    assert syn.synth_fail_share.notna().all() and table[table.task == "amide"].synth_fail_share.isna().all()
    assert choice["synth"]["synth_fail_share"] >= 0.3  # the SYNTH term binds at the chosen point
    assert set(choice["lr_misses"]) == {1e-4, 5e-4} and set(table[table.stage == "spread"].lr) == {choice["lr"]}
    cal = cc.calibration_from_choice(choice, grid, "t", "cpu", "prior-x")
    assert cal.synth.sa_good == choice["synth"]["sa_good"] and cal.lr == choice["lr"] and cal.seeds == (1000, 1001, 1002)
    runs = cc.chosen_runs(table, cal)
    assert len(runs) == 6 and set(runs.seed) == {1000, 1001, 1002}  # both tasks x every seed of the chosen point
    with pytest.raises(ValueError, match="binds"):
        cc.choose(table.assign(synth_fail_share=0.1), grid)
    with pytest.raises(ValueError, match="empty calibration table"):
        cc.choose(table.iloc[:0], grid)
    with pytest.raises(ValueError, match="empty run log"):
        cc.unique_hit_rates(table.iloc[:0])


def test_seed_spread_and_its_bad_input():
    cal = _cal()
    rows = [{"task": t, **{k: getattr(cal.reward(t), k) for k in ("potency_floor", "potency_ceiling", "sa_good", "sa_bad",
                                                                  "stock_max_heavy_atoms")},
             "lr": cal.lr, "seed": s, "yield_0.85": y} for t in ("synth", "amide") for s, y in zip((1000, 1001), (100, 200))]
    import pandas as pd

    sp = cc.seed_spread(pd.DataFrame(rows), cal)
    assert sp["synth"]["sd_log_yield"] == pytest.approx(np.log(2) / np.sqrt(2)) and sp["amide"]["n"] == 2
    with pytest.raises(ValueError, match="needs >= 2 seeds"):
        cc.seed_spread(pd.DataFrame(rows[:1] + rows[2:]), cal)
    rows[0]["yield_0.85"] = 0
    with pytest.raises(ValueError, match="no unique hit"):
        cc.seed_spread(pd.DataFrame(rows), cal)


def test_calibration_runs_reinvent_only(tiny):
    model, v = tiny
    with pytest.raises(ValueError, match="never MARA"):
        cc.calibration_run(model, v, _Fake(), RLConfig(reward_calls=10, mara="alg1"))
    with pytest.raises(ValueError, match="quick profile reuses"):
        cc.run_calibration("quick")
    assert cc.synth_fail_share([2.0, 3.0, 4.0], 2.5) == pytest.approx(2 / 3) and np.isnan(cc.synth_fail_share([], 2.5))


def test_a_run_keyed_by_a_compute_that_names_its_scorer_depends_on_the_rewards():
    # notebook 06 keys each run by its compute function; the rewards come in through the scorer it names
    from mdkl.chem import reinvent as chem
    from mdkl.chem.reward import Scorer

    def get_scorer(task):
        return Scorer(RewardConfig(task))

    def compute():
        return chem.run_rl(None, None, get_scorer("synth"), RLConfig())

    deps = runtime.module_dependencies(compute)
    assert {"mdkl.chem.reinvent", "mdkl.chem.prior", "mdkl.chem.reward", "mdkl.shaping"} <= set(deps)
    assert "mdkl.chem.calibration" not in deps and "mdkl.chem.stats" not in deps


def test_a_frozen_calibration_is_a_configuration(tiny):
    """With a frozen calibration whose point differs from this machine's choice, the lr and spread
    stages run at the frozen point (so the spread downstream has its seeds), the frozen point is
    returned as the choice, and this machine's own choice is reported beside it."""
    model, v = tiny
    grid = cc.CalibrationGrid(potency=((-3.0, -0.5),), sa=((1.0, 2.0), (3.0, 3.5)), stock_max_heavy_atoms=(7, 14),
                              lr=(5e-4,), lr_check=(1e-4,), seeds=(1000,), spread_seeds=(1001, 1002),
                              reward_calls=40, min_synth_fail=0.0)
    table, own = cc.calibrate(_fake_run(model, v), grid, [1.5, 2.5, 3.2, 4.0])
    # the frozen point: the grid point of each task that this machine did not choose
    pick = {t: next(r for tt, r in grid.rewards() if tt == t and r != cc.chosen_rewards(own, grid)[t])
            for t in ("synth", "amide")}
    sa_other, other = (pick["synth"].sa_good, pick["synth"].sa_bad), {"amide": pick["amide"].stock_max_heavy_atoms}
    frozen = cc.RewardCalibration("v1", "cpu", "chem-prior-x", 1e-4, pick["synth"], pick["amide"], (1000, 1001, 1002))
    table_f, choice = cc.calibrate(_fake_run(model, v), grid, [1.5, 2.5, 3.2, 4.0], frozen=frozen)
    assert choice["lr"] == 1e-4 and choice["synth"]["sa_good"] == sa_other[0]
    assert choice["amide"]["stock_max_heavy_atoms"] == other["amide"]
    assert choice["rerun"]["synth"]["sa_good"] == own["synth"]["sa_good"]  # this machine's choice, reported
    spread = table_f[table_f.stage == "spread"]
    assert set(spread.lr) == {1e-4} and set(spread.sa_good[spread.task == "synth"]) == {sa_other[0]}
    assert set(spread.stock_max_heavy_atoms[spread.task == "amide"]) == {other["amide"]}
    runs = cc.chosen_runs(table_f, frozen)  # the frozen point has all its seeds: the spread downstream works
    assert sorted(runs.seed[runs.task == "synth"]) == sorted(runs.seed[runs.task == "amide"]) == [1000, 1001, 1002]
    assert "ALL-AMIDE stock <=" in cc.describe_choice(choice)
    off_grid = replace(frozen, amide=replace(pick["amide"], stock_max_heavy_atoms=9))
    with pytest.raises(ValueError, match="not a point of this calibration grid"):
        cc.calibrate(_fake_run(model, v), grid, [1.5, 2.5, 3.2, 4.0], frozen=off_grid)


def test_the_prior_recipe_is_machine_independent(tmp_path, monkeypatch):
    """A calibration records its prior's recipe (config hash, no code or numeric path): it stays
    valid for that recipe trained on another CPU kind, and is refused for another recipe."""
    cfg = chem_prior.prior_config("cpu")
    recipe = chem_prior.prior_recipe(cfg)
    monkeypatch.setattr(runtime, "numeric_path", lambda: "x86_64 AuthenticAMD native-AVX512 torch 0")
    assert chem_prior.prior_recipe(cfg) == recipe and recipe.startswith("chem-prior-recipe-")
    assert chem_prior.prior_recipe(replace(cfg, hidden=cfg.hidden + 1)) != recipe
    path = cc.save_calibration(_cal(prior="chem-prior-a", prior_recipe=recipe), tmp_path / "chem_reward_cpu.json")
    monkeypatch.setattr(chem_frozen, "calibration_path", lambda profile=None, analogue="v1": path)
    assert cc.load_for_prior("cpu", recipe).prior_recipe == recipe
    with pytest.raises(ValueError, match="made on prior chem-prior-recipe-"):
        cc.load_for_prior("cpu", chem_prior.prior_recipe(replace(cfg, hidden=cfg.hidden + 1)))
    assert _cal(prior_recipe="x").version == _cal().version  # a record, not a parameter


def test_the_planning_spread_is_frozen_with_the_calibration(tmp_path):
    """planning_sd travels with the frozen file, is not part of the version, and is checked."""
    cal = replace(_cal(), planning_sd={"synth": 0.15, "amide": 0.31})
    assert cal.version == _cal().version  # a measurement at the frozen point, not a parameter
    path = cc.save_calibration(cal, tmp_path / "chem_reward_cpu.json")
    assert cc.load_calibration(path).planning_sd == {"synth": 0.15, "amide": 0.31}
    for bad in ({"synth": 0.15}, {"synth": 0.15, "amide": -1.0}, {"synth": 0.15, "amide": float("nan")}):
        with pytest.raises(ValueError, match="planning_sd"):
            replace(_cal(), planning_sd=bad)
    committed = cc.load_calibration(cc.calibration_path("cpu"))
    assert set(committed.planning_sd) == {"synth", "amide"}
