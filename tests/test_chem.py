"""Chemistry (mdkl.chem.prior, mdkl.chem.reinvent, mdkl.chem.reward): tokenizer, bad input, reward components against RDKit
directly, the ALL-AMIDE check, metrics on hand-made sets, the DAP loss target, MARA usage in the
RL loop, and atomic caching of the prior."""

import math
import os
import sys

import numpy as np
import pytest
import torch

from mdkl import runtime
from mdkl.chem import prior as chem_prior, reinvent as chem, reward as chem_reward, smiles as chem_smiles
from mdkl.chem.reinvent import RLConfig, dap_loss, run_rl
from mdkl.chem.prior import PriorConfig, SmilesLSTM, Vocabulary, log_likelihood, sample, tokenize
from mdkl.chem.metrics import int_div1, n_circles, n_scaffolds, ob100, welch_greater, yield_
from mdkl.chem.reward import (RewardConfig, Scorer, aggregate_reward, amide_leaves, amide_solved,
                              sa_desirability, score_smiles)
from mdkl.chem.smiles import canonical, mol_from_smiles
from mdkl.targets import reverse_kl_target

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
HALOPERIDOL = "O=C(CCCN1CCC(CC1)(O)c2ccc(Cl)cc2)c3ccc(F)cc3"
SMILES = ["CCCS(=O)c1ccc2[nH]c(=NC(=O)OC)[nH]c2c1", "Brc1ccc(Cl)cc1", "C[C@H](N)C(=O)O",
          "c1ccc2c(c1)CC%10CCCCC%10C2", "O=[N+]([O-])c1ccccc1", r"C/C=C\C#N", ASPIRIN, HALOPERIDOL]


# ---------------------------------------------------------------------------------------------
# tokenizer and vocabulary
# ---------------------------------------------------------------------------------------------
def test_tokenize_round_trip_and_multichar_tokens():
    for s in SMILES:
        assert "".join(tokenize(s)) == s
    assert tokenize("ClBr[nH]%10") == ["Cl", "Br", "[nH]", "%10"]
    with pytest.raises(ValueError, match="tokenizer does not cover"):
        tokenize("C&C")
    with pytest.raises(ValueError):
        tokenize(None)


def test_vocabulary_encode_decode_and_unknown_token():
    v = Vocabulary.from_smiles(SMILES)
    for s in SMILES:
        ids = v.encode(s)
        assert ids[0] == 1 and ids[-1] == 2
        assert v.decode(ids[1:]) == s
    assert v.decode([5, 6, 2, 7, 8]) == v.itos[5] + v.itos[6]  # stops at the end token
    assert Vocabulary.from_json(v.to_json()).itos == v.itos
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.encode("[Se]")


# ---------------------------------------------------------------------------------------------
# bad input, NaN, empty batch
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scorer():
    with Scorer(RewardConfig("synth"), n_workers=1) as s:
        yield s


def test_invalid_and_empty_smiles_get_zero_and_are_counted(scorer):
    scorer.reset()
    bad = ["", "   ", "C1CC", "not a smiles", "c1cccc1", None]
    assert all(mol_from_smiles(s) is None for s in bad)
    out = scorer.score(bad + ["CCO"])
    assert np.all(out["reward"][:-1] == 0) and out["valid"].tolist() == [False] * 6 + [True]
    assert scorer.n_invalid == 6 and scorer.n_calls == 7
    assert np.isnan(out["components"][:-1]).all()


def test_empty_batch(scorer):
    scorer.reset()
    out = scorer.score([])
    assert out["reward"].shape == (0,) and out["components"].shape == (0, 4) and scorer.n_calls == 0
    assert score_smiles([], RewardConfig()).shape == (0, 4)
    m = SmilesLSTM(10, 8, 16, 1)
    assert sample(m, 0, torch.Generator()).shape[0] == 0
    assert log_likelihood(m, torch.zeros(0, 3, dtype=torch.long)).shape == (0,)


def test_nan_component_gives_zero_reward_and_is_counted(monkeypatch):
    r, bad = aggregate_reward(np.array([[0.5, 0.5, 1, 1], [0.9, np.nan, 1, 1]]))
    assert r.tolist() == [0.25, 0.0] and bad.tolist() == [False, True]
    with pytest.raises(ValueError, match="2-D"):
        aggregate_reward(np.zeros(3))
    monkeypatch.setattr(chem_reward, "qed", lambda m: float("nan"))
    with Scorer(RewardConfig("synth"), n_workers=1) as s:
        out = s.score(["CCO", "CCO", "c1ccccc1"])
    assert np.all(out["reward"] == 0) and out["nan"].all() and s.n_nan == 3


def test_duplicates_scored_once_but_counted(scorer, monkeypatch):
    scorer.reset()
    seen = []
    orig = chem_reward.score_batch
    monkeypatch.setattr(chem_reward, "score_batch",
                        lambda smi, cfg, stock=None: (seen.extend(smi), orig(smi, cfg, stock))[1])
    out = scorer.score(["CCO", "OCC", "CCO", "c1ccccc1", "C1CC", "C1CC"])  # OCC is CCO spelled otherwise
    assert sorted(seen) == ["C1CC", "CCO", "OCC", "c1ccccc1"] and scorer.n_calls == 6
    assert out["reward"][0] == out["reward"][1] == out["reward"][2]
    assert out["canonical"][:3] == ["CCO"] * 3 and scorer.n_invalid == 2
    scorer.score(["CCO", "C1CC"])
    assert len(seen) == 4 and scorer.n_calls == 8 and scorer.n_invalid == 3  # memoized, still counted
    scorer.reset()
    scorer.score(["CCO"])
    assert len(seen) == 5  # a new run scores again


# ---------------------------------------------------------------------------------------------
# reward components against RDKit directly
# ---------------------------------------------------------------------------------------------
def test_components_match_rdkit():
    from rdkit import Chem
    from rdkit.Chem import QED, RDConfig, rdMolDescriptors

    sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
    import sascorer

    cfg = RewardConfig("synth")
    c = score_smiles([ASPIRIN, HALOPERIDOL], cfg)
    for i, s in enumerate([ASPIRIN, HALOPERIDOL]):
        m = Chem.MolFromSmiles(s)
        assert c[i, 1] == pytest.approx(QED.qed(m))
        assert c[i, 2] == float(rdMolDescriptors.CalcNumHBD(m) < 4)
        assert c[i, 3] == pytest.approx(float(np.clip((4.5 - sascorer.calculateScore(m)) / 1.0, 0, 1)))
    p = chem_reward.drd2_proba([Chem.MolFromSmiles(ASPIRIN), Chem.MolFromSmiles(HALOPERIDOL)])
    assert p[1] > 0.9 and p[0] < 0.1  # PMO's DRD2 model: haloperidol active, aspirin not
    np.testing.assert_allclose(c[:, 0], np.clip((np.log10(p) + 4) / 4, 0, 1))
    assert chem_reward.potency([1.0, 1e-2, 1e-6])[:2].tolist() == [1.0, 0.5]
    assert chem_reward.potency([1e-6])[0] == 0.0 and np.isnan(chem_reward.potency([np.nan])[0])
    assert c[:, 2].tolist() == [1.0, 1.0]
    assert score_smiles(["OCC(O)C(O)C(O)C(O)CO"], cfg)[0, 2] == 0.0  # 6 donors
    assert sa_desirability([3.0, 4.0, 5.0, np.nan]).tolist()[:3] == [1.0, 0.5, 0.0]
    assert np.isnan(sa_desirability(np.nan))
    with pytest.raises(ValueError, match="task"):
        RewardConfig("docking")


def test_amide_check_with_reaction_template():
    assert sorted(amide_leaves("CC(=O)NC")) == ["CC(=O)O", "CN"]
    assert sorted(amide_leaves("O=C(NCc1ccccc1)c1ccc(C(=O)N2CCCC2)cc1")) == \
        ["C1CCNC1", "NCc1ccccc1", "O=C(O)c1ccc(C(=O)O)cc1"]
    assert amide_leaves("COC(=O)NC") == [] and amide_leaves("c1ccccc1") == [] and amide_leaves("") == []
    stock = {"CC(=O)O", "CN", "C1CCNC1"}
    m = mol_from_smiles
    assert amide_solved(m("CC(=O)NC"), stock)
    assert amide_solved(m("CC(=O)N1CCCC1"), stock)
    assert not amide_solved(m("CC(=O)NCC"), stock)  # ethylamine not in stock
    assert not amide_solved(m("c1ccccc1"), stock)
    assert amide_solved(m("CN"), stock)  # a stock compound itself
    cfg = RewardConfig("amide", stock_max_heavy_atoms=0)
    c = score_smiles(["CC(=O)NC", "CC(=O)NCC"], cfg, stock=stock)
    assert c[:, 3].tolist() == [1.0, 0.0]


def test_amide_stock_size_rule():
    """Building blocks with <= stock_max_heavy_atoms heavy atoms count as in stock; larger ones
    must be in the stock set; the molecule still needs an amide route."""
    m = mol_from_smiles
    big_amine = "NCc1ccc(-c2ccccc2)cc1"  # 14 heavy atoms
    mol = m(f"CC(=O){big_amine[0]}" + big_amine[1:])  # acetamide of it: 17 heavy atoms
    assert mol.GetNumHeavyAtoms() == 17 and m(big_amine).GetNumHeavyAtoms() == 14
    assert not amide_solved(mol, set())
    assert amide_solved(mol, set(), max_heavy_atoms=14)
    assert not amide_solved(mol, set(), max_heavy_atoms=13)
    assert amide_solved(mol, {big_amine}, max_heavy_atoms=13)  # big piece in stock, acid small
    assert not amide_solved(m("c1ccc(-c2ccc(-c3ccccc3)cc2)cc1"), set(), max_heavy_atoms=14)  # no amide, 18 atoms
    assert RewardConfig("amide").stock_max_heavy_atoms == 14
    c = score_smiles([f"CC(=O)N{big_amine[1:]}"], RewardConfig("amide"), stock=set())
    assert c[0, 3] == 1.0
    with pytest.raises(ValueError, match="stock_max_heavy_atoms"):
        RewardConfig("amide", stock_max_heavy_atoms=-1)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_metrics_on_hand_made_sets():
    assert int_div1(["c1ccccc1CCO"] * 5) == pytest.approx(0.0)
    d = int_div1(["c1ccccc1CCO", "CCCCCCCCCC(=O)O"])
    assert 0.4 < d < 0.5  # two unrelated molecules: 1 - (2*1 + 2*~0) / 4
    assert math.isnan(int_div1([]))
    d2 = int_div1(["c1ccccc1CCO", "CCCCCCCCCC(=O)O"], self_pairs=False)
    assert d2 == pytest.approx(2 * d)  # the 2 distinct ordered pairs only: 1 - s vs 1 - (2 + 2 s) / 4
    assert int_div1(["c1ccccc1CCO"] * 5, self_pairs=False) == pytest.approx(0.0) and math.isnan(int_div1(["CCO"], self_pairs=False))
    three = ["c1ccccc1CCO", "CCCCCCCCCC(=O)O", "C1CCNCC1"]
    assert int_div1(three, chunk=2, self_pairs=False) == pytest.approx(int_div1(three, self_pairs=False))  # chunked diagonal
    assert n_circles(["CCO"] * 3) == 1 and n_circles([]) == 0
    assert n_circles(["c1ccccc1CCO", "CCCCCCCCCC(=O)O", "C1CCNCC1"]) == 3
    assert n_scaffolds(["c1ccccc1", "Cc1ccccc1", "C1CCCCC1", "CCO"]) == 3  # benzene, cyclohexane, ""
    canon = ["A", None, "B", "A", "C"]
    r = [0.9, 1.0, 0.85, 0.95, 0.5]
    assert yield_(canon, r, 0.8) == 2 and yield_(canon, r, 0.9) == 1
    assert ob100(canon, r, 0.8, k=2) == 3.0 and math.isnan(ob100(canon, r, 0.8, k=3))
    with pytest.raises(ValueError, match="invalid SMILES"):
        int_div1(["C1CC"])


def test_welch_one_sided():
    from scipy import stats

    a, b = [5.0, 6.0, 7.0], [1.0, 2.0, 2.5]
    p = welch_greater(a, b)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue / 2)
    assert welch_greater(b, a) > 0.5
    assert math.isnan(welch_greater([1.0], b))


# ---------------------------------------------------------------------------------------------
# DAP loss and the RL loop
# ---------------------------------------------------------------------------------------------
def test_dap_loss_target_is_reverse_kl_target():
    """The DAP regression target log pi_prior + sigma R, normalized, is the reverse-KL target
    pi_prior exp(R / beta) / Z with beta = 1/sigma; the loss vanishes exactly there and its
    gradient pulls log pi_theta toward it."""
    ref = np.array([0.5, 0.3, 0.2])
    R = np.array([0.0, 0.01, 0.02])
    sigma = 128.0
    lp_prior = torch.log(torch.tensor(ref))
    target = lp_prior + sigma * torch.tensor(R)
    np.testing.assert_allclose(torch.softmax(target, 0).numpy(), reverse_kl_target(ref, R, 1.0 / sigma),
                               rtol=1e-10)
    assert dap_loss(target, lp_prior, torch.tensor(R), sigma).item() == pytest.approx(0.0)
    lp = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    dap_loss(lp, lp_prior, torch.tensor(R), sigma).backward()
    np.testing.assert_allclose(lp.grad.numpy(), (-2 / 3 * target).numpy())
    with pytest.raises(ValueError, match="sigma"):
        RLConfig(sigma=0)


class _FakeScorer:
    """Reward = fraction of carbon tokens, deterministic, no pool."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.n_calls = self.n_invalid = self.n_nan = 0

    def score(self, smiles):
        can = [canonical(s) for s in smiles]
        r = np.array([s.count("C") / max(len(s), 1) if c else 0.0 for s, c in zip(smiles, can)])
        self.n_calls += len(smiles)
        return {"reward": r, "canonical": can, "valid": np.array([c is not None for c in can])}


@pytest.fixture(scope="module")
def tiny_prior():
    torch.manual_seed(0)
    v = Vocabulary.from_smiles(SMILES)
    return SmilesLSTM(len(v), 8, 16, 1), v


def test_run_rl_reward_calls_exact_and_uses_mara(tiny_prior, monkeypatch):
    model, v = tiny_prior
    from mdkl import shaping

    calls = []
    real = shaping.mara_rewards

    def spy(r, lp, beta, tau, group=None, **kw):
        calls.append((beta, tau))
        return real(r, lp, beta, tau, group, **kw)

    monkeypatch.setattr(shaping, "mara_rewards", spy)  # chem's MARA is the shared shaping path
    cfg = RLConfig(batch_size=4, reward_calls=10, mara="alg1", tau=0.3, max_len=20)
    out = run_rl(model, v, _FakeScorer(), cfg)
    log = out["log"]
    assert len(log) == 10 and log["call"].tolist() == list(range(1, 11))
    assert log.groupby("step").size().tolist() == [4, 4, 2]
    assert calls == [(1 / 128, 0.3)] * 3
    # the trainer logs its DAP loss and gradient norm per optimizer step, as every trainer does
    h = out["history"]
    assert h.step.tolist() == [0, 1, 2] and np.isfinite(h.loss).all() and (h.loss >= 0).all() and (h.grad_norm >= 0).all()
    from mdkl.numerics import numeric_failure
    assert not numeric_failure(h)
    for _, b in log.groupby("step"):  # reward_used is exactly Algorithm 1 on the batch
        want = real(torch.tensor(b.reward.values, dtype=torch.float32),
                    torch.tensor(b.logp_prior.values, dtype=torch.float32), beta=1 / 128, tau=0.3)
        np.testing.assert_allclose(b.reward_used.values, want.numpy(), rtol=1e-5, atol=1e-6)
    for mara in ("alg2", True):
        with pytest.raises(ValueError, match="'none', 'alg1' or 'auto'"):
            RLConfig(mara=mara)
    assert RLConfig(mara="auto").shaping.mara_algorithm == "alg1"
    assert RLConfig(mara="auto").shaping.estimator == "k2"  # DAP carries the KL: no k1 in the reward
    # the prior is not trained, the agent is
    assert all(p.grad is None for p in model.parameters())
    plain = run_rl(model, v, _FakeScorer(), RLConfig(batch_size=4, reward_calls=8, max_len=20))["log"]
    assert (plain.reward_used == plain.reward).all()


def test_run_rl_anchor_statistics_match_the_log(tiny_prior):
    model, v = tiny_prior
    for mara in ("none", "alg1"):
        cfg = RLConfig(batch_size=4, reward_calls=12, mara=mara, tau=0.3, max_len=20)
        out = run_rl(model, v, _FakeScorer(), cfg)
        log, a = out["log"], out["anchors"]
        n_good = log.groupby("step").reward.apply(lambda r: int((r >= 0.3).sum()))
        assert a["batches"] == 3 and a["batches_with_anchor"] == int((n_good >= 1).sum())
        assert a["batches_with_2plus"] == int((n_good >= 2).sum())
        assert a["augmented"] == int((log.reward_used != log.reward).sum())
        assert a["augmented"] == 0 or mara != "none"
        assert set(out["timing"]) == {"sampling", "scoring", "update", "forward"}


def test_run_rl_overlap_does_not_change_the_run(tiny_prior):
    model, v = tiny_prior
    cfg = RLConfig(batch_size=4, reward_calls=12, mara="alg1", tau=0.3, max_len=20, seed=1)
    with Scorer(RewardConfig("synth"), n_workers=1) as sc:
        a = run_rl(model, v, sc, cfg, overlap=True)["log"]
        b = run_rl(model, v, sc, cfg, overlap=False)["log"]
    assert a.drop(columns="logp_agent").equals(b.drop(columns="logp_agent"))
    np.testing.assert_allclose(a.logp_agent, b.logp_agent, rtol=1e-6)


def test_svc_fast_path_equals_predict_proba():
    from rdkit import Chem

    model = chem_reward._drd2_model()
    mols = [Chem.MolFromSmiles(s) for s in SMILES]
    x = chem_reward.drd2_features(mols)
    x = np.vstack([x, 0 * x[:1], 3 * x])
    np.testing.assert_allclose(chem_reward._svc_proba(model, x), model.predict_proba(x)[:, 1], rtol=0, atol=1e-10)
    # libsvm's coupling is not the plain sigmoid: it stops at tolerance 0.0025
    p = chem_reward.libsvm_binary_proba(np.array([-3.0, 0.0, 3.0]), -2.0, 0.1)
    np.testing.assert_allclose(p.sum(1), 1.0)
    assert p[2, 0] > p[1, 0] > p[0, 0]


def test_run_rl_is_seeded(tiny_prior):
    model, v = tiny_prior
    cfg = RLConfig(batch_size=4, reward_calls=8, max_len=20, seed=3)
    a = run_rl(model, v, _FakeScorer(), cfg)["log"]
    b = run_rl(model, v, _FakeScorer(), cfg)["log"]
    assert a.smiles.tolist() == b.smiles.tolist()


def test_killed_prior_training_leaves_no_partial_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)

    def killed(cfg, out, progress=True):
        (out / "model.pt").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(chem_prior, "_train_prior", killed)
    with pytest.raises(KeyboardInterrupt):
        chem_prior.train_prior(PriorConfig(n_train=10, epochs=1), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_prior_lr_factor_warms_up_then_decays_linearly():
    f = [chem_prior.prior_lr_factor(k, 100, warmup=0.1, final=0.02) for k in range(100)]
    assert f[0] == pytest.approx(0.1 * 1.0) and f[9] == pytest.approx(1 - 0.98 * 9 / 99)
    assert all(a < b for a, b in zip(f[:9], f[1:10]))          # warmup rises
    assert all(a > b for a, b in zip(f[10:], f[11:]))          # then decays
    assert f[-1] == pytest.approx(0.02)
    assert [chem_prior.prior_lr_factor(k, 7) for k in range(7)] == [1.0] * 7  # defaults: constant lr


@pytest.mark.parametrize("bucket", [0, 3])
def test_minibatches_cover_every_item_once_and_are_seeded(bucket):
    lengths = np.random.default_rng(0).integers(5, 60, size=1003).tolist()
    b1 = chem_prior.minibatches(lengths, 32, torch.Generator().manual_seed(1), bucket)
    b2 = chem_prior.minibatches(lengths, 32, torch.Generator().manual_seed(1), bucket)
    assert b1 == b2 and sorted(i for b in b1 for i in b) == list(range(1003))
    assert all(len(b) <= 32 for b in b1) and len(b1) == math.ceil(1003 / 32)
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    plain = chem_prior.minibatches(lengths, 32, torch.Generator().manual_seed(1), 0)
    if bucket:  # similar lengths share a batch: less padding than random minibatches
        assert pad(b1) < 0.9 * pad(plain)


def test_training_set_canonical_matches_serial_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)
    cfg = PriorConfig(n_train=300, seed=2)
    got = chem_prior.training_set_canonical(cfg)  # process pool (spawn)
    assert got == [chem_smiles.canonical(s) for s in chem_smiles.load_moses(300, 2)]
    assert len(list(tmp_path.glob("chem-moses-canonical-*.pkl"))) == 1


@pytest.mark.slow
def test_tiny_prior_training_is_cached_and_seeded(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)
    cfg = PriorConfig(n_train=200, epochs=1, embedding=8, hidden=16, layers=1, batch_size=50)
    p1 = chem_prior.train_prior(cfg, progress=False)
    m1, v1, c1 = chem_prior.load_prior(p1)
    assert c1 == cfg and (p1 / "losses.npy").exists()
    p2 = chem_prior.train_prior(cfg, force=True, progress=False)
    m2, _, _ = chem_prior.load_prior(p2)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    q = chem_prior.prior_quality(m1, v1, 20, [], max_len=30)
    assert 0 <= q["validity"] <= 1 and 0 <= q["novelty"] <= 1 and len(q["smiles"]) == 20


@pytest.mark.slow
def test_parallel_scorer_matches_serial():
    smis = SMILES + ["C1CC", "", "CCO"]
    with Scorer(RewardConfig("synth"), n_workers=2) as par:
        job = par.submit(smis)  # non-blocking
        a = job.get()
        assert par.n_calls == len(smis)
    with Scorer(RewardConfig("synth"), n_workers=1) as ser:
        b = ser.score(smis)
    np.testing.assert_allclose(a["reward"], b["reward"])
    assert par.n_invalid == 2
