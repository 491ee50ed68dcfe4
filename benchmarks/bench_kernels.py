"""Speed cost of mdkl's pinned numeric kernel path (AVX2, ``mdkl.NUMERIC_KERNEL_ENV``) against the
kernels PyTorch / MKL / oneDNN pick by themselves on this CPU (``default``: AVX-512 where present).

The pin is what makes seeded runs repeat bit for bit on every x86-64 machine; this measures what it
costs. Each repetition runs the same workloads in a fresh subprocess per setting (the variables are
read once per process), alternating the order of the settings so machine load hits all alike.
Settings: ``pinned`` (mdkl's: ATen, MKL and oneDNN at AVX2), ``aten_only`` and ``default``
(nothing set: each library picks by the CPU).

- ``small_lm``: forward + backward + AdamW of the from-scratch small LM's architecture (Llama,
  hidden 128, 4 layers, vocab 384) on 32 x 64 tokens: the pretraining / RL update kernel mix.
- ``lstm``: forward + backward + Adam of the chemistry prior's 1 x 256 SMILES LSTM on 64 x 40 tokens.
- ``lm_head_mm``: the small LM's output layer over every position of a 64 x 48 batch, forward and backward.

(TRL's GRPO step is the workload where oneDNN's AVX2 path costs most: ``bench_lm.py --pinned``.)
Reports seconds per step per setting (median and min-max over repetitions) and the ratio
pinned / default per repetition (median, min-max); the load average is printed beside them, since
a ratio measured while other jobs load the machine is not a headline. Usage::

    python benchmarks/bench_kernels.py            # 5 repetitions, 1 thread
    python benchmarks/bench_kernels.py --reps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

#: the variables of each setting; ``None``: unset, so each library picks by the CPU (note that
#: ``ATEN_CPU_CAPABILITY=default`` would mean ATen's unvectorized baseline, not "the CPU's choice")
SETTINGS = {"pinned": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
            "aten_only": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": None, "MKL_CBWR": None},
            "default": {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": None, "MKL_CBWR": None}}


def worker(steps: int, threads: int) -> dict:
    """Time the two workloads in this process (kernels as the environment says)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    out = {"capability": torch.backends.cpu.get_cpu_capability()}
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=384, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=96))
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    x = torch.randint(384, (32, 64))

    def lm_step():
        loss = lm(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    emb, lstm, head = torch.nn.Embedding(30, 128), torch.nn.LSTM(128, 256, 1, batch_first=True), torch.nn.Linear(256, 30)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt2 = torch.optim.Adam(params, lr=1e-3)
    s = torch.randint(30, (64, 40))

    def lstm_step():
        logits = head(lstm(emb(s[:, :-1]))[0])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 30), s[:, 1:].reshape(-1))
        opt2.zero_grad()
        loss.backward()
        opt2.step()

    h = torch.randn(64 * 48, 128, requires_grad=True)
    w = torch.randn(384, 128, requires_grad=True)

    def mm_step():  # the LM head over every position of a 64 x 48 batch, forward and backward
        (h @ w.T).logsumexp(-1).sum().backward()

    for name, fn in (("small_lm", lm_step), ("lstm", lstm_step), ("lm_head_mm", mm_step)):
        fn()  # warm-up
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        out[name] = (time.perf_counter() - t) / steps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.steps, a.threads)))
        return
    load0 = os.getloadavg()[0]
    rows = {k: [] for k in SETTINGS}
    for rep in range(a.reps):
        for name in (list(SETTINGS) if rep % 2 == 0 else list(reversed(list(SETTINGS)))):
            env = {k: v for k, v in os.environ.items() if k not in SETTINGS[name]}
            env.update({k: v for k, v in SETTINGS[name].items() if v is not None})
            res = subprocess.run([sys.executable, __file__, "--worker", "--steps", str(a.steps), "--threads",
                                  str(a.threads)], env=env, capture_output=True, text=True, check=True)
            rows[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    load1 = os.getloadavg()[0]
    caps = ", ".join(f"{k} = {v[0]['capability']}" for k, v in rows.items())
    print(f"kernels: {caps}; {a.reps} reps x "
          f"{a.steps} steps, {a.threads} thread(s); load average {load0:.2f} -> {load1:.2f}"
          + ("  (contended: not a headline)" if max(load0, load1) > 1.5 else ""))
    for w in ("small_lm", "lstm", "lm_head_mm"):
        d = [r[w] for r in rows["default"]]
        line = f"  {w:11s} default {statistics.median(d) * 1e3:7.1f} ms [{min(d) * 1e3:.1f}-{max(d) * 1e3:.1f}]"
        for name in SETTINGS:
            if name == "default":
                continue
            p = [r[w] for r in rows[name]]
            ratio = [x / y for x, y in zip(p, d)]
            line += (f" | {name} {statistics.median(p) * 1e3:7.1f} ms, {statistics.median(ratio):.2f}x "
                     f"[{min(ratio):.2f}-{max(ratio):.2f}]")
        print(line)

if __name__ == "__main__":
    main()
