"""mdkl.lm.trl_ext: MARA and the KL direction inside TRL's GRPOTrainer, end to end on CPU.

A few GRPO steps of a tiny causal LM; then the batch the trainer scored is re-scored independently
(reward function on the decoded completions, reference / policy forward passes) and the trainer's
shaped rewards, advantages and KL loss term are compared with mdkl.mara / mdkl.kl on it.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOTrainer  # noqa: E402

from mdkl.kl import KL_PLACEMENTS, k1, kl_gradient_direction, kl_loss  # noqa: E402
from mdkl.mara_kl import anchored_kl_loss  # noqa: E402
from mdkl.mara import batch_percentile_tau, mara_rewards, mara_substitute  # noqa: E402
from mdkl.lm.trl_ext import MDKLGRPOConfig, MDKLGRPOTrainer  # noqa: E402

pytestmark = pytest.mark.slow

NG, BETA = 4, 0.05


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny character-level Llama saved to disk (GRPOTrainer rebuilds the reference from the path)."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789<>/ .,?:")
    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>"] + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # for main()'s chat prompt
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def reward_12(completions, **kwargs):
    """1.0 if the completion holds a '1' or a '2', else 0.0 (plus 0.5 for both: unequal rewards)."""
    return [float("1" in c or "2" in c) + 0.5 * float("1" in c and "2" in c) for c in completions]


class Recording(MDKLGRPOTrainer):
    """Keeps the last scored batch as handed to the loss (before TRL shuffles it), and a copy of
    the policy that sampled it (the optimizer step after it moves ``self.model``)."""

    def _generate_and_score_completions(self, inputs):
        self.sampler_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.scored = super()._generate_and_score_completions(inputs)
        return self.scored


def train(model_dir, tmp_path, steps=2, **kw):
    kw.setdefault("beta", BETA)
    args = MDKLGRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                          num_generations=NG, max_completion_length=8, max_steps=steps, learning_rate=1e-3,
                          report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1,
                          disable_tqdm=True, **kw)
    ds = Dataset.from_dict({"prompt": ["pick 1 or 2:", "say 1 or 2:"] * 8})
    tr = Recording(model=str(model_dir), reward_funcs=reward_12, args=args, train_dataset=ds,
                   processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir))
    tr.train()
    return tr


def sampler(tr, model_dir):
    """A fresh copy of the policy that sampled the last batch (a deepcopy of ``tr.model`` would keep
    TRL's patched forward bound to the original module)."""
    m = LlamaForCausalLM.from_pretrained(model_dir)
    m.load_state_dict(tr.sampler_state)
    return m.eval()


def seq_logps(model, tr):
    """Independent sequence log-probs of the last scored batch: log-softmax, gather, sum over the mask."""
    (ids, attn, keep, *_), _, _ = tr._scoring_calls[-1]
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, -keep - 1:-1].float()
    tok = torch.log_softmax(logits, -1).gather(-1, ids[:, -keep:, None]).squeeze(-1)
    return (tok * attn[:, -keep:]).sum(-1)


def rescore(tr):
    """Rewards of the last scored batch from the decoded completions, and its group ids."""
    (ids, attn, keep, *_), _, _ = tr._scoring_calls[-1]
    comp = [tr.processing_class.decode(r[m.bool()], skip_special_tokens=True)
            for r, m in zip(ids[:, -keep:], attn[:, -keep:])]
    return torch.tensor(reward_12(comp)), torch.arange(len(comp)) // NG


def mean_advantages(r):
    """TRL's advantages with scale_rewards='none' (the default with MARA or k1 in the reward)."""
    g = r.view(-1, NG)
    return (g - g.mean(1, keepdim=True)).view(-1)


def test_mara_alg1_reverse_rewards_equal_core(model_dir, tmp_path):
    tr = train(model_dir, tmp_path, kl="reverse", kl_placement="reward", mara="auto", tau=1.0)
    s = tr.last_shaping
    r, group = rescore(tr)
    ref, logp = seq_logps(tr.ref_model, tr), seq_logps(sampler(tr, model_dir), tr)
    torch.testing.assert_close(s["rewards"], r)
    torch.testing.assert_close(s["logp_ref"], ref, atol=1e-4, rtol=1e-5)
    assert (r >= 1.0).any() and (r < 1.0).any(), "degenerate batch: MARA untested"
    augmented = mara_rewards(r, ref, BETA, 1.0, group)
    assert (augmented != r).any(), "degenerate batch: Alg. 1 changed nothing"
    expected = augmented - BETA * k1(logp, ref)  # Alg. 1 + k1 in the reward
    torch.testing.assert_close(s["shaped_rewards"], expected, atol=1e-4, rtol=1e-5)
    # and TRL formed its advantages from exactly these rewards, unscaled (scale_rewards='none')
    assert tr.args.scale_rewards == "none"
    torch.testing.assert_close(tr.scored["advantages"], mean_advantages(s["shaped_rewards"]))
    assert tr.args.shaping.mara_algorithm == "alg1"
    assert any("mdkl/kl_k1" in h for h in tr.state.log_history)


def test_mara_alg2_forward_substitutes_reward_and_reference(model_dir, tmp_path):
    tr = train(model_dir, tmp_path, kl="forward", kl_placement="loss", mara="auto", tau_percentile=90.0)
    s = tr.last_shaping
    r, group = rescore(tr)
    ref = seq_logps(tr.ref_model, tr)
    tau = batch_percentile_tau(r, 90.0, group)
    r_sub, ref_sub = mara_substitute(r, ref, tau, group)
    assert (ref_sub != ref).any(), "degenerate batch: Alg. 2 substituted nothing"
    torch.testing.assert_close(s["shaped_rewards"], r_sub, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(s["kl_logp_ref"], ref_sub, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(tr.scored["advantages"], mean_advantages(s["shaped_rewards"]))
    torch.testing.assert_close(tr.scored["mdkl_logp_ref"], ref_sub, atol=1e-4, rtol=1e-5)
    assert tr.args.shaping.mara_algorithm == "alg2"


def kl_term(tr, native_beta=0.0):
    """The trainer's loss minus TRL's own loss on the same batch and parameters, TRL's built-in
    per-token k3 term weighted by ``native_beta`` (0: none)."""
    inputs = tr.scored
    tr.model.train()
    loss = tr._compute_loss(tr.model, inputs)
    beta, tr.beta = tr.beta, native_beta
    try:
        plain = GRPOTrainer._compute_loss(tr, tr.model, inputs)
    finally:
        tr.beta = beta
    return (loss - plain).item()


def expected_kl_term(tr, estimator, level, ref_seq_kl, anchored=None):
    """beta * KL estimator summed over the batch's tokens (per token) or sequences, divided by the
    batch's completion tokens: TRL's default loss_type='dapo' aggregation, 1 process, no accumulation."""
    inputs, lp_tok = tr.scored, tr._policy_logps.detach()
    mask = inputs["completion_mask"].float()
    if level == "sequence":
        total = kl_loss(seq_logps(tr.model, tr), ref_seq_kl, BETA, estimator).sum()
    elif anchored is not None:  # Alg. 2: anchored samples on the sequence against log pi_ref(z)
        total = anchored_kl_loss(lp_tok, inputs["ref_per_token_logps"], mask, ref_seq_kl, anchored, BETA,
                                 "token", estimator=estimator).sum()
    else:
        total = (kl_loss(lp_tok, inputs["ref_per_token_logps"], BETA, estimator) * mask).sum()
    return (total / inputs["num_items_in_batch"]).item()


def test_mara_alg2_forward_kl_term_uses_anchor_reference(model_dir, tmp_path):
    tr = train(model_dir, tmp_path, steps=1, kl="forward", kl_placement="loss", mara="auto", tau=1.0)
    assert tr.args.kl_level == "token"
    r, group = rescore(tr)
    _, ref_sub = mara_substitute(r, seq_logps(tr.ref_model, tr), 1.0, group)
    got = kl_term(tr)
    anchored = r >= 1.0
    assert torch.equal(tr.scored["mdkl_anchored"], anchored)
    assert got == pytest.approx(expected_kl_term(tr, "k3", "token", ref_sub, anchored), rel=1e-3, abs=1e-7)
    native = got - kl_term(tr, native_beta=BETA)  # TRL's own k3 term (sample's own reference)
    assert got != pytest.approx(native, rel=1e-3)  # the anchor's reference changed the KL term


@pytest.mark.parametrize("kl,placement,level,key", [("reverse", "reward", "sequence", "reverse"),
                                                   ("reverse", "loss", "sequence", "reverse_k2"),
                                                   ("reverse", "loss", "token", "reverse_k2"),
                                                   ("forward", "loss", "sequence", "forward"),
                                                   ("forward", "loss", "token", "forward")])
def test_kl_direction_selects_estimator(model_dir, tmp_path, kl, placement, level, key):
    tr = train(model_dir, tmp_path, steps=1, kl=kl, kl_placement=placement, kl_level=level)
    estimator = KL_PLACEMENTS[key][0]
    assert (tr.args.shaping.estimator, tr.args.kl_placement) == KL_PLACEMENTS[key]
    assert kl_gradient_direction(estimator, placement) == kl
    s = tr.last_shaping
    r, _ = rescore(tr)
    ref = seq_logps(tr.ref_model, tr)
    got = kl_term(tr)
    if placement == "reward":  # k1 (of the sampling policy) detached in the reward, no loss term
        k1_sampled = k1(seq_logps(sampler(tr, model_dir), tr), ref)
        torch.testing.assert_close(s["shaped_rewards"], r - BETA * k1_sampled, atol=1e-4, rtol=1e-5)
        assert got == pytest.approx(0.0, abs=1e-6)
        return
    torch.testing.assert_close(s["shaped_rewards"], r)  # vanilla: the reward is untouched
    expected = expected_kl_term(tr, estimator, level, ref)
    assert got == pytest.approx(expected, rel=1e-3, abs=1e-7)
    assert abs(expected) > 0  # the policy moved: the check is not trivially 0 == 0
    if (kl, level) == ("forward", "token"):  # exactly GRPO's own KL term
        assert kl_term(tr, native_beta=BETA) == pytest.approx(0.0, abs=1e-6 + 1e-3 * abs(expected))


def test_bad_config_errors(tmp_path):
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="beta > 0"):  # MARA's augmentation scales with beta
        MDKLGRPOConfig(mara="auto", beta=0.0, **base)
    with pytest.raises(ValueError, match="beta"):
        MDKLGRPOConfig(mara="auto", beta=-0.1, **base)
    with pytest.raises(ValueError, match="loss_type"):
        MDKLGRPOConfig(beta=0.1, kl="forward", kl_placement="loss", loss_type="unknown", **base)
    with pytest.raises(ValueError, match="reverse\\+reward"):
        MDKLGRPOConfig(kl="forward", kl_placement="reward", beta=0.1, **base)
    with pytest.raises(ValueError, match="tau_percentile"):
        MDKLGRPOConfig(mara="auto", beta=0.1, tau_percentile=101.0, **base)
    MDKLGRPOConfig(beta=0.0, **base)  # plain RL without MARA is fine
    MDKLGRPOConfig(mara="alg1", beta=0.1, kl="forward", kl_placement="loss", kl_level="token", **base)


@pytest.mark.parametrize("shaping", [dict(mara="auto", kl="forward", kl_placement="loss"),
                                     dict(kl="reverse", kl_placement="reward")])
def test_scale_rewards_defaults_to_none_with_mara_or_k1_in_the_reward(tmp_path, shaping):
    """TRL's std scaling (scale_rewards 'group' / 'batch') erases the beta-scaled spread MARA and the
    k1 penalty create inside an all-correct group: the default becomes 'none', explicit scaling raises."""
    base = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], beta=0.1, **shaping)
    assert MDKLGRPOConfig(**base).scale_rewards == "none"
    for scale in ("group", "batch", True):
        with pytest.raises(ValueError, match="scale_rewards='none'"):
            MDKLGRPOConfig(scale_rewards=scale, **base)
    assert MDKLGRPOConfig(**{**base, "scale_rewards": "none"}).shaping.advantage == "mean"
    # without either, TRL's own default stays
    plain = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[], beta=0.1, kl="forward", kl_placement="loss")
    assert MDKLGRPOConfig(**plain).scale_rewards == "group"
    assert MDKLGRPOConfig(scale_rewards="batch", **plain).scale_rewards == "batch"


def test_two_process_launch(model_dir, tmp_path):
    """``python -m mdkl.tasks.onetwo_trl`` under torchrun with 2 CPU processes: prompt groups span processes, so
    rewards and reference log-probs are gathered before MARA and sliced back (smoke test)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mdkl.tasks.onetwo_trl",
           "--model", str(model_dir), "--output_dir", str(tmp_path), "--max_steps", "1",
           "--per_device_train_batch_size", "4", "--num_generations", "8", "--max_completion_length", "8",
           "--beta", "0.05", "--kl", "forward", "--kl_placement", "loss", "--mara", "auto",
           "--tau_percentile", "90", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1",
           "--gradient_checkpointing", "false", "--use_cpu", "true", "--bf16", "false", "--n_prompts", "32"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mdkl/kl_loss" in out.stdout and "train_runtime" in out.stdout
