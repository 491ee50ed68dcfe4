"""The "1-2" task (paper §4, LLM task 1, Fig. 6a/6b): ask for a uniformly random integer that is
either 1 or 2, answered in an XML format; reward 1.0 for a valid "1" or "2", else 0.0.

A completion is *valid* when it is one of a finite, enumerated set of strings: exactly one
``<answer>N</answer>`` element with N = 1 or 2, with at most one space or newline at each of its
four whitespace positions (before and after the element, around the digit): 81 strings per answer,
:func:`valid_answer_strings` [reading: the paper says "a valid 1 or 2 in an XML format" without
the exact rule]. The set is finite on purpose: MARA's target puts the same mass on every valid
output (Remark B.3), so with an open-ended set (any whitespace run, free text around the element)
the policy spreads onto ever more variants (measured: runs drift to maximally long completions, and
an enumeration of 81 strings then held only 11-17% of the valid mass), and no exact split could be
exhaustive. Here the parser *is* membership in the enumerated set, so the exact answer split
(:func:`exact_answer_split`) sums over every valid string. Anything else (no tags, an unclosed
tag, two spaces, ``<answer>one</answer>``, ``3``, empty text, ``None``) is invalid: the parser
never raises. ``strict=False`` (a lenient reading kept for comparison: the first element anywhere,
any whitespace inside the tags) is not used by the experiments. The valid-answer entropy is the
entropy of the 1-vs-2 split among valid answers (max ln 2), with its delta-method sampling error
(:func:`mdkl.metrics.binary_entropy_with_se`).

:class:`OneTwoTask` is the task object :func:`mdkl.lm.train` consumes (prompts, rewards, metrics).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Iterable

import numpy as np
import torch

from mdkl.lm.smalllm import ONETWO_PROMPT as PROMPT, ONETWO_PROMPTS as PROMPTS
from mdkl.metrics import binary_entropy_with_se

__all__ = ["PROMPT", "PROMPTS", "ANSWER_RE", "parse_answer", "parse_answers", "rewards",
           "answer_counts", "valid_entropy", "prompt_text", "OneTwoTask", "answer_preference",
           "valid_answer_strings", "exact_answer_split", "sampled_split_check", "ENUM_WHITESPACE", "INVALID", "ONE", "TWO"]

# PROMPT (the task prompt) and PROMPTS (its paraphrases) are defined with the small LM's corpus,
# which is built from them (mdkl.lm.smalllm.ONETWO_PROMPT / ONETWO_PROMPTS), and imported from there.
#: first <answer>...</answer> element (non-greedy, across newlines)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
INVALID, ONE, TWO = 0, 1, 2
#: the whitespace allowed at each of the four positions around the answer element and the digit
ENUM_WHITESPACE = ("", " ", "\n")


def parse_answer(text, strict: bool = True) -> int:
    """1 or 2 for a valid answer, 0 (:data:`INVALID`) otherwise; never raises (None, bytes, junk ok).
    ``strict`` (the task's rule): the text must be one of the enumerated valid strings
    (:func:`valid_answer_strings`); ``strict=False``: the first answer element anywhere."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        return INVALID
    if strict:
        return _VALID.get(text, INVALID)
    m = ANSWER_RE.search(text)
    if m is None:
        return INVALID
    v = m.group(1).strip()
    return ONE if v == "1" else TWO if v == "2" else INVALID


def parse_answers(texts: Iterable, strict: bool = True) -> np.ndarray:
    """Vector of answer codes (0 invalid, 1, 2), one per completion."""
    return np.fromiter((parse_answer(t, strict) for t in texts), dtype=np.int8)


def rewards(texts: Iterable, strict: bool = True) -> torch.Tensor:
    """Reward 1.0 for a valid "1" or "2", else 0.0 (float32 tensor)."""
    return torch.from_numpy((parse_answers(texts, strict) != INVALID).astype(np.float32))


def answer_counts(texts_or_codes) -> dict[str, int]:
    """``{'n1', 'n2', 'invalid', 'n'}`` counts of the completions (or of precomputed codes)."""
    c = texts_or_codes if isinstance(texts_or_codes, np.ndarray) else parse_answers(texts_or_codes)
    n1, n2 = int((c == ONE).sum()), int((c == TWO).sum())
    return {"n1": n1, "n2": n2, "invalid": int(c.size - n1 - n2), "n": int(c.size)}


def valid_entropy(texts_or_codes) -> tuple[float, float]:
    """Entropy (nats, max ln 2) of the 1-vs-2 split among valid answers and its standard error.
    (nan, nan) when no answer is valid."""
    k = answer_counts(texts_or_codes)
    return binary_entropy_with_se(k["n1"], k["n2"])


def prompt_text(tokenizer, prompt: str = PROMPT, answer_prefix: str = "") -> str:
    """The prompt as the model sees it: one user turn through the tokenizer's chat template
    (SmolLM2's own template; the small model's tokenizer carries a minimal one), ending with the
    assistant's generation prompt, then ``answer_prefix`` (text the assistant turn starts with)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True) + answer_prefix
    return prompt + "\n" + answer_prefix


@dataclass(frozen=True)
class OneTwoTask:
    """The 1-2 task as consumed by :func:`mdkl.lm.train`."""

    prompts_used: tuple[str, ...] = (PROMPT,)
    """Prompt texts (before the chat template) that RL samples from."""
    strict: bool = True
    """Valid only if the whole completion is the answer element (False: first element anywhere)."""
    answer_prefix: str = ""
    """Text pre-filled at the start of the assistant turn and prepended to every completion before
    parsing (SmolLM2: '<answer>', because at temperature 1 the 135M model almost never emits the
    format on its own; measured 0/32). '' for the small model, which learned the format."""
    name: str = "onetwo"
    """Short name (cache keys, tables)."""
    reward_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    """The rewards this task gives (0/1): :func:`mdkl.lm.train` checks a fixed MARA tau against it."""

    def prompts(self, tokenizer) -> list[str]:
        """Chat-formatted prompts."""
        return [prompt_text(tokenizer, p, self.answer_prefix) for p in self.prompts_used]

    def full_answers(self, completions) -> list:
        """Completions with the answer prefix put back (what the parser reads)."""
        if not self.answer_prefix:
            return list(completions)
        return [self.answer_prefix + c if isinstance(c, str) else c for c in completions]

    def rewards(self, completions) -> torch.Tensor:
        """Reward per completion (see :func:`rewards`)."""
        return rewards(self.full_answers(completions), self.strict)

    def outcomes(self, completions) -> np.ndarray:
        """Outcome id per completion for inverse-probability scaling: the parsed answer code
        (:func:`parse_answers`; every invalid completion shares one id), so the whitespace
        variants of one answer count as one outcome."""
        return parse_answers(self.full_answers(completions), self.strict)

    def exact_metrics(self, model, tokenizer) -> dict[str, float]:
        """Exact (teacher-forced) answer split of ``model`` over the enumerated valid strings,
        averaged over :attr:`prompts_used` (:func:`exact_answer_split`); the trainer logs it at
        every checkpoint."""
        return exact_answer_split(model, tokenizer, self.prompts_used, self.answer_prefix)

    def metrics(self, completions) -> dict[str, float]:
        """Answer distribution and valid-answer entropy of a batch of completions:
        ``p1``, ``p2``, ``invalid`` (fractions of all samples), ``p1_valid`` (share of "1" among
        valid answers), ``valid_entropy`` and ``valid_entropy_se`` (nats)."""
        codes = parse_answers(self.full_answers(completions), self.strict)
        k = answer_counts(codes)
        n = max(k["n"], 1)
        h, se = binary_entropy_with_se(k["n1"], k["n2"])
        nv = k["n1"] + k["n2"]
        return {"p1": k["n1"] / n, "p2": k["n2"] / n, "invalid": k["invalid"] / n,
                "p1_valid": k["n1"] / nv if nv else float("nan"),
                "valid_entropy": h, "valid_entropy_se": se}


def answer_preference(model, tokenizer, prompt: str = PROMPT,
                      answers: tuple[str, str] = ("<answer>1</answer>", "<answer>2</answer>"),
                      answer_prefix: str = "") -> dict:
    """Exact log-probabilities of the two canonical answers (ending with the end-of-turn token)
    under ``model``: the model's own preference for "1" over "2" before training. With an
    ``answer_prefix`` the answers are conditioned on it (they must start with it).

    Returns ``{'logp1', 'logp2', 'log_ratio'}`` (log ratio = logp1 - logp2, > 0 prefers "1").
    """
    from mdkl.lm.rollout import sequence_logprobs, tokenize_prompts

    if not all(a.startswith(answer_prefix) for a in answers):
        raise ValueError(f"answers must start with answer_prefix {answer_prefix!r}")
    answers = tuple(a[len(answer_prefix):] for a in answers)
    p_ids, p_mask = tokenize_prompts(tokenizer, [prompt_text(tokenizer, prompt, answer_prefix)] * 2)
    eos = tokenizer.eos_token or ""
    enc = tokenizer([a + eos for a in answers], add_special_tokens=False, padding=True,
                    return_tensors="pt", padding_side="right")
    with torch.inference_mode():
        lp = sequence_logprobs(model, p_ids, p_mask, enc["input_ids"], enc["attention_mask"])
    lp1, lp2 = float(lp[0]), float(lp[1])
    return {"logp1": lp1, "logp2": lp2, "log_ratio": lp1 - lp2}


def valid_answer_strings(answer_prefix: str = "", whitespace: tuple[str, ...] = ENUM_WHITESPACE) -> dict[int, list[str]]:
    """The valid completions, ``{1: S_1, 2: S_2}``: every
    ``w1 + "<answer>" + w2 + d + w3 + "</answer>" + w4`` with each w_i in ``whitespace`` (default
    "", " ", newline: 81 strings per answer). With the default whitespace these are exactly the
    strings the task's parser accepts (:func:`parse_answer` is membership in this set). With an
    ``answer_prefix`` (it must be a prefix of "<answer>"; w1 is then empty) the strings are the
    continuations after it (27 per answer after "<answer>"). S_1 and S_2 differ only in the digit,
    so any target uniform over valid outputs splits them 1/2."""
    if not "<answer>".startswith(answer_prefix):
        raise ValueError(f"answer_prefix {answer_prefix!r} must be a prefix of '<answer>'")
    w1s = ("",) if answer_prefix else whitespace
    out = {}
    for code, d in ((ONE, "1"), (TWO, "2")):
        out[code] = [(w1 + f"<answer>{w2}{d}{w3}</answer>{w4}")[len(answer_prefix) if not w1 else 0:]
                     for w1 in w1s for w2 in whitespace for w3 in whitespace for w4 in whitespace]
    return out


#: the task's valid set: full completion text -> answer code (the strict parser's whole rule)
_VALID = {t: code for code, texts in valid_answer_strings().items() for t in texts}


def exact_answer_split(model, tokenizer, prompts=(PROMPT,), answer_prefix: str = "",
                       whitespace: tuple[str, ...] = ENUM_WHITESPACE) -> dict[str, float]:
    """Exact probabilities of answering "1" and "2" under ``model``, summed over the enumerated valid
    strings S_1, S_2 (:func:`valid_answer_strings`, canonical tokenization, each followed by the
    end-of-turn token: :func:`mdkl.lm.rollout.completion_logprobs`), averaged over ``prompts``.

    Returns ``p1_exact``, ``p2_exact`` (probability mass of S_1, S_2: every valid string, in its
    canonical token split; a byte-level tokenizer can spell a string other ways too, and
    :func:`sampled_split_check` measures how much of the sampled mass does), ``valid_exact`` (their sum), ``p1_valid_exact`` = p1 / (p1 + p2) and
    ``valid_entropy_exact`` (nats), the split of the valid answers without sampling error."""
    from mdkl.lm.rollout import completion_logprobs

    sets = valid_answer_strings(answer_prefix, whitespace)
    texts = sets[ONE] + sets[TWO]
    n1 = len(sets[ONE])
    m1 = m2 = 0.0
    for p in prompts:
        pr = torch.exp(completion_logprobs(model, tokenizer, prompt_text(tokenizer, p, answer_prefix), texts))
        m1 += float(pr[:n1].sum()) / len(prompts)
        m2 += float(pr[n1:].sum()) / len(prompts)
    q = m1 / (m1 + m2) if m1 + m2 > 0 else float("nan")
    h = float(-sum(x * np.log(x) for x in (q, 1 - q) if x > 0)) if q == q else float("nan")
    return {"p1_exact": m1, "p2_exact": m2, "valid_exact": m1 + m2, "p1_valid_exact": q, "valid_entropy_exact": h}


def sampled_split_check(model, tokenizer, task: OneTwoTask, n: int, max_new_tokens: int, *, seed: int = 0,
                        prompt: str = PROMPT) -> dict[str, float]:
    """Sample ``n`` completions of ``prompt`` and check the exact split against them: the sampled
    P("1" | valid) with its standard error, the valid rate, and where the samples' mass sits that an
    exact split over canonical token sequences would miss: ``noncanonical_valid`` (share of valid
    samples whose token sequence is not the canonical split of their text followed by the
    end-of-turn token) and ``truncated`` (share of all samples that hit ``max_new_tokens`` without
    ending: invalid under the finite valid set, however they begin)."""
    from mdkl.lm.rollout import sample_completions, tokenize_prompts

    p_ids, p_mask = tokenize_prompts(tokenizer, [prompt_text(tokenizer, prompt, task.answer_prefix)])
    gen = torch.Generator(device=p_ids.device).manual_seed(seed)
    ids, mask = sample_completions(model, p_ids, p_mask, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, generator=gen, prompt_repeats=n)
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    codes = task.outcomes(texts)
    eos = tokenizer.eos_token_id
    noncanon = truncated = 0
    for row, m, t, c in zip(ids.tolist(), mask.tolist(), texts, codes):
        toks = [x for x, k in zip(row, m) if k]
        truncated += eos not in toks
        if c != INVALID:
            noncanon += toks != tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    k = answer_counts(codes)
    nv = k["n1"] + k["n2"]
    q = k["n1"] / nv if nv else float("nan")
    return {"n": n, "valid": nv / n, "p1_valid_sampled": q,
            "p1_valid_sampled_se": math.sqrt(q * (1 - q) / nv) if nv else float("nan"),
            "noncanonical_valid": noncanon / nv if nv else float("nan"), "truncated": truncated / n}
