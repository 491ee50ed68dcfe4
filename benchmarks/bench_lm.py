"""RL throughput of our trainer (``mdkl.lm``) vs TRL's ``GRPOTrainer``, side by side in one run.

Same model (the from-scratch small LM), same prompt (the 1-2 task, through the model's chat
template), same group size G, prompts per step, completion length, learning rate, beta and
sampling (temperature 1, no top-k/top-p), one optimizer step per sampled batch, both with a frozen
reference model, the same torch thread count. Then ours vs TRL on SmolLM2-135M-Instruct (full
fine-tuning, G = 8, one prompt per step by default, <= 16 new tokens, ``--smollm2-steps`` timed steps).

Rows:
- ``ours``: :func:`mdkl.lm.benchmark` (own KV-cache sampling loop).
- ``trl``: ``GRPOTrainer`` with TRL's defaults except ``gradient_checkpointing=False`` and
  ``disable_dropout=True`` (what a small-model user sets; TRL's default recomputes activations).
- ``trl_default_gc``: the same with TRL's default ``gradient_checkpointing=True``.
- ``trl+mdkl``: :class:`mdkl.lm.trl_ext.MDKLGRPOTrainer` (our MARA/KL hooks; one extra no-grad pass).

Protocol, against contention (other jobs on the machine slow the arms by different, erratic
factors: one committed run measured TRL 26x below its idle speed while ours lost 2.4x):

- the arms run interleaved, ``--reps`` (>= 3) repetitions each, the order reversed on every other
  repetition (ours, trl, ..., trl+mdkl, trl+mdkl, ..., trl, ours, ...) so that a drifting load
  hits both ends alike; each measurement times ``--steps`` optimizer steps after ``--warmup``
  untimed ones (the first step includes one-off setup);
- per arm: the median steps/s over the repetitions and its spread, ``(max - min) / median``;
  per TRL arm: the per-repetition ratio ours / TRL (measured back to back), its median, min, max;
- **rule**: the headline ratio (``ours_over_this_steps``) is written only when the spread of both
  arms is <= ``--max-spread`` (0.30); otherwise it is NaN, ``reliable`` is False, the row's
  ``note`` says why and a warning is printed (the median and range stay in ``ratio_*``);
- the 1-minute load average (``os.getloadavg``) is recorded before and after the run and around
  every measurement (max); a load above 1.5 on this 2-core machine (our own process adds ~1) is
  flagged as contended in ``note``.

steps/s counts optimizer steps (one sampled batch each); tokens/s counts generated completion
tokens (total_tokens/s adds the prompt tokens). Usage::

    python benchmarks/bench_lm.py                 # small LM + SmolLM2, writes data/results/bench_lm.csv
    python benchmarks/bench_lm.py --no-smollm2 --reps 3 --steps 3
    python benchmarks/bench_lm.py --reps 3 --steps 2 --smollm2-steps 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Speed is measured on the kernels the CPU picks itself (mdkl's reproducibility pin, ATen and oneDNN at
# AVX2, routes some of TRL's matmul shapes to a oneDNN path ~30x slower, which would flatter us):
# `--pinned` measures under the pin instead.
if "--pinned" not in sys.argv:
    os.environ.setdefault("MDKL_NATIVE_KERNELS", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mdkl import lm, runtime  # noqa: E402
from mdkl.lm import smalllm  # noqa: E402
from mdkl.tasks.onetwo import PROMPT, OneTwoTask  # noqa: E402

CONTENDED_LOAD = 1.5  # 1-minute load average above which a run on the 2-core machine is flagged


# -- every use of mdkl.lm's API lives here ---------------------------------------------------------
def lm_settings(cfg) -> dict:
    """The shared RL settings, read from an ``mdkl.lm.LMConfig`` (TRL is configured from these)."""
    return dict(group_size=cfg.group_size, prompts_per_step=cfg.prompts_per_step,
                max_new_tokens=cfg.max_new_tokens, lr=cfg.lr, beta=cfg.beta, temperature=cfg.temperature,
                max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay, seed=cfg.seed,
                kl=cfg.kl, kl_placement=cfg.kl_placement)


def ours_benchmark(cfg, model, tok, steps: int, warmup: int) -> dict:
    """``mdkl.lm.benchmark``: steps/s, tokens/s, total_tokens/s of our trainer."""
    return lm.benchmark(cfg, OneTwoTask(), model, tok, steps=steps, warmup=warmup)


def lm_setup(model: str = "small"):
    """(config, model, tokenizer, model directory for TRL) of the 1-2 task's defaults."""
    cfg = lm.LMConfig() if model == "small" else lm.LMConfig().replace(model=model)
    m, tok = lm.load_model(model)
    return cfg, m, tok, (smalllm.small_lm_dir() if model == "small" else None)
# ----------------------------------------------------------------------------------------------


def trl_benchmark(model_dir, st: dict, steps: int, warmup: int, variant: str = "trl") -> dict:
    """Time ``steps`` optimizer steps of TRL's GRPOTrainer (after ``warmup`` untimed ones)."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mdkl.lm.trl_ext import MDKLGRPOConfig, MDKLGRPOTrainer
    from mdkl.tasks.onetwo_trl import onetwo_reward

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    batch = st["prompts_per_step"] * st["group_size"]
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch,
                  num_generations=st["group_size"], max_completion_length=st["max_new_tokens"],
                  max_steps=warmup + steps, learning_rate=st["lr"], beta=st["beta"], temperature=st["temperature"],
                  max_grad_norm=st["max_grad_norm"], weight_decay=st["weight_decay"], seed=st["seed"],
                  use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                  disable_dropout=True, gradient_checkpointing=(variant == "trl_default_gc"))
    if variant == "trl+mdkl":
        args, cls = MDKLGRPOConfig(kl=st["kl"], kl_placement=st["kl_placement"], **common), MDKLGRPOTrainer
    else:
        args, cls = GRPOConfig(**common), GRPOTrainer
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": PROMPT}]] * (batch * (warmup + steps))})
    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    clock = Clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = cls(model=str(model_dir), reward_funcs=onetwo_reward, args=args, train_dataset=ds,
                 processing_class=tok, callbacks=[clock])
        tr.remove_callback(PrinterCallback)  # per-step log lines (logging_steps=1 feeds log_history)
        tr.train()
    logs = [h for h in tr.state.log_history if "completions/mean_length" in h]
    timed = logs[warmup:warmup + steps]
    secs = clock.t[warmup + steps - 1] - clock.t[warmup - 1]
    comp = sum(h["completions/mean_length"] for h in timed) * batch
    total = timed[-1]["num_tokens"] - logs[warmup - 1]["num_tokens"]
    return {"steps_per_s": steps / secs, "tokens_per_s": comp / secs, "total_tokens_per_s": total / secs,
            "seconds_per_step": secs / steps, "batch": batch}


def spread(xs) -> float:
    """(max - min) / median: the repetitions' disagreement, relative."""
    return (max(xs) - min(xs)) / statistics.median(xs)


def load1() -> float:
    return os.getloadavg()[0]


def compare(name: str, cfg, model, tok, model_dir, variants, reps: int, steps: int, warmup: int,
            max_spread: float):
    """Interleaved repetitions of ``variants`` on one model (order reversed every other repetition);
    returns (rows, warnings, max load)."""
    st = lm_settings(cfg)
    runs = {v: [] for v in variants}
    load_before = max_load = load1()
    for rep in range(reps):
        for v in (variants if rep % 2 == 0 else variants[::-1]):
            t0, l0 = time.perf_counter(), load1()
            if v == "ours":
                r = ours_benchmark(cfg, model, tok, steps, warmup)
            else:
                r = trl_benchmark(model_dir, st, steps, warmup, variant=v)
            max_load = max(max_load, l0, load1())
            runs[v].append(r)
            print(f"{name} rep {rep} {v:15s} {r['steps_per_s']:7.3f} steps/s {r['tokens_per_s']:8.1f} tok/s "
                  f"({time.perf_counter() - t0:.0f} s, load {load1():.2f})", flush=True)
    load_after = load1()
    contended = max(load_before, load_after) > CONTENDED_LOAD
    n_params = sum(p.numel() for p in model.parameters())
    ours_sps = [r["steps_per_s"] for r in runs["ours"]]
    rows, warned = [], []
    for v in variants:
        sps = [r["steps_per_s"] for r in runs[v]]
        med = {k: statistics.median(r[k] for r in runs[v]) for k in ("steps_per_s", "tokens_per_s",
                                                                      "total_tokens_per_s")}
        ratios = [o / t for o, t in zip(ours_sps, sps)]
        spreads = {"ours": spread(ours_sps), v: spread(sps)}
        wide = [k for k, x in spreads.items() if x > max_spread]
        reliable = not wide
        notes = [f"{k} reps spread {spreads[k]:.0%} > {max_spread:.0%}: no headline ratio" for k in wide]
        if contended:
            notes.append(f"contended: load {load_before:.2f} -> {load_after:.2f}")
        if wide and v != "ours":
            warned.append(f"{name} {v}: " + "; ".join(notes))
        rows.append({"model": name, "n_params": n_params, "trainer": v, **med,
                     "steps_per_s_min": min(sps), "steps_per_s_max": max(sps), "spread": spread(sps),
                     "ours_over_this_steps": statistics.median(ratios) if reliable else math.nan,
                     "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                     "ratio_max": max(ratios), "reliable": reliable, "reps": reps, "steps": steps,
                     "load1_before": load_before, "load1_after": load_after, "load1_max": max_load,
                     "group_size": st["group_size"], "prompts_per_step": st["prompts_per_step"],
                     "max_new_tokens": st["max_new_tokens"], "note": "; ".join(notes)})
    return rows, warned, max_load


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed RL steps per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed RL steps before each measurement")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per arm (>= 3)")
    ap.add_argument("--max-spread", type=float, default=0.30,
                    help="largest (max - min) / median of an arm's steps/s for a headline ratio")
    ap.add_argument("--smollm2-steps", type=int, default=2, help="timed steps per SmolLM2 measurement")
    ap.add_argument("--smollm2-prompts", type=int, default=1, help="prompts per step on SmolLM2 (x G = 8)")
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 rows")
    ap.add_argument("--pinned", action="store_true", help="measure under mdkl's reproducibility kernel pin "
                    "(ATen and oneDNN at AVX2) instead of the CPU's own kernels")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every row (1: least hurt by other jobs on a shared machine)")
    a = ap.parse_args(argv)
    if a.warmup < 1:
        raise ValueError("--warmup must be >= 1 (the first step includes one-off setup)")
    if a.reps < 3:
        raise ValueError("--reps must be >= 3 (a spread needs repetitions; use 3 or more)")
    torch.set_num_threads(a.threads)
    load_before = load1()
    cfg, model, tok, model_dir = lm_setup("small")  # the 1-2 defaults: G=8, 8 prompts/step, 16 new tokens
    st = lm_settings(cfg)
    rows, warned, max_load = compare("small", cfg, model, tok, model_dir,
                                     ["ours", "trl", "trl_default_gc", "trl+mdkl"], a.reps, a.steps, a.warmup,
                                     a.max_spread)
    load_after = load1()
    contended = max(load_before, load_after) > CONTENDED_LOAD
    if not a.no_smollm2:
        del model
        from mdkl.lm.models import smollm2_dir

        # same trainer settings, sized for a 135M model on 2 cores: one prompt group per step
        scfg = lm.LMConfig(model="smollm2", prompts_per_step=a.smollm2_prompts)
        _, sm, stok, _ = lm_setup("smollm2")
        srows, swarned, smax = compare("smollm2", scfg, sm, stok, smollm2_dir(), ["ours", "trl"], a.reps,
                                       a.smollm2_steps, a.warmup, a.max_spread)
        rows += srows
        warned += swarned
        max_load = max(max_load, smax)
        load_after = load1()
        contended = max(load_before, load_after) > CONTENDED_LOAD
    df = pd.DataFrame(rows)
    df["torch_threads"] = torch.get_num_threads()
    df["aten_capability"] = torch.backends.cpu.get_cpu_capability()
    df["onednn_isa"] = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    path = runtime.write_csv(df, "bench_lm")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(df.drop(columns=["note"]).to_string(index=False))
    print(f"small: G={st['group_size']}, {st['prompts_per_step']} prompts/step, <= {st['max_new_tokens']} new tokens; "
          f"smollm2: {a.smollm2_prompts} prompt(s)/step; "
          f"{torch.get_num_threads()} torch threads, {a.reps} interleaved reps x {a.steps} steps; "
          f"load {load_before:.2f} -> {load_after:.2f} (max {max_load:.2f}); wrote {path}")
    if contended:
        print(f"NOTE: load average above {CONTENDED_LOAD}: other jobs shared the CPUs; the numbers are contended.")
    for w in warned:
        print(f"WARNING: repetitions disagree, headline ratio withheld ({w})")
    return df


if __name__ == "__main__":
    main()
