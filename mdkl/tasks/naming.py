"""The naming task: Table 1's mechanism measured exactly on the small LM (paper §4, LLM task 2, §5).

RL asks "Name a <category>." over the train categories of a :class:`mdkl.tasks.naming_world.World`
and rewards a completion with the reward model's score of the answer it names (true quality + a
length bias; :class:`NamingTask`). A completion is *valid* for a category when it is exactly one of
the category's answers (:func:`parse_answer`: membership in the enumerated set, no whitespace or
case variants; an empty, ``None`` or any other completion is invalid and scores 0).

Because the valid set is finite and the tokenizer has exactly one token sequence per string, the
policy's answer distribution is measured exactly by teacher forcing every valid answer followed by
the end-of-turn token (:func:`answer_probs`); what is left, 1 - (valid mass), is the invalid mass.
Per category (:func:`distribution_metrics`) and averaged over the train (``id_``) or held-out
(``ood_``) categories (:func:`split_metrics`, :meth:`NamingTask.exact_metrics`):

- ``valid``: probability of a valid answer; ``entropy``: entropy (nats) of the answer given valid;
- ``distinct``: expected number of distinct valid answers among ``k`` samples, sum_a 1 - (1 - p_a)^k;
- ``top_mass``: probability of a top-quality answer; ``top_coverage``: Definition 3.5 over the top
  set (min / max of their probabilities); ``top_seen``: expected share of the top set among k samples;
- ``long``: probability of a long answer (the reward model's bias; how far it transfers to held-out
  categories is how far the policy learned the error rather than the quality);
- ``proxy``: expected reward-model score (the in-distribution reward on train categories),
  ``true``: expected true quality (the out-of-distribution reward on held-out categories);
- ``kl``: KL(pi || pi_ref) of the answer distribution with the invalid mass as one outcome (needs
  the reference's probabilities, :meth:`NamingTask.with_reference`). Exact at the answer level; a
  lower bound of the sequence-level KL (they agree when pi / pi_ref is constant over invalid strings).

Exact targets (:func:`target_probs`, :func:`targets_table`): every target of the paper here is a
function of (pi_ref(y), R(y)) that is linear in pi_ref(y) where R is constant, so the invalid strings
(R = 0) can be lumped into one outcome exactly: vanilla reverse KL's G_beta (Rem. 3.1), vanilla
forward KL's G_fwd (Rem. 3.3), MARA under reverse KL (Rem. B.3: one constant mass on every answer
with proxy >= tau) and under forward KL (Algorithm 2, :func:`mdkl.mara.mara_forward_target`). The
held-out categories are never trained on, so they have no target: what RL does to them is
generalization, measured. :func:`sampled_check` compares the exact numbers with samples (and counts
the valid samples that reach a valid text through some other token sequence, e.g. a special token
the decoder drops), :func:`train_naming` trains and caches one run of :func:`mdkl.lm.train`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch

from mdkl.lm.rollout import sample_completions, sequence_logprobs, tokenize_prompts
from mdkl.lm.trainer import LMConfig, LMResult, train
from mdkl.mara import mara_forward_target, mara_target
from mdkl.runtime import cached
from mdkl.targets import check_beta, forward_kl_target, reverse_kl_target
from mdkl.tasks.naming_world import Category, NamingConfig, World, category_prompt, load_naming_lm, make_world

__all__ = ["INVALID", "parse_answer", "parse_answers", "NamingTask", "answer_probs", "distribution_metrics",
           "split_metrics", "category_table", "target_probs", "targets_table", "TARGETS", "METRICS",
           "sampled_check", "train_naming", "expected_distinct"]

#: answer index of an invalid completion
INVALID = -1
#: the exact targets :func:`target_probs` computes
TARGETS = ("vanilla reverse", "vanilla forward", "MARA reverse", "MARA forward")
#: the exact metrics of one answer distribution (:func:`distribution_metrics`), in table order
METRICS = ("valid", "entropy", "distinct", "top_mass", "top_coverage", "top_seen", "long", "proxy", "true", "kl")


# ----------------------------------------------------------------------------------------------
# parser and rewards
# ----------------------------------------------------------------------------------------------
def parse_answer(text, category: Category) -> int:
    """Index of ``text`` among ``category``'s answers, or :data:`INVALID` (-1). The whole completion
    must be the answer (no surrounding whitespace, no other case); never raises (``None``, bytes,
    junk: invalid unless bytes decode to a valid answer)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return INVALID
    if not isinstance(text, str):
        return INVALID
    try:
        return category.answers.index(text)
    except ValueError:
        return INVALID


def parse_answers(texts: Sequence, categories: Sequence[Category]) -> np.ndarray:
    """Answer index per completion (``categories[i]`` is the category completion i answers)."""
    if len(texts) != len(categories):
        raise ValueError(f"{len(texts)} completions for {len(categories)} categories: give one category each")
    return np.fromiter((parse_answer(t, c) for t, c in zip(texts, categories)), dtype=np.int64, count=len(texts))


def _scores(category: Category, reward: str) -> np.ndarray:
    return np.asarray(category.proxy if reward == "proxy" else category.quality, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# exact metrics of an answer distribution
# ----------------------------------------------------------------------------------------------
def expected_distinct(p: np.ndarray, k: int) -> np.ndarray:
    """Per answer, the probability that it appears among ``k`` independent samples, 1 - (1 - p)^k
    (their sum is the expected number of distinct answers)."""
    return -np.expm1(k * np.log1p(-np.clip(p, 0.0, 1.0)))


def distribution_metrics(p, category: Category, k: int = 10, ref=None) -> dict[str, float]:
    """The exact metrics (:data:`METRICS`, module docstring) of answer probabilities ``p`` (one per
    answer of ``category``; 1 - sum(p) is the invalid mass) for ``k`` samples; ``kl`` against the
    reference's answer probabilities ``ref`` (NaN without it). ``entropy`` and ``top_coverage`` are
    NaN when no answer has probability (nothing valid to measure)."""
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (len(category.answers),):
        raise ValueError(f"p has shape {p.shape}: give one probability per answer of {category.name!r} "
                         f"({len(category.answers)})")
    if not np.isfinite(p).all() or (p < 0).any() or p.sum() > 1 + 1e-6:
        raise ValueError("p must be finite, non-negative probabilities summing to at most 1 (the rest is invalid)")
    if k < 1:
        raise ValueError(f"k must be >= 1 samples (got {k})")
    valid = float(p.sum())
    top = category.top
    seen = expected_distinct(p, k)
    out = {"valid": valid, "entropy": float("nan"), "distinct": float(seen.sum()), "top_mass": float(p[top].sum()),
           "top_coverage": float("nan"), "top_seen": float(seen[top].mean()), "long": float(p[np.asarray(category.long)].sum()),
           "proxy": float(p @ np.asarray(category.proxy)), "true": float(p @ np.asarray(category.quality)),
           "kl": float("nan")}
    if valid > 0:
        q = p / valid
        with np.errstate(divide="ignore", invalid="ignore"):
            out["entropy"] = float(-np.where(q > 0, q * np.log(q), 0.0).sum())
        out["top_coverage"] = float(p[top].min() / p[top].max()) if p[top].max() > 0 else float("nan")
    if ref is not None:
        r = np.asarray(ref, dtype=np.float64)
        if r.shape != p.shape:
            raise ValueError(f"ref has shape {r.shape}, p {p.shape}: one reference probability per answer")
        full_p = np.append(p, max(0.0, 1.0 - valid))
        full_r = np.append(r, max(0.0, 1.0 - float(r.sum())))
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(full_p > 0, full_p * (np.log(full_p) - np.log(full_r)), 0.0)
        out["kl"] = float(terms.sum())
    return out


def split_metrics(probs: Sequence, world: World, k: int = 10, ref: Sequence | None = None) -> dict[str, float]:
    """:func:`distribution_metrics` of every category (``probs[i]``: category i's answer
    probabilities, ``ref[i]`` the reference's), averaged over the train categories (keys ``id_*``)
    and over the held-out ones (``ood_*``; absent when none is held out)."""
    if len(probs) != len(world.categories):
        raise ValueError(f"{len(probs)} probability vectors for {len(world.categories)} categories")
    rows = [distribution_metrics(p, c, k, None if ref is None else ref[i])
            for i, (p, c) in enumerate(zip(probs, world.categories))]
    out = {}
    for prefix, idx in (("id_", world.train), ("ood_", world.held_out)):
        if idx:
            out.update({prefix + m: float(np.mean([rows[i][m] for i in idx])) for m in METRICS})
    return out


def answer_probs(model, tokenizer, world: World, categories: Sequence[int] | None = None) -> list[np.ndarray]:
    """Exact probability of each valid answer (followed by the end-of-turn token) of each category
    (all, or the positions in ``categories``), teacher forced under ``model`` on its device, under
    inference mode: float64 arrays (the same numbers as :func:`mdkl.lm.rollout.completion_logprobs`)."""
    idx = range(len(world.categories)) if categories is None else categories
    device = next(model.parameters()).device
    eos = tokenizer.eos_token or ""
    out = []
    with torch.inference_mode():
        for i in idx:
            c = world.categories[i]
            p_ids, p_mask = tokenize_prompts(tokenizer, [category_prompt(tokenizer, c)])
            enc = tokenizer([a + eos for a in c.answers], add_special_tokens=False, padding=True,
                            return_tensors="pt", padding_side="right")
            lp = sequence_logprobs(model, p_ids.to(device), p_mask.to(device), enc["input_ids"].to(device),
                                   enc["attention_mask"].to(device), prompt_repeats=len(c.answers))
            out.append(np.exp(lp.double().cpu().numpy()))
    return out


def category_table(probs: Sequence, world: World, k: int = 10, ref: Sequence | None = None) -> pd.DataFrame:
    """One row per category: name, split ('train' / 'held out'), n answers and the exact metrics."""
    rows = []
    for i, (p, c) in enumerate(zip(probs, world.categories)):
        rows.append({"category": c.name, "split": "held out" if c.held_out else "train", "answers": len(c.answers),
                     **distribution_metrics(p, c, k, None if ref is None else ref[i])})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# the task object of mdkl.lm.train
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NamingTask:
    """The naming task as consumed by :func:`mdkl.lm.train`: prompts of the train categories,
    reward-model (or true-quality) rewards per prompt, sampled batch metrics and exact metrics."""

    cfg: NamingConfig = NamingConfig()
    """The world (and the model pretrained on it, :func:`mdkl.tasks.naming_world.load_naming_lm`)."""
    reward: Literal["proxy", "true"] = "proxy"
    """What RL maximizes: the reward model's score ('proxy', Table 1's in-distribution reward) or the
    true quality ('true', a control without reward-model error)."""
    k: int = 10
    """Samples per prompt of the distinct-answer and top-set metrics."""
    reference: tuple[tuple[float, ...], ...] | None = None
    """Exact answer probabilities of the reference per category (:meth:`with_reference`), for the
    exact KL; None: no ``kl`` metric."""
    name: str = "naming"
    """Short name (cache keys, tables)."""

    def __post_init__(self):
        if self.reward not in ("proxy", "true"):
            raise ValueError(f"reward must be 'proxy' or 'true' (got {self.reward!r})")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 (got {self.k})")
        if self.reference is not None and len(self.reference) != len(self.world.categories):
            raise ValueError("reference must hold one probability vector per category (use with_reference)")

    @property
    def world(self) -> World:
        """The world of :attr:`cfg` (:func:`mdkl.tasks.naming_world.make_world`, built once)."""
        return make_world(self.cfg)

    @property
    def reward_range(self) -> tuple[float, float]:
        """The rewards this task gives (0 for an invalid completion up to the best score):
        :func:`mdkl.lm.train` checks a fixed MARA tau against it."""
        w = self.world
        if self.reward == "proxy":
            return w.reward_range
        return 0.0, max(0.0, max(max(c.quality) for c in w.categories))

    @property
    def max_new_tokens(self) -> int:
        """Tokens the longest valid answer needs with its end-of-turn token (one byte per token)."""
        return self.world.max_answer_chars + 1

    def with_reference(self, model, tokenizer) -> "NamingTask":
        """This task with ``model``'s exact answer probabilities as the reference (for ``kl``)."""
        probs = answer_probs(model, tokenizer, self.world)
        return dataclasses.replace(self, reference=tuple(tuple(float(x) for x in p) for p in probs))

    def prompts(self, tokenizer) -> list[str]:
        """Chat-formatted prompts of the train categories, in :attr:`World.train` order."""
        w = self.world
        return [category_prompt(tokenizer, w.categories[i]) for i in w.train]

    def categories_of(self, prompt_index) -> list[Category]:
        """The category of each prompt position (an index into :meth:`prompts`)."""
        w = self.world
        train = w.train
        try:
            return [w.categories[train[int(i)]] for i in prompt_index]
        except IndexError:
            raise ValueError(f"prompt_index must be positions in prompts() (0..{len(train) - 1})") from None

    def rewards(self, completions, prompt_index=None) -> torch.Tensor:
        """Reward per completion (float32): the score of the answer it names in its prompt's
        category, 0 if invalid. ``prompt_index[i]``: completion i's position in :meth:`prompts`
        (required; :func:`mdkl.lm.task_rewards` passes it)."""
        if prompt_index is None:
            raise ValueError("NamingTask.rewards needs prompt_index (the category of each completion); "
                             "mdkl.lm.task_rewards passes it")
        cats = self.categories_of(prompt_index)
        codes = parse_answers(list(completions), cats)
        r = [0.0 if a == INVALID else float(_scores(c, self.reward)[a]) for a, c in zip(codes, cats)]
        return torch.tensor(r, dtype=torch.float32)

    def outcomes(self, completions) -> np.ndarray:
        """Outcome id per completion for inverse-probability scaling: the answer's id in the world
        (answers are unique across categories), -1 for anything that is no answer of any category."""
        w = self.world
        offsets = np.cumsum([0] + [len(c.answers) for c in w.categories])
        hits = [w.index.get(t) if isinstance(t, str) else None for t in completions]
        return np.asarray([-1 if h is None else int(offsets[h[0]]) + h[1] for h in hits], dtype=np.int64)

    def metrics(self, completions) -> dict[str, float]:
        """Cheap statistics of a batch (the prompt of each completion is not passed here):
        ``answered`` (share that is an answer of some category), ``empty`` (share of empty or
        non-string completions), ``long`` (share of long answers among answered), ``distinct``
        (distinct completions / completions)."""
        c = list(completions)
        n = max(len(c), 1)
        hits = [self.world.index.get(t) if isinstance(t, str) else None for t in c]
        ans = [h for h in hits if h is not None]
        cats = self.world.categories
        return {"answered": len(ans) / n, "empty": sum(not (isinstance(t, str) and t) for t in c) / n,
                "long": float(np.mean([cats[ci].long[ai] for ci, ai in ans])) if ans else float("nan"),
                "distinct": len({t for t in c if isinstance(t, str)}) / n}

    def exact_metrics(self, model, tokenizer) -> dict[str, float]:
        """:func:`split_metrics` of ``model``'s exact answer distribution: ``id_*`` over the train
        categories, ``ood_*`` over the held-out ones (``*_kl`` NaN without :attr:`reference`). The
        trainer logs them at every checkpoint."""
        return split_metrics(answer_probs(model, tokenizer, self.world), self.world, self.k, self.reference)


# ----------------------------------------------------------------------------------------------
# exact targets
# ----------------------------------------------------------------------------------------------
def target_probs(ref, rewards, beta: float, method: str, tau: float | None = None) -> np.ndarray:
    """The target of ``method`` (:data:`TARGETS`) over one category's answers, from the reference's
    answer probabilities ``ref`` (the rest, 1 - sum, is the invalid mass, reward 0) and the answers'
    ``rewards``: returns the target's answer probabilities (its invalid mass is 1 - their sum).
    MARA needs ``tau`` (fixed, on the reward scale; at least one answer must reach it). ``beta``
    must be > 0: at beta = 0 no KL term is left and every distribution on the best answers is optimal."""
    if method not in TARGETS:
        raise ValueError(f"unknown target {method!r}: use one of {TARGETS}")
    beta = check_beta(beta)
    r_ans = np.asarray(rewards, dtype=np.float64)
    p = np.asarray(ref, dtype=np.float64)
    if p.shape != r_ans.shape or p.ndim != 1 or p.size == 0:
        raise ValueError(f"ref {p.shape} and rewards {r_ans.shape} must be one entry per answer")
    if (p < 0).any() or p.sum() > 1 + 1e-6:
        raise ValueError("ref must be non-negative answer probabilities summing to at most 1")
    full = np.append(p, max(0.0, 1.0 - float(p.sum())))
    full = full / full.sum()
    r = np.append(r_ans, 0.0)
    if method.startswith("MARA"):
        if tau is None:
            raise ValueError("MARA's target needs tau (the fixed reward threshold)")
        if not (r_ans >= tau).any():
            raise ValueError(f"tau={tau} is above every answer's reward (max {r_ans.max()}): MARA never acts, "
                             f"choose tau <= {r_ans.max()}")
        t = (mara_target if method == "MARA reverse" else mara_forward_target)(full, r, beta, tau)
    else:
        t = (reverse_kl_target if method == "vanilla reverse" else forward_kl_target)(full, r, beta)
    return t[:-1]


def targets_table(task: NamingTask, ref_probs: Sequence, betas: Sequence[float], tau: float | None = None,
                  methods: Sequence[str] = TARGETS) -> pd.DataFrame:
    """Predicted metrics of each exact target, before training: one row per (method, beta) with
    the :data:`METRICS` of the target averaged over the train categories (``kl``: to the reference),
    computed from the reference's exact answer probabilities ``ref_probs`` (one vector per category,
    :func:`answer_probs`) and the task's rewards. The first row, ``reference``, is the reference
    itself (Table 1's Base row on the train prompts). ``tau`` defaults to the top quality."""
    w = task.world
    if tau is None:
        tau = float(task.cfg.tiers[0])
    rows = [{"method": "reference", "beta": float("nan"),
             **{m: float(np.mean([distribution_metrics(ref_probs[i], w.categories[i], task.k, ref_probs[i])[m]
                                  for i in w.train])) for m in METRICS}}]
    for method in methods:
        for beta in betas:
            per = []
            for i in w.train:
                c = w.categories[i]
                t = target_probs(ref_probs[i], _scores(c, task.reward), beta, method, tau)
                per.append(distribution_metrics(t, c, task.k, ref_probs[i]))
            rows.append({"method": method, "beta": float(beta), **{m: float(np.mean([d[m] for d in per]))
                                                                     for m in METRICS}})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Monte-Carlo check and a cached training run
# ----------------------------------------------------------------------------------------------
def sampled_check(model, tokenizer, task: NamingTask, n: int, *, seed: int = 0,
                  max_new_tokens: int | None = None) -> pd.DataFrame:
    """Sample ``n`` completions per category and put the sampled metrics next to the exact ones:
    one row per category with ``valid``, ``top_mass``, ``long``, ``proxy``, ``true`` (exact), their
    sampled means (``*_mc``) and standard errors (``*_se``), and counts of ``empty`` completions,
    ``truncated`` ones (no end-of-turn token within ``max_new_tokens``, default the task's) and
    ``noncanonical`` ones: a valid text reached by a token sequence other than its bytes followed by
    the end-of-turn token (e.g. with a special token the decoder drops). The exact sums count the
    canonical sequence only, so the ``*_mc`` means do too (a noncanonical sample counts as invalid
    there); the task's rewards, which read the decoded text, count it as valid."""
    if n < 2:
        raise ValueError(f"n must be >= 2 samples per category (got {n})")
    w = task.world
    max_new = max_new_tokens or task.max_new_tokens
    probs = answer_probs(model, tokenizer, w)
    eos = tokenizer.eos_token_id
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for ci, c in enumerate(w.categories):
        p_ids, p_mask = tokenize_prompts(tokenizer, [category_prompt(tokenizer, c)])
        ids, mask = sample_completions(model, p_ids.to(device), p_mask.to(device), max_new, eos_token_id=eos,
                                       pad_token_id=tokenizer.pad_token_id, generator=gen, prompt_repeats=n)
        ids, mask = ids.cpu(), mask.cpu()
        texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
        codes = parse_answers(texts, [c] * n)
        noncanon = np.zeros(n, dtype=bool)
        truncated = 0
        for j, (row, m, t, a) in enumerate(zip(ids.tolist(), mask.tolist(), texts, codes)):
            toks = [x for x, keep in zip(row, m) if keep]
            truncated += eos not in toks
            if a != INVALID:
                noncanon[j] = toks != tokenizer(t + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ok = (codes != INVALID) & ~noncanon
        a = np.where(ok, codes, 0)
        vals = {"valid": ok, "top_mass": ok & c.top[a], "long": ok & np.asarray(c.long)[a],
                "proxy": np.where(ok, np.asarray(c.proxy)[a], 0.0), "true": np.where(ok, np.asarray(c.quality)[a], 0.0)}
        exact = distribution_metrics(probs[ci], c, task.k)
        rec = {"category": c.name, "split": "held out" if c.held_out else "train", "n": n}
        for k, v in vals.items():
            v = v.astype(np.float64)
            rec.update({k: exact[k], f"{k}_mc": float(v.mean()), f"{k}_se": float(v.std(ddof=1) / math.sqrt(n))})
        rec.update({"empty": sum(t == "" for t in texts), "truncated": truncated, "noncanonical": int(noncanon.sum())})
        rows.append(rec)
    return pd.DataFrame(rows)


def train_naming(cfg: LMConfig, task: NamingTask = NamingTask(), *, force: bool = False,
                 progress: bool = True) -> LMResult:
    """:func:`mdkl.lm.train` of ``cfg`` on ``task`` from the naming LM of ``task.cfg``, cached by
    (run config, task, code). The task gets the pretrained model as its reference
    (:meth:`NamingTask.with_reference`) unless it has one, so checkpoints log the exact ``*_kl``.
    ``cfg.model`` must be 'small' (the model is the task's own; the field is otherwise unused)."""
    if cfg.model != "small":
        raise ValueError(f"the naming task trains its own small LM (NamingTask.cfg): use LMConfig(model='small'), "
                         f"not {cfg.model!r}")

    def run() -> LMResult:
        model, tok = load_naming_lm(task.cfg, progress=progress)
        t = task if task.reference is not None else task.with_reference(model, tok)
        return train(cfg, t, model, tok, progress=progress)

    return cached("naming-run", {"run": cfg, "task": task}, run, code=[train_naming], force=force)
