"""Batched rollout primitives for causal LMs (no per-sample Python loops), in TRL's tensor layout.

:func:`tokenize_prompts` (left padded), :func:`sample_completions` (own KV-cache sampling loop with
a seeded ``torch.Generator``; the G samples of a prompt share its encoding),
:func:`sequence_logprobs` (sum or per-token completion log-probs), :func:`completion_logprobs` (exact
log-probs of given completion texts) and :func:`positions` (position
ids of a padded batch). Used by the LM trainer (:mod:`mdkl.lm`) and the tasks' evaluations.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["tokenize_prompts", "positions", "sample_completions", "sequence_logprobs", "completion_logprobs"]


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(prompt_ids, prompt_mask)`` [B, P] of already chat-formatted prompts (the
    template adds any bos token, so none is added here)."""
    enc = tokenizer(list(prompts), add_special_tokens=False, padding=True, return_tensors="pt",
                    padding_side="left")
    return enc["input_ids"], enc["attention_mask"]


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a (left- or right-) padded batch: 0 at each row's first real token, counting
    real tokens only (padding positions get 0)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def sample_completions(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
                       *, eos_token_id: int, pad_token_id: int, temperature: float = 1.0,
                       generator: torch.Generator | None = None,
                       prompt_repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample completions with a KV cache: ``(completion_ids, completion_mask)`` [B * prompt_repeats, C].

    Ancestral sampling at ``temperature`` (no top-k / top-p: the policy's own distribution, so
    on-policy log-probs are exact), seeded by ``generator``. Each prompt row is encoded once and
    its cache repeated ``prompt_repeats`` times (the G samples of a group share the prompt's
    computation); output row ``i * prompt_repeats + j`` continues prompt ``i``. Runs on the device
    of ``prompt_ids`` (the model's); ``generator`` must live there too (CPU and CUDA generators
    draw different streams from one seed).
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
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
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
    done = torch.zeros(b, dtype=torch.bool, device=mask.device)
    toks = []
    ones = torch.ones(b, 1, dtype=mask.dtype, device=mask.device)
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
        pos = p_mask.sum(-1, keepdim=True) + torch.arange(c, device=p_mask.device)
        out = model(input_ids=completion_ids, attention_mask=mask, position_ids=pos, past_key_values=past,
                    use_cache=True)
        logits = torch.cat([last.unsqueeze(1), out.logits[:, :-1]], 1).float()
    else:
        ids = torch.cat([prompt_ids, completion_ids], 1)
        mask = torch.cat([prompt_mask, completion_mask], 1)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask),
                       logits_to_keep=c + 1).logits[:, :-1].float()
    lp = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
    lp = lp * completion_mask
    return lp if per_token else lp.sum(-1)



def completion_logprobs(model, tokenizer, prompt_text: str, completions: Sequence[str], *,
                        append_eos: bool = True, batch_size: int = 128) -> torch.Tensor:
    """Exact log pi(completion | prompt_text) of given completion texts, teacher forced (float64 [n]).

    ``prompt_text`` is already chat-formatted (it is encoded once and shared by every completion).
    Each completion is tokenized canonically (the tokenizer's own split; other token sequences that
    decode to the same text are not counted) and followed by the eos token if ``append_eos`` (the
    probability of saying exactly this text and stopping). Runs under inference mode."""
    eos = (tokenizer.eos_token or "") if append_eos else ""
    comps = list(completions)
    p_ids, p_mask = tokenize_prompts(tokenizer, [prompt_text])
    out = []
    with torch.inference_mode():
        for i in range(0, len(comps), batch_size):
            chunk = comps[i:i + batch_size]
            enc = tokenizer([c + eos for c in chunk], add_special_tokens=False, padding=True, return_tensors="pt",
                            padding_side="right")
            out.append(sequence_logprobs(model, p_ids, p_mask, enc["input_ids"], enc["attention_mask"],
                                         prompt_repeats=len(chunk)).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)
