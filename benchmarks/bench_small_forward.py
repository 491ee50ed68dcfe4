"""Is notebook 05's small LM bound by arithmetic or by the framework? transformers' Llama vs a minimal
fused implementation of the same weights, side by side in one run.

Notebook 05 trains 80 runs of 150 steps on the 0.9M-parameter small LM (4 prompts x G = 16
completions of <= 16 tokens per step); its grid takes ~23 min on 2 cores. A leaner model
implementation would shorten it only if the time goes to per-call overhead (Python, transformers'
wrappers, one kernel launch per projection) rather than to the matrix products themselves. This script
answers that with the two phases of a training step, on the notebook's own pretrained model:

- ``train``: teacher-forced forward and backward over 64 sequences of prompt + 16 completion
  tokens (what :func:`mdkl.lm.rollout.sequence_logprobs` does for the policy);
- ``sample``: encode the prompts once, then 16 incremental one-token forwards with a KV cache over
  64 rows (:func:`mdkl.lm.rollout.sample_completions`), under inference mode.

Peer: :class:`FusedLlama`, written here for the comparison only (~40 lines): the same weights with
q/k/v and gate/up fused into one matrix product each, a precomputed rotary table, a plain tuple KV
cache and no transformers code in the loop. Its outputs are checked against transformers' before
timing (the largest absolute logit difference is printed: same arithmetic, another summation order).

Protocol: one torch thread (as the grid's workers), the arms interleaved ``--reps`` times with the
order reversed every other repetition; per arm the median time and its spread ((max - min) /
median); the ratio transformers / fused per repetition (median, min, max). A ratio near 1 means the
framework costs nothing measurable and only fewer tokens or steps make the notebook faster. The
achieved GFLOP/s (6 x non-embedding parameters x tokens for forward + backward, 2 x for a forward;
the tied head counted once) puts the time against the core's arithmetic. The 1-minute load average
is printed: a run beside other jobs is not a headline.

    python benchmarks/bench_small_forward.py [--reps 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from mdkl.lm.smalllm import ONETWO_SMALL, load_small_lm


class FusedLlama(torch.nn.Module):
    """A transformers ``LlamaForCausalLM`` (no bias, tied head, MHA) re-expressed with fused
    projections; ``forward(ids, mask, pos, past=None, keep=None) -> (logits, cache)``."""

    def __init__(self, hf):
        super().__init__()
        c, m = hf.config, hf.model
        self.nh, self.hd, self.eps = c.num_attention_heads, c.head_dim, c.rms_norm_eps
        if c.num_key_value_heads != c.num_attention_heads or not c.tie_word_embeddings:
            raise ValueError("FusedLlama covers the small LM's layout only (MHA, tied embeddings)")
        p = lambda t: torch.nn.Parameter(t.detach().clone())
        self.embed, self.norm = p(m.embed_tokens.weight), p(m.norm.weight)
        self.layers = torch.nn.ModuleList()
        for L in m.layers:
            a, f, l = L.self_attn, L.mlp, torch.nn.Module()
            l.ln1, l.ln2 = p(L.input_layernorm.weight), p(L.post_attention_layernorm.weight)
            l.qkv = p(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
            l.o, l.down = p(a.o_proj.weight), p(f.down_proj.weight)
            l.gu = p(torch.cat([f.gate_proj.weight, f.up_proj.weight]))
            self.layers.append(l)
        inv = 1.0 / (c.rope_parameters["rope_theta"] ** (torch.arange(0, self.hd, 2, dtype=torch.float32) / self.hd))
        fr = torch.outer(torch.arange(c.max_position_embeddings + 64, dtype=torch.float32), inv)
        emb = torch.cat([fr, fr], -1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def _rms(self, x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rope(self, x, cos, sin):
        h = self.hd // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    def forward(self, ids, mask, pos, past=None, keep=None):
        b, t = ids.shape
        s = mask.shape[1]
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        causal = torch.arange(s)[None, :] <= torch.arange(s - t, s)[:, None]
        am = (causal[None] & mask.bool()[:, None, :])[:, None]
        cache = []
        for i, l in enumerate(self.layers):
            q, k, v = F.linear(self._rms(x, l.ln1), l.qkv).view(b, t, 3, self.nh, self.hd).permute(2, 0, 3, 1, 4)
            q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            if past is not None:
                k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
            cache.append((k, v))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=am)
            x = x + F.linear(a.transpose(1, 2).reshape(b, t, -1), l.o)
            g, u = F.linear(self._rms(x, l.ln2), l.gu).chunk(2, -1)
            x = x + F.linear(F.silu(g) * u, l.down)
        x = self._rms(x if keep is None else x[:, -keep:], self.norm)
        return F.linear(x, self.embed), cache


def _batch(vocab: int, rows: int, prompt: int, completion: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, prompt + completion), generator=g)
    mask = torch.ones_like(ids)
    mask[: rows // 8, : prompt // 4] = 0  # some left padding, as a batch of prompts has
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions per arm (>= 3)")
    ap.add_argument("--rows", type=int, default=64, help="sequences per batch (4 prompts x G = 16)")
    ap.add_argument("--prompt", type=int, default=20, help="prompt tokens")
    ap.add_argument("--completion", type=int, default=16, help="completion tokens")
    args = ap.parse_args(argv)
    if args.reps < 3:
        raise SystemExit("--reps must be >= 3: a spread needs repetitions")
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    hf, _ = load_small_lm(ONETWO_SMALL, progress=False)
    fused = FusedLlama(hf).eval()
    ids, mask, pos = _batch(hf.config.vocab_size, args.rows, args.prompt, args.completion)
    P, C = args.prompt, args.completion
    with torch.inference_mode():
        diff = float((hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
                      - fused(ids, mask, pos)[0])[mask.bool()].abs().max())

    def train_hf():
        out = hf(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=C + 1)
        out.logits.logsumexp(-1).sum().backward()

    def train_fused():
        fused(ids, mask, pos, keep=C + 1)[0].logsumexp(-1).sum().backward()

    def sample(step):
        with torch.inference_mode():
            m, p, past = mask[:, :P], pos[:, P - 1:P], step(ids[:, :P], mask[:, :P], pos[:, :P], None)
            for t in range(C):
                m, p = torch.cat([m, torch.ones_like(m[:, :1])], 1), p + 1
                past = step(ids[:, P + t:P + t + 1], m, p, past)

    def hf_step(i, m, p, past):
        return hf(input_ids=i, attention_mask=m, position_ids=p, past_key_values=past, use_cache=True,
                  logits_to_keep=1).past_key_values

    def fused_step(i, m, p, past):
        return fused(i, m, p, past=past, keep=1)[1]

    n_params = sum(p.numel() for p in hf.parameters()) - hf.model.embed_tokens.weight.numel()
    head = hf.model.embed_tokens.weight.numel()
    tokens = args.rows * (P + C)
    flops = {"train": 6 * n_params * tokens + 6 * head * args.rows * (C + 1),
             "sample": 2 * (n_params + head) * args.rows * (P + C)}
    arms = {"train": (train_hf, train_fused), "sample": (lambda: sample(hf_step), lambda: sample(fused_step))}
    print(f"small LM: {n_params + head:,} parameters; batch {args.rows} x ({P} + {C}) tokens; 1 thread; "
          f"max |logit difference| transformers vs fused: {diff:.2g}; load average {os.getloadavg()[0]:.2f}")
    out = {}
    for phase, (a, b) in arms.items():
        a(), b()  # warm-up
        t = {"transformers": [], "fused": []}
        for r in range(args.reps):
            for name, fn in (("transformers", a), ("fused", b))[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                fn()
                t[name].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in t.items()}
        spread = {k: (max(v) - min(v)) / med[k] for k, v in t.items()}
        ratios = [x / y for x, y in zip(t["transformers"], t["fused"])]
        out[phase] = {"median_s": med, "spread": spread, "ratio": statistics.median(ratios)}
        print(f"{phase:6s} transformers {med['transformers'] * 1e3:7.1f} ms (spread {spread['transformers']:.0%}, "
              f"{flops[phase] / med['transformers'] / 1e9:5.1f} GFLOP/s)  fused {med['fused'] * 1e3:7.1f} ms "
              f"(spread {spread['fused']:.0%})  transformers / fused {out[phase]['ratio']:.2f} "
              f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return out


if __name__ == "__main__":
    main()
