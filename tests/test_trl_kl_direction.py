"""Which divergence's gradient TRL's own GRPO KL term follows, measured exactly on the pinned trl.

Setting small enough to enumerate: a tiny Llama with a 12-token vocabulary and completions of exactly
one token (``max_completion_length=1``), so the completion space *is* the vocabulary. The reference
model is the one GRPOTrainer loads from disk; the policy is the same network with perturbed weights.
For every completion y the test calls TRL's own ``GRPOTrainer._compute_loss`` (not a re-implementation)
on a hand-built batch with zero advantages, so that only ``beta * per_token_kl`` is left, with the
reference log-prob computed by TRL's own ``_get_per_token_logps_and_entropies`` on ``trainer.ref_model``
and no ``old_per_token_logps`` (TRL then uses the detached current log-probs, as it does on-policy with
``num_iterations=1``). The exact on-policy expected gradient ``sum_y pi(y) grad loss(y) / beta`` over
all model parameters is compared with the exact gradients of KL(pi || pi_ref) (reverse) and
KL(pi_ref || pi) (forward), both computed by enumeration over the vocabulary (paper Sec. 2, the two
KL-regularized objectives; ``mdkl.kl`` derives which estimator placement follows which). The model
runs in float64 and TRL's fused LM head (its own custom backward included) returns float32 log-probs,
hence a relative tolerance of 2e-5; the two candidate gradients differ by 78% or more here.

Expected from the code (``use_bias_correction_kl`` multiplies k3 by the token ratio ``pi / pi_old``,
whose value is 1 on-policy but whose gradient is ``grad log pi``): with the default ``True`` the term's
gradient is k2's, E_pi[log(pi/pi_ref) grad log pi] = grad KL(pi || pi_ref) (reverse); with ``False``
it is plain k3's, E_pi[(1 - pi_ref/pi) grad log pi] = grad KL(pi_ref || pi) (forward).
"""

import os

import pytest
import torch

pytest.importorskip("trl")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

pytestmark = pytest.mark.slow

BETA = 0.1
#: relative tolerance: the model runs in float64, but TRL's fused LM head returns float32 log-probs
TOL = 2e-5
CHARS = list("abcdefghij")  # vocabulary: <pad>, <eos> and these 10 characters


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny character-level Llama with a non-uniform next-token distribution, saved to disk."""
    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>"] + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                      pad_token_id=0, eos_token_id=1, bos_token_id=1, initializer_range=0.5,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_lm_kl")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def build_trainer(model_dir, tmp_path, **kw):
    """GRPOTrainer with beta > 0, one-token completions and TRL's defaults otherwise; policy perturbed."""
    args = GRPOConfig(output_dir=str(tmp_path / "out"), beta=BETA, max_completion_length=1,
                      num_generations=2, per_device_train_batch_size=2, report_to=[], use_cpu=True,
                      save_strategy="no", disable_tqdm=True, bf16=False, **kw)  # float64: exact sums
    tr = GRPOTrainer(model=str(model_dir), reward_funcs=lambda completions, **_: [0.0] * len(completions),
                     args=args, train_dataset=Dataset.from_dict({"prompt": ["abc"] * 4}),
                     processing_class=PreTrainedTokenizerFast.from_pretrained(model_dir))
    tr.model.double()
    tr.ref_model.double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the policy moves away from the reference (loaded from the same files)
        for p in tr.model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1  # what Trainer's loop sets with gradient_accumulation_steps=1
    return tr


def flat_grad(loss, params):
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, retain_graph=True)])


def measure(tr):
    """(TRL's expected KL-term gradient / beta, exact reverse-KL gradient, exact forward-KL gradient)."""
    model, params = tr.model, [p for p in tr.model.parameters() if p.requires_grad]
    prompt = torch.tensor([[1, 2, 3, 4]])  # <eos> a b c
    vocab = model.config.vocab_size

    # exact next-token distributions after the prompt, and the exact divergences' gradients
    logp = torch.log_softmax(model(input_ids=prompt).logits[0, -1] / tr.temperature, -1)
    with torch.no_grad():
        logp_ref = torch.log_softmax(tr.ref_model(input_ids=prompt).logits[0, -1] / tr.temperature, -1)
    pi, pi_ref = logp.exp(), logp_ref.exp()
    g_reverse = flat_grad((pi * (logp - logp_ref)).sum(), params)  # KL(pi || pi_ref)
    g_forward = flat_grad((pi_ref * (logp_ref - logp)).sum(), params)  # KL(pi_ref || pi)
    assert (pi_ref - pi).abs().max() > 0.1, "policy too close to the reference: directions indistinct"

    # TRL's loss for every completion y, weighted by pi(y): the exact on-policy expectation
    expected = torch.zeros_like(g_reverse)
    for y in range(vocab):
        ids = torch.cat([prompt, torch.tensor([[y]])], 1)
        ones = torch.ones_like(ids)
        with torch.no_grad():  # the reference pass, through TRL's own scoring code
            ref_tok, _, _ = tr._get_per_token_logps_and_entropies(tr.ref_model, ids, ones, 1)
        torch.testing.assert_close(ref_tok[0, 0].double(), logp_ref[y], atol=1e-6, rtol=1e-6)
        inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
                  "completion_ids": ids[:, -1:], "completion_mask": torch.ones(1, 1, dtype=torch.long),
                  "advantages": torch.zeros(1, dtype=torch.float64), "ref_per_token_logps": ref_tok,
                  "num_items_in_batch": torch.tensor(1.0, dtype=torch.float64)}
        expected += pi[y].detach() * flat_grad(tr._compute_loss(model, inputs), params)
    return expected / BETA, g_reverse, g_forward


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def test_pinned_trl_defaults():
    """The measurements below are of these defaults (trl 1.16: bias-corrected KL, token-level ratio)."""
    assert trl.__version__ == "1.16.0"
    cfg = GRPOConfig(output_dir="unused", report_to=[], use_cpu=True)
    assert cfg.use_bias_correction_kl is True and cfg.importance_sampling_level == "token"


def test_default_kl_term_follows_reverse_kl(model_dir, tmp_path):
    """trl 1.16 default (use_bias_correction_kl=True): k3 x token ratio has the reverse-KL gradient."""
    tr = build_trainer(model_dir, tmp_path)
    assert tr.args.use_bias_correction_kl
    g, g_rev, g_fwd = measure(tr)
    print(f"default: cos(reverse) {cosine(g, g_rev):.12f}, |g|/|g_rev| {(g.norm() / g_rev.norm()).item():.12f}, "
          f"rel. err. {rel_err(g, g_rev):.2e}; cos(forward) {cosine(g, g_fwd):.4f}, "
          f"rel. err. {rel_err(g, g_fwd):.3f}")
    assert rel_err(g, g_rev) < TOL  # equal: direction and norm
    assert cosine(g, g_rev) > 1 - TOL
    assert rel_err(g, g_fwd) > 0.2 and cosine(g, g_fwd) < 0.99  # and not the forward KL's gradient


def test_without_bias_correction_kl_term_follows_forward_kl(model_dir, tmp_path):
    """use_bias_correction_kl=False (trl <= 1.9.2 behaviour): plain per-token k3, the forward-KL gradient."""
    tr = build_trainer(model_dir, tmp_path, use_bias_correction_kl=False)
    g, g_rev, g_fwd = measure(tr)
    print(f"no bias correction: cos(forward) {cosine(g, g_fwd):.12f}, "
          f"|g|/|g_fwd| {(g.norm() / g_fwd.norm()).item():.12f}, rel. err. {rel_err(g, g_fwd):.2e}; "
          f"cos(reverse) {cosine(g, g_rev):.4f}, rel. err. {rel_err(g, g_rev):.3f}")
    assert rel_err(g, g_fwd) < TOL
    assert cosine(g, g_fwd) > 1 - TOL
    assert rel_err(g, g_rev) > 0.2 and cosine(g, g_rev) < 0.99
