"""The small language model trained from scratch, fully offline (the 1-2 task's model, paper §4).

:func:`generate_corpus` writes chat-formatted documents (answers to the 1-2 prompt in several XML
formats with a clear bias toward "1", some invalid outputs, and generic arithmetic / copy text);
:func:`build_tokenizer` trains a byte-level BPE tokenizer on it (``tokenizers``, no hub) with chat
special tokens and a chat template; :func:`pretrain_small_lm` trains a ~1-2M-parameter
``LlamaForCausalLM`` on it, seeded and cached with :func:`mdkl.runtime.cached_dir`;
:func:`load_small_lm` returns ``(model, tokenizer)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mdkl.runtime import atomic_write_bytes, cached_dir, fixed_threads, progress_bar, resolve_device

__all__ = ["SmallLMConfig", "ONETWO_SMALL", "generate_corpus", "build_tokenizer", "pretrain_small_lm", "small_lm_dir",
           "load_small_lm", "SPECIAL_TOKENS", "ROLE_TOKENS", "CHAT_TEMPLATE", "ONETWO_PROMPT", "ONETWO_PROMPTS"]

#: the 1-2 task's prompt [reading: the paper does not print its exact wording]. It lives here, in the
#: LM layer, because the small LM's pretraining corpus is built from it and its paraphrases
#: (:func:`generate_corpus`); :mod:`mdkl.tasks.onetwo` re-exports both as ``PROMPT`` / ``PROMPTS``
#: and :mod:`mdkl.lm.diagnose` takes it as its default prompt.
ONETWO_PROMPT = ("Generate a uniformly random integer that is either 1 or 2. "
                 "Reply in the format <answer>N</answer>.")
#: paraphrases (the small model's corpus uses them all; RL uses ONETWO_PROMPT unless told otherwise)
ONETWO_PROMPTS = (
    ONETWO_PROMPT,
    "Pick 1 or 2 uniformly at random. Reply in the format <answer>N</answer>.",
    "Flip a fair coin: answer 1 or 2. Reply in the format <answer>N</answer>.",
)

SPECIAL_TOKENS = {"bos_token": "<|bos|>", "eos_token": "<|end|>", "pad_token": "<|pad|>"}
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
#: minimal chat template of the small model: <|bos|><|user|>prompt<|assistant|>answer<|end|>
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                 "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")



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
    device: str = "auto"
    """Where pretraining runs: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda'
    (:func:`mdkl.runtime.resolve_device`). Initialization and batch order are drawn on the CPU,
    so they are the same on every device; the saved weights are the same file format either way."""
    threads: int = 2
    """Intra-op CPU threads of the pretraining, fixed (:class:`mdkl.runtime.fixed_threads`): a reduction
    split over another number of threads sums in another order, so without it the pretrained model
    (and every run on it) would depend on the caller's thread count (the 1-2 task's model: exact
    P("1" | valid) 0.9533 with 2 threads, 0.9498 with 1)."""


def generate_corpus(cfg: SmallLMConfig = SmallLMConfig()) -> list[tuple[str, str]]:
    """``[(user_prompt, assistant_answer), ...]``, ``cfg.n_docs`` pairs, seeded by ``cfg.seed``.

    1-2 documents use the prompts of :data:`ONETWO_PROMPTS` and answer in several XML
    formats (``<answer>1</answer>``, ``<answer> 2 </answer>``, ...) with P("1" | valid) =
    ``p_one``; a ``p_invalid`` share is invalid under :func:`mdkl.tasks.onetwo.parse_answer` (no tags, a
    word instead of the digit, an unclosed tag, a 3, a refusal, text around the element). Generic documents are small additions and
    copy tasks, so the model is a language model and not a lookup table.
    """
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
            prompt = ONETWO_PROMPTS[int(rng.integers(len(ONETWO_PROMPTS)))]
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


def train_causal_lm(tok, ids: torch.Tensor, mask: torch.Tensor, cfg, out: Path, *, progress: bool = True,
                    desc: str = "pretrain LM") -> None:
    """Pretrain a from-scratch Llama on tokenized documents (next-token loss on every document token)
    and save it with ``tok`` and its loss curve (``pretrain_loss.csv``) to ``out``: the one recipe of
    every from-scratch model here (the 1-2 task's small LM, the naming task's LM). ``cfg`` gives
    ``hidden_size, intermediate_size, n_layers, n_heads, max_len, lr, steps, batch_size, seed,
    device``; AdamW (weight decay 0.01, betas 0.9 / 0.95), 5% linear warmup then cosine decay,
    gradient norm clipped at 1, minibatches drawn by a generator seeded with ``cfg.seed`` and cut to
    their longest document; on ``cfg.threads`` CPU threads."""

    device = resolve_device(cfg.device)
    with fixed_threads(cfg.threads):
        _train_llama(tok, ids, mask, cfg, out, device, progress, desc)


def _train_llama(tok, ids, mask, cfg, out, device, progress, desc) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    mcfg = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_heads, max_position_embeddings=cfg.max_len,
                       tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses = []
    for _ in progress_bar(range(cfg.steps), desc=desc, show=progress, leave=False):
        b = torch.randint(ids.shape[0], (cfg.batch_size,), generator=gen)
        x, m = ids[b], mask[b]
        t = int(m.sum(1).max())
        x, m = x[:, :t].to(device), m[:, :t].to(device)
        loss = model(input_ids=x, attention_mask=m, labels=x.masked_fill(m == 0, -100)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval().to("cpu")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    atomic_write_bytes(out / "pretrain_loss.csv", pd.DataFrame({"loss": losses}).to_csv(index=False).encode())


def _pretrain_small_lm(cfg: SmallLMConfig, out: Path, progress: bool = True) -> None:
    docs = generate_corpus(cfg)
    tok = build_tokenizer([p + " " + a for p, a in docs], cfg.vocab_size)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": a}],
                                     tokenize=False) for p, a in docs]
    enc = tok(texts, add_special_tokens=False, padding="max_length", truncation=True,
              max_length=cfg.max_len, return_tensors="pt", padding_side="right")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    keep = int(mask.sum(1).max())
    ids, mask = ids[:, :keep], mask[:, :keep]
    train_causal_lm(tok, ids, mask, cfg, out, progress=progress, desc="pretrain small LM")


def small_lm_dir(cfg: SmallLMConfig = SmallLMConfig(), force: bool = False, progress: bool = True) -> Path:
    """Folder with the pretrained small LM + tokenizer (+ ``pretrain_loss.csv``), built once per
    (config, code) and cached under ``data/cache``."""
    return cached_dir("small-lm", cfg, lambda out: _pretrain_small_lm(cfg, out, progress),
                      code=[generate_corpus, build_tokenizer, _pretrain_small_lm], force=force)


def pretrain_small_lm(cfg: SmallLMConfig = SmallLMConfig(), force: bool = False, progress: bool = True):
    """Pretrain (or load from the cache) the small LM; returns ``(model, tokenizer)``. Alias of
    :func:`load_small_lm` that reads as the step it is."""
    return load_small_lm(cfg, force=force, progress=progress)


#: the small model of the 1-2 task (notebook 05): a corpus with P("1" | valid) = 0.95 and 10% invalid
#: answers, so that it prefers "1" like the paper's base model (``mdkl.tasks.onetwo_runs.SMALL_P95``)
ONETWO_SMALL = SmallLMConfig(p_one=0.95, p_invalid=0.1)


def load_small_lm(cfg: SmallLMConfig = SmallLMConfig(), force: bool = False, progress: bool = True):
    """``(model, tokenizer)`` of the small LM (fp32, eval mode, left-padding tokenizer)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    d = small_lm_dir(cfg, force=force, progress=progress)
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    return model, tok

