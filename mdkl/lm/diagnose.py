"""A collapse diagnostic for any causal LM: will the KL-regularized target be unimodal? (paper §3-§5)

Before an RL job, give a model, a prompt, the candidate completions you care about and their
rewards. :func:`diagnose` computes, exactly and without sampling:

* the reference log-probabilities log pi_ref(y | prompt) of every candidate (teacher forced, with
  the end-of-turn token appended, through the tokenizer's chat template: :func:`reference_logprobs`);
* on the candidate set (optionally plus one "rest" outcome carrying the remaining reference mass),
  for every beta of a grid: the reverse-KL target G_beta (Remark 3.1), the forward-KL target G_fwd
  (Remark 3.3), and MARA's targets under each KL (Remark B.3 with Algorithm 1; Algorithm 2 under
  forward KL, :func:`mdkl.mara.mara_forward_target`);
* each target's entropy, expected reward, favoured candidate and favoured label (e.g. the answer
  "1" or "2" a candidate parses to), and the label-level entropy among labelled candidates;
* the Remark 4.4 flip points: for every pair where one candidate has the higher reward and the
  other the higher reference probability, the beta* above which the better-supported one wins.

The answer to "will my target be unimodal?" is in the label entropy: with equal rewards every
target of vanilla RL keeps the reference's split (Remark 4.3), whatever beta, while MARA's is
uniform over the good candidates. :func:`diagnose_logprobs` is the same computation from given
log-probabilities (no model). Command line::

    python -m mdkl.lm.diagnose --model small --candidates "<answer>1</answer>" "<answer>2</answer>" \\
        --rewards 1 1 --labels 1 2 --betas 0.001 0.01 0.03 --rest-reward 0
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from mdkl.mara import mara_forward_target, mara_target
from mdkl.metrics import entropy
from mdkl.targets import check_beta, forward_kl_target, indifference_beta, reverse_kl_target

__all__ = ["Diagnosis", "reference_logprobs", "check_candidates", "check_prompt", "diagnose",
           "diagnose_logprobs", "TARGETS", "main"]

#: the four targets, as (name, KL direction, MARA)
TARGETS = (("vanilla reverse", "reverse", False), ("MARA reverse", "reverse", True),
           ("vanilla forward", "forward", False), ("MARA forward", "forward", True))
REST = "<rest>"


@dataclass
class Diagnosis:
    """What :func:`diagnose` returns.

    ``candidates``: the candidate table (text, label, reward, logp_ref = exact sequence log-prob,
    ref = reference probability renormalized over the outcomes). ``targets``: one row per (beta,
    target) with entropy (nats, over outcomes), label_entropy (nats, the split of the labels among
    labelled candidates), p_<label> (that split), expected reward, favoured (the most likely
    outcome) and its label, favoured_answer (the label with the largest share; 'tie' if equal).
    ``flips``: the Remark 4.4 pairs (higher-reward candidate, better-supported candidate, beta*).
    ``rest_mass``: reference mass outside the candidates (1 - their total).
    ``probs``: (beta, target) -> target probabilities over the outcomes (candidates, then rest).
    """

    candidates: pd.DataFrame
    targets: pd.DataFrame
    flips: pd.DataFrame
    rest_mass: float
    probs: dict = field(default_factory=dict)

    def summary(self) -> str:
        """A few readable lines: per target and beta, label entropy and favoured label."""
        lines = [f"reference mass on the candidates: {1 - self.rest_mass:.4f}"]
        for (name, d) in self.targets.groupby("target", sort=False):
            parts = [f"beta={r.beta:g}: H_label={r.label_entropy:.3f}, "
                     + ("no answer favoured (uniform)" if r.favoured_answer == "tie" else f"favours {r.favoured_answer!r}")
                     for r in d.itertuples()]
            lines.append(f"{name}: " + "; ".join(parts))
        lines.append(f"Remark 4.4 flip points: {len(self.flips)}"
                     + (f" (smallest beta* = {self.flips.beta_star.min():.4g})" if len(self.flips) else
                        " (no pair has one candidate with the higher reward and the other the higher support)"))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# input checks
# ----------------------------------------------------------------------------------------------
def check_candidates(candidates, rewards, labels=None) -> tuple[list[str], np.ndarray, list[str]]:
    """Candidates as non-empty strings, one finite reward each, one label each (default: the text);
    else ``ValueError`` naming the fix."""
    if isinstance(candidates, str):
        raise ValueError("candidates must be a list of completion strings, not one string: wrap it in a list")
    cands = list(candidates) if candidates is not None else []
    if not cands:
        raise ValueError("candidates is empty: give at least one candidate completion (e.g. the answers "
                         "the reward accepts), each with its reward")
    bad = [i for i, c in enumerate(cands) if not isinstance(c, str) or c == ""]
    if bad:
        raise ValueError(f"candidates at positions {bad[:5]} are not non-empty strings: pass completion texts")
    if len(set(cands)) != len(cands):
        dup = [c for c in cands if cands.count(c) > 1][0]
        raise ValueError(f"candidate {dup!r} is listed twice: the targets are distributions over distinct "
                         f"completions; drop the duplicate")
    r = np.asarray(list(rewards) if rewards is not None else [], dtype=np.float64).reshape(-1)
    if r.size != len(cands):
        raise ValueError(f"got {len(cands)} candidates but {r.size} rewards: give exactly one reward per candidate")
    if not np.all(np.isfinite(r)):
        raise ValueError(f"rewards contain NaN/inf at positions {np.flatnonzero(~np.isfinite(r))[:5].tolist()}: "
                         f"map failures to a finite reward such as 0.0")
    labs = cands if labels is None else [str(x) for x in labels]
    if len(labs) != len(cands):
        raise ValueError(f"got {len(cands)} candidates but {len(labs)} labels: give one label per candidate "
                         f"(or none)")
    return cands, r, labs


def _check_betas(betas) -> list[float]:
    bs = [betas] if np.isscalar(betas) else list(betas)
    if not bs:
        raise ValueError("betas is empty: give at least one KL coefficient, e.g. betas=[0.01]")
    return [check_beta(b) for b in bs]


def check_prompt(tokenizer, prompt, max_length: int | None = None) -> list[int]:
    """The token ids of ``prompt`` (an already formatted prompt text), or ``ValueError`` when the
    tokenizer cannot encode it: not a string, empty, not valid Unicode (a lone surrogate), mapped to
    the unknown token, or longer than the model's context ``max_length``."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string (got {type(prompt).__name__})")
    if not prompt:
        raise ValueError("prompt is empty: give the text the model is asked (the chat template is applied "
                         "unless chat=False)")
    try:
        prompt.encode("utf-8")
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    except (UnicodeEncodeError, TypeError, ValueError) as e:
        raise ValueError(f"the tokenizer cannot encode the prompt ({type(e).__name__}: {e}): remove "
                         f"characters that are not valid Unicode text") from None
    if not ids:
        raise ValueError("the tokenizer encodes the prompt to no tokens: give a prompt with visible text")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        raise ValueError(f"the tokenizer cannot encode the prompt: it maps part of it to the unknown token "
                         f"{tokenizer.unk_token!r}; rephrase it with characters in the model's vocabulary")
    if max_length is not None and len(ids) >= max_length:
        raise ValueError(f"the prompt is {len(ids)} tokens, beyond the model's context of {max_length}: shorten it")
    return ids


# ----------------------------------------------------------------------------------------------
# exact reference log-probabilities
# ----------------------------------------------------------------------------------------------
def _formatted_prompt(tokenizer, prompt: str, chat: bool, answer_prefix: str) -> str:
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True) + answer_prefix
    return prompt + answer_prefix


def _context_length(model) -> int | None:
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, (int, np.integer)) else None


def reference_logprobs(model, tokenizer, prompt: str, candidates: Sequence[str], *, chat: bool = True,
                       answer_prefix: str = "", append_eos: bool = True) -> np.ndarray:
    """Exact log pi(candidate | prompt) under ``model`` (float64 [n]), teacher forced.

    The prompt goes through the tokenizer's chat template as one user turn with the generation
    prompt (``chat=False``: used as is), then ``answer_prefix`` (text the assistant turn is
    pre-filled with; candidates are the continuations after it). Each candidate is tokenized
    canonically and followed by the end-of-turn token if ``append_eos``
    (:func:`mdkl.lm.rollout.completion_logprobs`)."""
    from mdkl.lm.rollout import completion_logprobs

    text = _formatted_prompt(tokenizer, prompt, chat, answer_prefix)
    check_prompt(tokenizer, text, _context_length(model))
    return completion_logprobs(model, tokenizer, text, list(candidates), append_eos=append_eos).numpy()


# ----------------------------------------------------------------------------------------------
# the diagnostic
# ----------------------------------------------------------------------------------------------
def _label_split(p: np.ndarray, labels: list[str]) -> dict[str, float]:
    order = list(dict.fromkeys(labels))
    mass = np.array([p[[i for i, lab in enumerate(labels) if lab == l]].sum() for l in order])
    tot = mass.sum()
    return dict(zip(order, mass / tot if tot > 0 else np.full(len(order), np.nan)))


def diagnose_logprobs(logp_ref, rewards, betas, *, labels=None, tau: float | None = None,
                      rest_reward: float | None = None, candidates=None) -> Diagnosis:
    """:func:`diagnose` from given exact reference log-probabilities (no model).

    ``logp_ref``: log pi_ref of each candidate (finite or -inf; the total mass must be <= 1).
    ``rest_reward``: if given, one extra outcome carries the reference mass 1 - sum pi_ref(candidates)
    with this reward (it lumps many outputs, so it is never a MARA mode: it must be below ``tau``);
    otherwise the reference is renormalized over the candidates. ``tau``: MARA's threshold
    (default: the highest candidate reward, so the good set is the best candidates)."""
    names = candidates if candidates is not None else [f"y{i}" for i in range(len(np.atleast_1d(rewards)))]
    cands, r, labs = check_candidates(names, rewards, labels)
    lp = np.asarray(logp_ref, dtype=np.float64).reshape(-1)
    if lp.size != r.size:
        raise ValueError(f"got {r.size} rewards but {lp.size} reference log-probs: give one per candidate")
    if np.isnan(lp).any() or np.isposinf(lp).any() or (lp > 1e-9).any():
        raise ValueError("reference log-probs must be <= 0 and not NaN (log pi_ref of each candidate)")
    bs = _check_betas(betas)
    tau = float(r.max()) if tau is None else float(tau)
    if not math.isfinite(tau) or tau > r.max():
        raise ValueError(f"tau={tau} is above every candidate reward (max {r.max()}): choose tau <= max reward")
    mass = np.exp(lp)
    total = float(mass.sum())
    if total > 1 + 1e-6:
        raise ValueError(f"the candidates' reference probabilities sum to {total:.6f} > 1: candidates must be "
                         f"distinct completions of one prompt")
    if total <= 0:
        raise ValueError("every candidate has reference probability 0: no target is defined on them")
    rest = max(0.0, 1.0 - total)
    outcomes, rr, ll = list(cands), r.copy(), list(labs)
    if rest_reward is not None:
        rest_reward = float(rest_reward)
        if not math.isfinite(rest_reward) or rest_reward >= tau:
            raise ValueError(f"rest_reward={rest_reward} must be finite and below tau={tau}: the rest lumps many "
                             f"outputs and cannot be one MARA mode")
        outcomes.append(REST)
        rr = np.append(rr, rest_reward)
        ll.append(REST)
        ref = np.append(mass, rest)
    else:
        ref = mass
    ref = ref / ref.sum()
    labelled = np.array([o != REST for o in outcomes])
    label_order = list(dict.fromkeys(labs))
    rows, probs = [], {}
    for b in bs:
        for name, kl, mara in TARGETS:
            if mara:
                p = (mara_target if kl == "reverse" else mara_forward_target)(ref, rr, b, tau)
            else:
                p = (reverse_kl_target if kl == "reverse" else forward_kl_target)(ref, rr, b)
            probs[(b, name)] = p
            split = _label_split(p[labelled], labs)
            q = np.array([split[l] for l in label_order])
            i = int(np.argmax(p))
            rows.append({"beta": b, "target": name, "kl": kl, "mara": mara,
                         "entropy": float(entropy(p / p.sum())), "label_entropy": float(entropy(q)),
                         **{f"p_{l}": split[l] for l in label_order},
                         "expected_reward": float(p @ rr), "favoured": outcomes[i], "favoured_label": ll[i],
                         "favoured_answer": "tie" if q.max() - q.min() < 1e-9 else label_order[int(np.argmax(q))]})
    flips = []
    for i, j in itertools.combinations(range(len(cands)), 2):
        if r[i] == r[j] or not (np.isfinite(lp[i]) and np.isfinite(lp[j])) or lp[i] == lp[j]:
            continue
        hi, lo = (i, j) if r[i] > r[j] else (j, i)
        if lp[hi] < lp[lo]:
            flips.append({"higher_reward": cands[hi], "better_supported": cands[lo],
                          "beta_star": indifference_beta(r[hi], r[lo], lp[hi], lp[lo])})
    flips_df = pd.DataFrame(flips, columns=["higher_reward", "better_supported", "beta_star"])
    cand_df = pd.DataFrame({"candidate": outcomes, "label": ll, "reward": rr,
                            "logp_ref": np.append(lp, math.log(rest) if rest > 0 else -np.inf)
                            if rest_reward is not None else lp, "ref": ref})
    return Diagnosis(cand_df, pd.DataFrame(rows), flips_df.sort_values("beta_star", ignore_index=True), rest, probs)


def diagnose(model, tokenizer, prompt: str, candidates: Sequence[str], rewards, betas=(0.001, 0.01, 0.02, 0.03),
             *, labels=None, tau: float | None = None, rest_reward: float | None = None, chat: bool = True,
             answer_prefix: str = "", append_eos: bool = True) -> Diagnosis:
    """The collapse diagnostic (module docstring): exact reference log-probs of ``candidates`` after
    ``prompt`` under ``model`` (:func:`reference_logprobs`), then the vanilla and MARA targets under
    both KLs at every beta (:func:`diagnose_logprobs`). Inputs are checked before the model runs:
    an empty candidate list, a reward count that differs from the candidates', a non-finite or
    non-positive beta, and a prompt the tokenizer cannot encode each raise ``ValueError``."""
    cands, r, labs = check_candidates(candidates, rewards, labels)
    bs = _check_betas(betas)
    check_prompt(tokenizer, prompt)
    lp = reference_logprobs(model, tokenizer, prompt, cands, chat=chat, answer_prefix=answer_prefix,
                            append_eos=append_eos)
    return diagnose_logprobs(lp, r, bs, labels=labs if labels is not None else None, tau=tau,
                             rest_reward=rest_reward, candidates=cands)


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------
def _load(name: str):
    """'small' (the from-scratch LM of the 1-2 task, notebook 05's: :data:`mdkl.lm.smalllm.ONETWO_SMALL`),
    'smollm2', or a local folder with a causal LM + tokenizer (a missing or unreadable folder raises
    ``ValueError`` naming the choices)."""
    if name in ("small", "smollm2"):
        from mdkl.lm.smalllm import ONETWO_SMALL
        from mdkl.lm.trainer import load_model

        return load_model(name, small=ONETWO_SMALL)
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(name).is_dir():
        raise ValueError(f"--model {name!r}: no such folder; use 'small', 'smollm2' or a local folder holding a "
                         f"causal LM and its tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name)
        return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32).eval(), tok
    except (OSError, ValueError) as e:
        raise ValueError(f"--model {name!r}: not a loadable causal LM folder ({str(e).splitlines()[0]})") from None


def main(argv=None) -> Diagnosis:
    """``python -m mdkl.lm.diagnose``: print the candidate table, the targets and the flip points."""
    ap = argparse.ArgumentParser(prog="python -m mdkl.lm.diagnose", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="small", help="'small', 'smollm2' or a local model folder")
    ap.add_argument("--prompt", default=None, help="user prompt (default: the 1-2 task's)")
    ap.add_argument("--candidates", nargs="+", required=True, help="candidate completions")
    ap.add_argument("--rewards", nargs="+", type=float, required=True, help="one reward per candidate")
    ap.add_argument("--labels", nargs="+", default=None, help="one label per candidate (e.g. the answer)")
    ap.add_argument("--betas", nargs="+", type=float, default=[0.001, 0.01, 0.02, 0.03])
    ap.add_argument("--tau", type=float, default=None, help="MARA threshold (default: max reward)")
    ap.add_argument("--rest-reward", type=float, default=None,
                    help="reward of the reference mass outside the candidates (one lumped outcome)")
    ap.add_argument("--answer-prefix", default="", help="text the assistant turn is pre-filled with")
    ap.add_argument("--no-chat", action="store_true", help="use the prompt as is (no chat template)")
    a = ap.parse_args(argv)
    if a.prompt is None:
        from mdkl.lm.smalllm import ONETWO_PROMPT

        a.prompt = ONETWO_PROMPT
    try:  # bad input: one line naming the fix (argparse's usage error, exit status 2), no traceback
        cands, r, _ = check_candidates(a.candidates, a.rewards, a.labels)  # before loading a model
        _check_betas(a.betas)
        model, tok = _load(a.model)
        d = diagnose(model, tok, a.prompt, cands, r, a.betas, labels=a.labels, tau=a.tau, rest_reward=a.rest_reward,
                     chat=not a.no_chat, answer_prefix=a.answer_prefix)
    except ValueError as e:
        ap.error(str(e))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(d.candidates.round(4).to_string(index=False))
        print()
        print(d.targets.drop(columns=["kl", "mara"]).round(4).to_string(index=False))
        print()
        print(d.summary())
    return d


if __name__ == "__main__":
    main()
