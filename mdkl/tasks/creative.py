"""Creative question answering with non-verifiable rewards (paper §4, LLM task 2, Table 1), offline.

The paper trains Qwen3-1.7B on WildChat prompts against a hub reward model and evaluates on
NoveltyBench prompts with a second reward model. Offline analogues (all documented here):

* **Prompts**: ``data/creative/prompts.csv`` (``id,split,category,prompt``), written for this
  project: open-ended requests with many acceptable short answers; ``train`` stands in for
  WildChat, ``test`` for NoveltyBench. :func:`load_prompts`, :func:`chat_prompt`.
* **In-distribution reward** (the training reward): SmolLM2-135M-Instruct used as a *judge*
  with a fixed rubric (:data:`JUDGE_RUBRIC`). The reward is the *expected rating* under the
  judge's next-token distribution restricted to the scale tokens "1".."9"
  (:func:`expected_rating`), so an unparseable judge output cannot exist by construction.
  The rubric + request prefix is encoded once per request and its KV cache shared by all
  answers to it (:class:`Judge`). Degenerate case: an empty (or whitespace-only) answer gets
  the lowest rating, 1, without calling the judge.
* **Out-of-distribution reward** (evaluation only, test prompts): a different model and rubric,
  built on the all-MiniLM-L6-v2 sentence embeddings (:class:`EmbeddingScorer`): relevance of the
  answer to the request (cosine) plus the difference of its similarity to "good answer" and "bad
  answer" rubric anchors. Empty answer: :data:`EMPTY_OOD_REWARD` (below any non-empty score).
* :class:`CreativeTask`: the task object :func:`mdkl.lm.train` consumes. Its ``rewards`` needs
  the request of each completion, so it takes the ``prompt_index`` argument that the trainer
  passes to tasks that accept it (backward compatible: :func:`mdkl.lm.task_rewards`).
* :func:`sample_for_eval` / :func:`score_samples` / :func:`per_prompt_metrics` /
  :func:`table_row` (:func:`evaluate_policy` runs the first three): Table 1's evaluation (k samples per test prompt, both rewards, n-gram EAD,
  semantic diversity, number of distinct answers; mean +- bootstrap SEM over prompts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mdkl.runtime import DATA_DIR

__all__ = ["PROMPTS_CSV", "JUDGE_SYSTEM", "JUDGE_RUBRIC", "SCALE", "EMPTY_OOD_REWARD", "OOD_GOOD", "OOD_BAD",
           "load_prompts", "chat_prompt", "expected_rating", "Judge", "get_judge", "EmbeddingScorer",
           "get_scorer", "CreativeTask", "sample_for_eval", "score_samples", "per_prompt_metrics",
           "table_row", "evaluate_policy", "is_empty"]

PROMPTS_CSV = DATA_DIR / "creative" / "prompts.csv"
#: rating scale of the judge (single-token digits in SmolLM2's tokenizer)
SCALE = tuple(str(k) for k in range(1, 10))
JUDGE_SYSTEM = "You are a strict and fair judge of answers to open-ended requests."
#: the fixed rubric [choice: the paper's reward model is Skywork-Reward-V2, a hub model]
JUDGE_RUBRIC = ("Rate the answer to the request on a scale from 1 (bad: empty, off-topic, nonsense or "
                "unhelpful) to 9 (excellent: relevant, creative, specific and well written). "
                "Reply with one digit.")
#: rubric anchors of the out-of-distribution scorer (a different rubric from the judge's)
OOD_GOOD = ("A short, original and vivid answer that directly fulfils the request.",
            "A specific, imaginative and surprising suggestion.")
OOD_BAD = ("I am sorry, I cannot help with that.", "A vague, generic or off-topic reply.",
           "Random words and broken text.")
#: out-of-distribution reward of an empty answer (below any non-empty answer's score, which is >= -2)
EMPTY_OOD_REWARD = -2.0


def is_empty(text) -> bool:
    """True for None / non-strings and strings that are empty after stripping whitespace."""
    return not isinstance(text, str) or not text.strip()


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------
def load_prompts(split: str = "train", n: int | None = None, path: Path | str | None = None) -> pd.DataFrame:
    """Prompts of ``split`` ('train' or 'test') from the csv (``id,split,category,prompt``), in file
    order; with ``n``, ``n`` prompts evenly spaced over the split (the file is ordered by category,
    so every category is represented; deterministic, the same subset for every method)."""
    p = Path(path) if path is not None else PROMPTS_CSV
    if not p.exists():
        raise FileNotFoundError(f"{p} is missing: it ships with the repository (data/creative/prompts.csv)")
    df = pd.read_csv(p)
    missing = {"id", "split", "category", "prompt"} - set(df.columns)
    if missing:
        raise ValueError(f"{p} lacks columns {sorted(missing)}: expected id,split,category,prompt")
    if split not in set(df["split"]):
        has = sorted(set(df["split"]))
        fix = (f"add rows with split={split!r} to {p.name} (Table 1 evaluates on held-out test prompts)"
               if split in ("train", "test") else "use 'train' or 'test'")
        raise ValueError(f"split {split!r} not in {p} (has {has}): {fix}")
    df = df[df["split"] == split].reset_index(drop=True)
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be >= 1 (got {n})")
        n = min(n, len(df))
        df = df.iloc[np.linspace(0, len(df) - 1, n).round().astype(int)].reset_index(drop=True)
    return df


@lru_cache(maxsize=16)
def _questions(split: str, n: int | None, path: str, mtime: int | None, col: str = "prompt") -> tuple[str, ...]:
    """:func:`load_prompts`' column ``col`` (requests, or ids), memoized per file modification time (``mtime``)."""
    return tuple(load_prompts(split, n, path)[col].tolist())


def chat_prompt(tokenizer, request: str, instruction: str = "") -> str:
    """The request as one user turn through SmolLM2's chat template, ending with the assistant's
    generation prompt (:func:`mdkl.tasks.onetwo.prompt_text`), with ``instruction`` appended to it."""
    from mdkl.tasks.onetwo import prompt_text

    return prompt_text(tokenizer, request + instruction)


# ----------------------------------------------------------------------------------------------
# in-distribution reward: SmolLM2 as a judge
# ----------------------------------------------------------------------------------------------
def expected_rating(scale_logits: torch.Tensor) -> torch.Tensor:
    """Expected rating sum_k k p_k of the judge's next-token distribution restricted (renormalised)
    to the scale tokens; ``scale_logits`` [N, K] are the logits of "1".."K". Always in [1, K]."""
    p = torch.softmax(scale_logits.double(), -1)
    return p @ torch.arange(1, scale_logits.shape[-1] + 1, dtype=torch.float64, device=p.device)


class Judge:
    """SmolLM2-135M-Instruct (frozen, its own copy) rating answers with :data:`JUDGE_RUBRIC`.

    Judge input: system :data:`JUDGE_SYSTEM`; user ``rubric + "Request: q" + "Answer:\\n" + a``;
    assistant turn pre-filled with ``"Rating: "``. The part before the answer (rubric + request) is
    encoded once per distinct request; answers to it reuse its KV cache (exact). Only the last
    position's hidden state goes through the LM head. ``score`` returns the expected rating,
    ``details`` also the mass the full next-token distribution puts on the scale (diagnostic).
    The judge runs on its model's device (:func:`get_judge` puts it on the configured one); ratings
    come back to the CPU.
    """

    def __init__(self, model, tokenizer, batch: int = 64, max_answer_chars: int = 400):
        self.model, self.tok, self.batch, self.max_answer_chars = model.eval(), tokenizer, batch, max_answer_chars
        self.device = next(model.parameters()).device
        ids = [tokenizer.convert_tokens_to_ids(s) for s in SCALE]
        for s, i in zip(SCALE, ids):
            if tokenizer.decode([i]) != s:
                raise ValueError(f"rating token {s!r} is not a single token of this tokenizer")
        self.scale_ids = torch.tensor(ids, device=self.device)
        marker = "\x00ANSWER\x00"
        full = tokenizer.apply_chat_template(
            [{"role": "system", "content": JUDGE_SYSTEM},
             {"role": "user", "content": f"{JUDGE_RUBRIC}\nRequest:\n{{q}}\nAnswer:\n{marker}"}],
            tokenize=False, add_generation_prompt=True) + "Rating: "
        self._prefix, self._suffix = full.split(marker)

    def _suffix_text(self, answer: str) -> str:
        return answer[: self.max_answer_chars] + self._suffix

    @torch.inference_mode()
    def _forward(self, questions: list[str], suffixes: list[str], repeats: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Three cache levels: the rubric (identical for all, encoded once), each question (once per
        distinct question), each answer + rating prompt; ``repeats`` answers per question."""
        from mdkl.lm.rollout import positions

        head, q_tmpl = self._prefix.split("{q}")
        dev = self.device
        h_ids = self.tok(head, add_special_tokens=False, return_tensors="pt")["input_ids"].to(dev)
        q = self.tok([x + q_tmpl for x in questions], add_special_tokens=False, padding=True, return_tensors="pt",
                     padding_side="left").to(dev)
        s = self.tok(suffixes, add_special_tokens=False, padding=True, return_tensors="pt",
                     padding_side="right").to(dev)
        base = self.model.get_decoder()
        n0, nq = h_ids.shape[1], len(questions)
        past = base(input_ids=h_ids, use_cache=True).past_key_values
        past.batch_repeat_interleave(nq)
        mask = torch.cat([torch.ones(nq, n0, dtype=q["attention_mask"].dtype, device=dev), q["attention_mask"]], 1)
        base(input_ids=q["input_ids"], attention_mask=mask, position_ids=n0 + positions(q["attention_mask"]),
             past_key_values=past, use_cache=True)
        if repeats > 1:
            past.batch_repeat_interleave(repeats)
            mask = mask.repeat_interleave(repeats, 0)
        s_mask = s["attention_mask"]
        pos = mask.sum(-1, keepdim=True) + torch.arange(s_mask.shape[1], device=dev)
        h = base(input_ids=s["input_ids"], attention_mask=torch.cat([mask, s_mask], 1), position_ids=pos,
                 past_key_values=past, use_cache=True).last_hidden_state
        last = h[torch.arange(h.shape[0], device=dev), s_mask.sum(-1) - 1]
        logits = self.model.lm_head(last).float()
        scale = logits[:, self.scale_ids]
        mass = torch.exp(torch.logsumexp(scale, -1) - torch.logsumexp(logits, -1))
        return expected_rating(scale).cpu(), mass.double().cpu()

    def details(self, questions: Sequence[str], answers: Sequence[str]) -> pd.DataFrame:
        """``rating`` (expected, in [1, 9]; 1 for empty answers) and ``scale_mass`` (NaN for empty
        answers) per (question, answer) pair. Consecutive pairs with the same question share its
        prefix cache when every run of equal questions has the same length (the trainer's groups)."""
        q, a = list(questions), list(answers)
        if len(q) != len(a):
            raise ValueError(f"{len(q)} questions for {len(a)} answers: pass one question per answer")
        n = len(a)
        rating, mass = np.ones(n), np.full(n, np.nan)
        idx = [i for i in range(n) if not is_empty(a[i])]
        if idx:
            # runs of equal questions among the non-empty answers -> shared prefix cache
            runs = []
            for i in idx:
                if runs and q[runs[-1][-1]] == q[i]:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            sizes = {len(r) for r in runs}
            rep = sizes.pop() if len(sizes) == 1 else 1
            order = [i for r in runs for i in r] if rep > 1 else idx
            per = max(1, self.batch // rep)
            for s in range(0, len(order), per * rep):
                chunk = order[s: s + per * rep]
                pre = [q[i] for i in chunk[::rep]]
                suf = [self._suffix_text(a[i]) for i in chunk]
                r, m = self._forward(pre, suf, rep)
                rating[chunk], mass[chunk] = r.numpy(), m.numpy()
        return pd.DataFrame({"rating": rating, "scale_mass": mass})

    def score(self, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
        """Expected rating per (question, answer) pair (see :meth:`details`)."""
        return self.details(questions, answers)["rating"].to_numpy()


def get_judge(device: str = "auto") -> Judge:
    """The judge on a frozen SmolLM2-135M-Instruct copy on ``device`` ('auto': CUDA when
    available, else CPU; :func:`mdkl.runtime.resolve_device`), loaded once per process and device."""
    from mdkl.runtime import resolve_device

    return _judge_on(str(resolve_device(device)))


@lru_cache(maxsize=2)
def _judge_on(device: str) -> Judge:
    from mdkl.lm.models import load_smollm2

    model, tok = load_smollm2(device=device)
    model.requires_grad_(False)
    return Judge(model, tok)


# ----------------------------------------------------------------------------------------------
# out-of-distribution reward: MiniLM relevance + rubric anchors
# ----------------------------------------------------------------------------------------------
class EmbeddingScorer:
    """Out-of-distribution reward on all-MiniLM-L6-v2 embeddings (a different model and rubric):

        R_out(q, a) = cos(e_q, e_a) + mean_g cos(e_a, e_good_g) - mean_b cos(e_a, e_bad_b)

    with the anchors :data:`OOD_GOOD` / :data:`OOD_BAD`; in [-3, 3], empty answers get
    :data:`EMPTY_OOD_REWARD`. ``embed``: texts -> L2-normalised [N, d] array."""

    def __init__(self, embed):
        self.embed = embed
        self._good = np.asarray(embed(list(OOD_GOOD)))
        self._bad = np.asarray(embed(list(OOD_BAD)))

    def score(self, questions: Sequence[str], answers: Sequence[str], answer_emb: np.ndarray | None = None) -> np.ndarray:
        q, a = list(questions), list(answers)
        if len(q) != len(a):
            raise ValueError(f"{len(q)} questions for {len(a)} answers: pass one question per answer")
        out = np.full(len(a), EMPTY_OOD_REWARD)
        idx = [i for i in range(len(a)) if not is_empty(a[i])]
        if not idx:
            return out
        uq = sorted({q[i] for i in idx})
        eq = dict(zip(uq, np.asarray(self.embed(uq))))
        ea = np.asarray(answer_emb)[idx] if answer_emb is not None else np.asarray(self.embed([a[i] for i in idx]))
        rel = np.einsum("nd,nd->n", np.stack([eq[q[i]] for i in idx]), ea)
        out[idx] = rel + (ea @ self._good.T).mean(1) - (ea @ self._bad.T).mean(1)
        return out


def get_scorer(device: str = "auto") -> EmbeddingScorer:
    """The out-of-distribution scorer on :func:`mdkl.lm.models.embed` (MiniLM on ``device``, 'auto':
    CUDA when available, else CPU), built once per process and device."""
    from mdkl.runtime import resolve_device

    return _scorer_on(str(resolve_device(device)))


@lru_cache(maxsize=2)
def _scorer_on(device: str) -> EmbeddingScorer:
    from functools import partial

    from mdkl.lm.models import embed

    return EmbeddingScorer(partial(embed, device=device))


# ----------------------------------------------------------------------------------------------
# the task for mdkl.lm.train
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreativeTask:
    """Creative QA as consumed by :func:`mdkl.lm.train`: prompts of one split, judge rewards."""

    split: str = "train"
    """Prompt split ('train' for RL, 'test' for the evaluation)."""
    n_prompts: int | None = None
    """Use n prompts evenly spaced over the split (None: all; see :func:`load_prompts`)."""
    instruction: str = ""
    """Appended to every request (the shipped prompts already ask for short answers)."""
    csv: str | None = None
    """Prompt file (None: :data:`PROMPTS_CSV`)."""
    name: str = "creative"
    """Short name (cache keys, tables)."""
    device: str = "auto"
    """Where the judge runs: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda'
    (:func:`get_judge`); its ratings come back to the CPU."""

    def questions(self) -> list[str]:
        """Requests (before the chat template and the instruction), in prompt order (the file is
        read once per modification time, not on every reward call)."""
        return self._column("prompt")

    def prompt_ids(self) -> list[str]:
        """The prompts' ids in the csv (e.g. ``test-001``), in :meth:`questions` order: the key that
        pairs two evaluations of the same prompt, whatever subset each used."""
        return self._column("id")

    def _column(self, col: str) -> list[str]:
        p = Path(self.csv) if self.csv is not None else PROMPTS_CSV
        mtime = p.stat().st_mtime_ns if p.exists() else None  # missing: load_prompts names the fix
        return list(_questions(self.split, self.n_prompts, str(p), mtime, col))

    def prompts(self, tokenizer) -> list[str]:
        """Chat-formatted prompts (:func:`chat_prompt`)."""
        return [chat_prompt(tokenizer, q, self.instruction) for q in self.questions()]

    def rewards(self, completions, prompt_index=None) -> torch.Tensor:
        """Judge reward (expected rating, 1-9) of each completion given its request;
        ``prompt_index[i]`` is completion i's position in :meth:`prompts` (required)."""
        if prompt_index is None:
            raise ValueError("CreativeTask.rewards needs prompt_index (the request of each completion); "
                             "mdkl.lm.task_rewards passes it")
        qs = self.questions()
        idx = [int(i) for i in prompt_index]
        if len(idx) != len(completions):
            raise ValueError(f"{len(idx)} prompt indices for {len(completions)} completions")
        return torch.tensor(get_judge(self.device).score([qs[i] for i in idx], list(completions)))

    def metrics(self, completions) -> dict[str, float]:
        """Cheap batch statistics: mean length (characters), share of empty answers, share of
        distinct answers (exact match after lower-casing and stripping)."""
        c = [x if isinstance(x, str) else "" for x in completions]
        n = max(len(c), 1)
        return {"chars": float(np.mean([len(x) for x in c])) if c else 0.0,
                "empty": sum(is_empty(x) for x in c) / n,
                "distinct_exact": len({x.strip().lower() for x in c}) / n}


# ----------------------------------------------------------------------------------------------
# Table 1 evaluation
# ----------------------------------------------------------------------------------------------
def sample_for_eval(model, tokenizer, task: CreativeTask, k: int, max_new_tokens: int, *, seed: int = 0,
                    temperature: float = 1.0, batch_prompts: int = 8) -> pd.DataFrame:
    """``k`` samples per prompt of ``task`` (KV-cached, seeded): DataFrame ``prompt_id`` (the csv id,
    :meth:`CreativeTask.prompt_ids`), ``question, sample, text`` (``k`` consecutive rows per
    prompt). Samples on the model's device, with a generator there."""
    from mdkl.lm.rollout import sample_completions, tokenize_prompts

    qs = task.questions()
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in tokenize_prompts(tokenizer, task.prompts(tokenizer)))
    gen = torch.Generator(device=device).manual_seed(seed)
    texts = []
    for s in range(0, len(qs), batch_prompts):
        c, _ = sample_completions(model, ids[s:s + batch_prompts], mask[s:s + batch_prompts], max_new_tokens,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  temperature=temperature, generator=gen, prompt_repeats=k)
        texts += tokenizer.batch_decode(c.cpu(), skip_special_tokens=True)
    return pd.DataFrame({"prompt_id": np.repeat(task.prompt_ids(), k), "question": np.repeat(qs, k),
                         "sample": np.tile(np.arange(k), len(qs)), "text": texts})


def score_samples(samples: pd.DataFrame, judge: Judge | None = None, scorer: EmbeddingScorer | None = None
                  ) -> tuple[pd.DataFrame, np.ndarray]:
    """Both rewards of every sample: adds ``r_in`` (judge), ``scale_mass``, ``r_out`` (embedding
    scorer); returns ``(samples, answer embeddings)`` (the embeddings feed the diversity metrics)."""
    judge = judge or get_judge()
    scorer = scorer or get_scorer()
    q, a = samples["question"].tolist(), samples["text"].tolist()
    d = judge.details(q, a)
    emb = np.asarray(scorer.embed(a))
    out = samples.assign(r_in=d["rating"].to_numpy(), scale_mass=d["scale_mass"].to_numpy(),
                         r_out=scorer.score(q, a, answer_emb=emb))
    return out, emb


def per_prompt_metrics(scored: pd.DataFrame, emb: np.ndarray, threshold: float | None = None) -> pd.DataFrame:
    """One row per prompt: mean ``r_in`` / ``r_out``, ``ead`` (n-gram EAD, n = 1..5, of its k
    samples), ``semantic_div`` (mean pairwise cosine distance), ``n_distinct`` (distinct answers,
    normalised match + embedding threshold), via :mod:`mdkl.metrics`."""
    from mdkl import metrics

    threshold = metrics.EQUIVALENCE_THRESHOLD if threshold is None else threshold
    rows = []
    for pid, d in scored.groupby("prompt_id", sort=True):
        ix = d.index.to_numpy()
        texts = d["text"].tolist()
        rows.append({"prompt_id": pid, "r_in": d["r_in"].mean(), "r_out": d["r_out"].mean(),
                     "ead": metrics.mean_ead(texts, n_max=5), "semantic_div": metrics.semantic_diversity(emb[ix]),
                     "n_distinct": metrics.n_distinct(texts, emb[ix], threshold)})
    return pd.DataFrame(rows)


def table_row(per_prompt: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean and bootstrap SEM over prompts of each per-prompt metric (Table 1's ``mean +- sem``)."""
    from mdkl.metrics import bootstrap_sem

    out = {}
    for col in ("r_in", "r_out", "ead", "semantic_div", "n_distinct"):
        v = per_prompt[col].to_numpy(float)
        out[col] = float(np.mean(v))
        out[f"{col}_sem"] = float(bootstrap_sem(v, n_boot, seed)) if len(v) > 1 else math.nan
    return out


def evaluate_policy(model, tokenizer, task: CreativeTask, k: int, max_new_tokens: int, *, seed: int = 0,
                    temperature: float = 1.0) -> dict:
    """Table 1's evaluation of one policy: ``k`` samples per prompt of ``task`` (:func:`sample_for_eval`),
    both rewards (:func:`score_samples`) and the per-prompt metrics (:func:`per_prompt_metrics`,
    keyed by the csv ``prompt_id``). Returns ``samples`` (one row per answer, without the request
    text), ``per_prompt`` and ``timing`` (``sample_s``, ``score_s``, ``answers``, ``sample_tokens``)."""
    import time

    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2 (got {k}): the diversity metrics compare a prompt's samples")
    t0 = time.perf_counter()
    samples = sample_for_eval(model, tokenizer, task, int(k), max_new_tokens, seed=seed, temperature=temperature)
    t1 = time.perf_counter()
    scored, emb = score_samples(samples)
    per_prompt = per_prompt_metrics(scored, emb)
    t2 = time.perf_counter()
    n_tok = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in samples["text"])
    return {"samples": scored.drop(columns=["question"]), "per_prompt": per_prompt,
            "timing": {"sample_s": t1 - t0, "score_s": t2 - t1, "answers": len(samples), "sample_tokens": n_tok}}
