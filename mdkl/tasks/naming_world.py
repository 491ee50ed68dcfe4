"""The synthetic naming world of Table 1's powered test (paper §4, LLM task 2, Table 1, on the small
LM): prompts "Name a <category>." over many categories, each with a finite, known set of valid
answers, a known true quality per answer, a reward model with a known systematic error, and a
reference model pretrained on a corpus with Zipf-skewed answer frequencies.

Everything is made up, so the model knows only what the corpus tells it: categories and answers are
pseudo-words of consonant-vowel syllables (:func:`make_world`, seeded). Per category
(:class:`Category`):

- ``n_answers`` valid answers, unique across the whole world: ``n_top`` of top quality and the rest
  split between a middle and a low tier (:attr:`NamingConfig.tiers`, true quality 1.0 / 0.6 / 0.2;
  an invalid completion has quality 0);
- answers are short (2 syllables, 4 characters) or long (3 syllables, 6 characters): every
  top-quality answer is short, half of each lower tier is long;
- the reward model (the in-distribution reward) is true quality + :attr:`NamingConfig.bias` on long
  answers: a length bias, the systematic error of real judges. With the defaults a long middle
  answer scores 1.1 and beats every top answer (1.0): maximizing the proxy leaves the top set;
- the corpus names answer ``a`` with the Zipf frequency ``rank(a) ** -zipf_s`` (normalized), ranks a
  random permutation independent of quality, so the reference prefers some answers of every tier
  over others, and a ``p_invalid`` share of documents answers with a typo (one vowel changed).

The last ``n_held_out`` categories are held out of RL (their prompts are in the corpus, never in
training): the out-of-distribution reward is their true quality.

The tokenizer is byte level *without merges* (:func:`build_tokenizer` with a vocabulary of just the
256 bytes and the chat specials): every string has exactly one token sequence, so teacher-forcing
each valid answer followed by the end-of-turn token gives the exact probability of saying it
(:mod:`mdkl.tasks.naming`), with no other spelling of the same text to miss. :func:`naming_lm_dir`
pretrains the 1-2 task's architecture (``LlamaForCausalLM``, :mod:`mdkl.lm.smalllm`'s recipe: AdamW,
warmup + cosine) on the corpus, cached by (config, code) with :func:`mdkl.runtime.cached_dir`;
:func:`load_naming_lm` returns ``(model, tokenizer)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from mdkl.lm.smalllm import ROLE_TOKENS, SPECIAL_TOKENS, build_tokenizer, train_causal_lm
from mdkl.runtime import cache_key, cached_dir

__all__ = ["NamingConfig", "Category", "World", "make_world", "generate_corpus", "chat_prompt", "category_prompt",
           "byte_vocab_size", "naming_lm_dir", "is_pretrained", "load_naming_lm", "CONSONANTS", "VOWELS", "PROMPT_TEMPLATE"]

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
#: the user turn of every document and every RL prompt
PROMPT_TEMPLATE = "Name a {category}."


@dataclass(frozen=True)
class NamingConfig:
    """The world (categories, answers, quality, bias), its corpus and the small LM pretrained on it."""

    n_categories: int = 16
    """Categories in the world (train + held out)."""
    n_held_out: int = 4
    """The last this many categories are held out of RL (the out-of-distribution prompts)."""
    n_answers: int = 20
    """Valid answers per category."""
    n_top: int = 4
    """Top-quality answers per category (all short)."""
    tiers: tuple[float, float, float] = (1.0, 0.6, 0.2)
    """True quality of the top, middle and low tier (an invalid completion: 0)."""
    long_share: float = 0.5
    """Share of each lower tier (middle, low) whose answers are long (3 syllables)."""
    bias: float = 0.5
    """The reward model's systematic error: added to the true quality of every long answer."""
    zipf_s: float = 1.0
    """Zipf exponent of the corpus's answer frequencies within a category (0: uniform)."""
    p_invalid: float = 0.03
    """Share of corpus documents that answer with a typo (one vowel of a valid answer changed)."""
    n_docs: int = 24000
    """Documents in the corpus (categories uniform)."""
    hidden_size: int = 128
    """Transformer width (the 1-2 task's small LM)."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads."""
    intermediate_size: int = 384
    """MLP width."""
    max_len: int = 32
    """Model context in tokens (a document is ~25 byte tokens)."""
    steps: int = 800
    """Pretraining steps (AdamW)."""
    batch_size: int = 64
    """Documents per pretraining step."""
    lr: float = 3e-3
    """Peak learning rate (linear warmup 5%, cosine decay)."""
    seed: int = 0
    """Seed of the world, the corpus, the initialization and the batch order."""
    device: str = "auto"
    """Where pretraining runs (:func:`mdkl.runtime.resolve_device`); initialization and batch order
    are drawn on the CPU, so they are the same on every device."""
    threads: int = 2
    """Intra-op CPU threads of the pretraining, fixed so the model does not depend on the caller's
    thread count (:func:`mdkl.lm.smalllm.train_causal_lm`)."""

    def __post_init__(self):
        if self.n_categories < 1 or not 0 <= self.n_held_out < self.n_categories:
            raise ValueError(f"need n_categories >= 1 and 0 <= n_held_out < n_categories (got "
                             f"{self.n_categories}, {self.n_held_out}): at least one category must be trained on")
        if self.n_answers < 1:
            raise ValueError(f"n_answers must be >= 1 (got {self.n_answers}): a category with no valid answer "
                             f"has no reward to learn and no answer distribution to measure")
        if not 1 <= self.n_top <= self.n_answers:
            raise ValueError(f"need 1 <= n_top <= n_answers (got n_top={self.n_top}, n_answers={self.n_answers})")
        vals = (*self.tiers, self.long_share, self.bias, self.zipf_s, self.p_invalid)
        if len(self.tiers) != 3 or not all(math.isfinite(v) for v in vals):
            raise ValueError("tiers must be three finite qualities and long_share, bias, zipf_s, p_invalid finite")
        if not 0 <= self.long_share <= 1 or not 0 <= self.p_invalid < 1 or self.zipf_s < 0:
            raise ValueError("need 0 <= long_share <= 1, 0 <= p_invalid < 1 and zipf_s >= 0")
        if min(self.tiers) < 0 or self.bias < 0:
            raise ValueError(f"qualities and bias must be >= 0 (an invalid completion's reward, 0, is the floor): "
                             f"got tiers={self.tiers}, bias={self.bias}")


@dataclass(frozen=True)
class Category:
    """One category: its name, valid answers and, per answer, true quality, length class, proxy
    (reward-model) score and corpus frequency. Checked on construction: a category with no valid
    answer, duplicate answers, non-finite scores or frequencies that are not a distribution are
    refused with a ``ValueError``."""

    name: str
    answers: tuple[str, ...]
    quality: tuple[float, ...]
    long: tuple[bool, ...]
    proxy: tuple[float, ...]
    corpus_p: tuple[float, ...]
    held_out: bool = False

    def __post_init__(self):
        n = len(self.answers)
        if n == 0:
            raise ValueError(f"category {self.name!r} has no valid answer: give it at least one (its reward, "
                             f"entropy and targets are undefined otherwise)")
        if len(set(self.answers)) != n or not all(isinstance(a, str) and a for a in self.answers):
            raise ValueError(f"category {self.name!r}: answers must be distinct non-empty strings")
        for f in ("quality", "long", "proxy", "corpus_p"):
            if len(getattr(self, f)) != n:
                raise ValueError(f"category {self.name!r}: {f} has {len(getattr(self, f))} entries for {n} answers")
        if not all(math.isfinite(v) for v in (*self.quality, *self.proxy)):
            raise ValueError(f"category {self.name!r}: quality and proxy scores must be finite")
        p = np.asarray(self.corpus_p, dtype=np.float64)
        if (p < 0).any() or not abs(p.sum() - 1) < 1e-9:
            raise ValueError(f"category {self.name!r}: corpus_p must be a probability vector")

    @property
    def prompt(self) -> str:
        """The user turn: ``Name a <category>.``"""
        return PROMPT_TEMPLATE.format(category=self.name)

    @property
    def top(self) -> np.ndarray:
        """Mask of the top-quality answers (quality equal to the category's best)."""
        q = np.asarray(self.quality)
        return q == q.max()


@dataclass(frozen=True)
class World:
    """The categories, in order (train categories first, then the held-out ones)."""

    categories: tuple[Category, ...]
    index: dict = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not self.categories:
            raise ValueError("a world needs at least one category")
        names = [c.name for c in self.categories]
        if len(set(names)) != len(names):
            raise ValueError("category names must be distinct")
        ids = {}
        for ci, c in enumerate(self.categories):
            for ai, a in enumerate(c.answers):
                if a in ids:
                    raise ValueError(f"answer {a!r} is in two categories: answers must be unique across the world "
                                     f"(an answer's id is then the text alone)")
                ids[a] = (ci, ai)
        object.__setattr__(self, "index", ids)

    @property
    def train(self) -> list[int]:
        """Positions of the categories RL trains on."""
        return [i for i, c in enumerate(self.categories) if not c.held_out]

    @property
    def held_out(self) -> list[int]:
        """Positions of the held-out categories."""
        return [i for i, c in enumerate(self.categories) if c.held_out]

    @property
    def max_answer_chars(self) -> int:
        """Length of the longest valid answer (characters = byte tokens, the answers being ASCII)."""
        return max(len(a) for c in self.categories for a in c.answers)

    @property
    def reward_range(self) -> tuple[float, float]:
        """(0, highest proxy score): the in-distribution rewards (an invalid completion gets 0)."""
        return 0.0, max(0.0, max(max(c.proxy) for c in self.categories))


def _words(rng: np.random.Generator, n: int, syllables: int, taken: set[str]) -> list[str]:
    """``n`` new pseudo-words of ``syllables`` consonant-vowel syllables, none in ``taken`` (updated)."""
    room = (len(CONSONANTS) * len(VOWELS)) ** syllables - sum(len(w) == 2 * syllables for w in taken)
    if n > room:
        raise ValueError(f"the world needs {n} more {syllables}-syllable words but only {room} are left: "
                         f"use fewer categories or answers")
    out = []
    while len(out) < n:
        w = "".join(CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))]
                    for _ in range(syllables))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@lru_cache(maxsize=16)
def make_world(cfg: NamingConfig = NamingConfig()) -> World:
    """The seeded world of ``cfg`` (see the module docstring). Per category, with a random order of
    the answers: the first ``n_top`` are top quality, the rest alternate middle / low; within each
    lower tier the first ``round(long_share * size)`` are long; Zipf ranks are a second, independent
    permutation."""
    rng = np.random.default_rng(cfg.seed)
    taken: set[str] = set()
    names = _words(rng, cfg.n_categories, 2, taken)
    q_top, q_mid, q_low = (float(t) for t in cfg.tiers)
    cats = []
    for ci, name in enumerate(names):
        n_rest = cfg.n_answers - cfg.n_top
        tiers = [q_top] * cfg.n_top + [q_mid if i % 2 == 0 else q_low for i in range(n_rest)]
        long = [False] * cfg.n_answers
        for q in (q_mid, q_low):
            pos = [i for i in range(cfg.n_top, cfg.n_answers) if tiers[i] == q]
            for i in pos[:int(round(cfg.long_share * len(pos)))]:
                long[i] = True
        answers = [(_words(rng, 1, 3 if lg else 2, taken))[0] for lg in long]
        rank = rng.permutation(cfg.n_answers) + 1
        zipf = rank.astype(np.float64) ** -cfg.zipf_s
        order = rng.permutation(cfg.n_answers)  # shuffle so the list order carries no tier information
        cats.append(Category(
            name=name, answers=tuple(answers[i] for i in order), quality=tuple(tiers[i] for i in order),
            long=tuple(long[i] for i in order), proxy=tuple(tiers[i] + cfg.bias * long[i] for i in order),
            corpus_p=tuple(float(x) for x in (zipf / zipf.sum())[order]),
            held_out=ci >= cfg.n_categories - cfg.n_held_out))
    return World(tuple(cats))


def _typo(rng: np.random.Generator, answer: str, valid: set[str]) -> str:
    """``answer`` with one vowel replaced by another, never a valid answer of its category."""
    for _ in range(100):
        i = int(rng.choice([k for k, ch in enumerate(answer) if ch in VOWELS]))
        t = answer[:i] + VOWELS[rng.integers(len(VOWELS))] + answer[i + 1:]
        if t not in valid:
            return t
    return answer + answer[-1]


def generate_corpus(cfg: NamingConfig = NamingConfig()) -> list[tuple[str, str]]:
    """``[(user_prompt, assistant_answer), ...]``, ``cfg.n_docs`` documents seeded by ``cfg.seed``:
    a uniform category, an answer drawn from its corpus frequencies, replaced by a typo (an invalid
    answer) with probability ``p_invalid``."""
    world = make_world(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    docs = []
    for _ in range(cfg.n_docs):
        c = world.categories[int(rng.integers(len(world.categories)))]
        a = c.answers[int(rng.choice(len(c.answers), p=np.asarray(c.corpus_p)))]
        if rng.random() < cfg.p_invalid:
            a = _typo(rng, a, set(c.answers))
        docs.append((c.prompt, a))
    return docs


def byte_vocab_size() -> int:
    """256 bytes + the chat special tokens: a byte-level BPE of this size learns no merge."""
    return 256 + len(SPECIAL_TOKENS) + len(ROLE_TOKENS)


def chat_prompt(tokenizer, prompt: str) -> str:
    """One user turn through the tokenizer's chat template, ending with the assistant's generation prompt."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)


def category_prompt(tokenizer, category: Category) -> str:
    """The chat-formatted prompt of ``category`` (what RL and the exact metrics condition on)."""
    return chat_prompt(tokenizer, category.prompt)


def _pretrain(cfg: NamingConfig, out: Path, progress: bool = True) -> None:
    docs = generate_corpus(cfg)
    tok = build_tokenizer([p + " " + a for p, a in docs], byte_vocab_size())
    if len(tok) != byte_vocab_size():
        raise RuntimeError(f"the tokenizer has {len(tok)} tokens, expected {byte_vocab_size()} (bytes only)")
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": a}],
                                     tokenize=False) for p, a in docs]
    enc = tok(texts, add_special_tokens=False, padding="max_length", truncation=True,
              max_length=cfg.max_len, return_tensors="pt", padding_side="right")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    if int(mask.sum(1).max()) >= cfg.max_len:
        raise ValueError(f"a document fills max_len={cfg.max_len} tokens: raise max_len (answers would be cut)")
    train_causal_lm(tok, ids, mask, cfg, out, progress=progress, desc="pretrain naming LM")


def naming_lm_dir(cfg: NamingConfig = NamingConfig(), force: bool = False, progress: bool = True) -> Path:
    """Folder with the naming LM + tokenizer (+ ``pretrain_loss.csv``), built once per (config,
    code) and cached under ``data/cache``."""
    return cached_dir("naming-lm", cfg, lambda out: _pretrain(cfg, out, progress), code=[_pretrain], force=force)


def is_pretrained(cfg: NamingConfig = NamingConfig()) -> bool:
    """Whether the naming LM of ``cfg`` is already in the cache (:func:`naming_lm_dir` would load it)."""
    from mdkl import runtime

    return (runtime.CACHE_DIR / f"naming-lm-{cache_key(cfg, [_pretrain])}").is_dir()


def load_naming_lm(cfg: NamingConfig = NamingConfig(), force: bool = False, progress: bool = True):
    """``(model, tokenizer)`` pretrained on the world of ``cfg`` (fp32, eval mode, left-padding tokenizer)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    d = naming_lm_dir(cfg, force=force, progress=progress)
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
    return model, tok
