"""RL throughput of our trainer (``mdkl.lm``) vs TRL's ``GRPOTrainer``, side by side in one run.

Same model (the from-scratch small LM), same prompt (the 1-2 task, through the model's chat
template), same group size G, prompts per step, completion length, learning rate, beta and
sampling (temperature 1, no top-k/top-p), one optimizer step per sampled batch, both with a frozen
reference model. Measured in alternating repetitions in one process with the same torch thread
count, so machine contention hits both alike; the ratio is the median over repetitions of
ours / TRL. Then our trainer alone on SmolLM2-135M-Instruct.

Rows:
- ``ours``: :func:`mdkl.lm.benchmark` (sequence-level KL, own KV-cache sampling loop).
- ``trl``: ``GRPOTrainer`` with TRL's defaults except ``gradient_checkpointing=False`` and
  ``disable_dropout=True`` (what a small-model user sets; TRL's default recomputes activations).
- ``trl_default_gc``: the same with TRL's default ``gradient_checkpointing=True``.
- ``trl+mdkl``: :class:`mdkl.trl_ext.MDKLGRPOTrainer` (our MARA/KL hooks; one extra no-grad pass).

steps/s counts optimizer steps (one sampled batch each); tokens/s counts generated completion
tokens (total_tokens/s adds the prompt tokens). Usage::

    python benchmarks/bench_lm.py                 # small LM + SmolLM2, writes data/results/bench_lm.csv
    python benchmarks/bench_lm.py --no-smollm2 --reps 1 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mdkl import runtime  # noqa: E402
from mdkl.lm import LMConfig, benchmark, load_model  # noqa: E402
from mdkl.smalllm import small_lm_dir  # noqa: E402
from mdkl.onetwo import PROMPT, OneTwoTask  # noqa: E402


def trl_benchmark(model_dir, cfg: LMConfig, steps: int, warmup: int, variant: str = "trl") -> dict:
    """Time ``steps`` optimizer steps of TRL's GRPOTrainer (after ``warmup`` untimed ones)."""
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mdkl.trl_ext import MDKLGRPOConfig, MDKLGRPOTrainer, onetwo_reward

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []

        def on_step_end(self, args, state, control, **kw):
            self.t.append(time.perf_counter())

    batch = cfg.prompts_per_step * cfg.group_size
    common = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch,
                  num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
                  max_steps=warmup + steps, learning_rate=cfg.lr, beta=cfg.beta, temperature=cfg.temperature,
                  max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay, seed=cfg.seed,
                  use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True,
                  disable_dropout=True, gradient_checkpointing=(variant == "trl_default_gc"))
    if variant == "trl+mdkl":
        args, cls = MDKLGRPOConfig(kl=cfg.kl, kl_placement=cfg.kl_placement, **common), MDKLGRPOTrainer
    else:
        args, cls = GRPOConfig(**common), GRPOTrainer
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": PROMPT}]] * (batch * (warmup + steps))})
    tok = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    clock = Clock()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = cls(model=str(model_dir), reward_funcs=onetwo_reward, args=args, train_dataset=ds,
                 processing_class=tok, callbacks=[clock])
        tr.train()
    logs = [h for h in tr.state.log_history if "completions/mean_length" in h]
    timed = logs[warmup:warmup + steps]
    secs = clock.t[warmup + steps - 1] - clock.t[warmup - 1]
    comp = sum(h["completions/mean_length"] for h in timed) * batch
    total = timed[-1]["num_tokens"] - logs[warmup - 1]["num_tokens"]
    return {"steps_per_s": steps / secs, "tokens_per_s": comp / secs, "total_tokens_per_s": total / secs,
            "seconds_per_step": secs / steps, "batch": batch}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed RL steps per measurement")
    ap.add_argument("--warmup", type=int, default=1, help="untimed RL steps before each measurement")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions (ours, TRL, ...)")
    ap.add_argument("--smollm2-steps", type=int, default=2, help="timed steps of ours on SmolLM2")
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2 row")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for every row (1: least hurt by other jobs on a shared machine)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.warmup < 1:
        raise ValueError("--warmup must be >= 1 (the first step includes one-off setup)")
    cfg = LMConfig()  # the 1-2 defaults: G=8, 8 prompts/step, 16 new tokens, reverse KL, beta 0.01
    task = OneTwoTask()
    model, tok = load_model("small")
    model_dir = small_lm_dir()
    variants = ["ours", "trl", "trl_default_gc", "trl+mdkl"]
    runs = {v: [] for v in variants}
    for rep in range(a.reps):
        for v in variants:
            t0 = time.perf_counter()
            if v == "ours":
                r = benchmark(cfg, task, model, tok, steps=a.steps, warmup=a.warmup)
            else:
                r = trl_benchmark(model_dir, cfg, a.steps, a.warmup, variant=v)
            runs[v].append(r)
            print(f"rep {rep} {v:15s} {r['steps_per_s']:7.3f} steps/s {r['tokens_per_s']:8.1f} tok/s "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    for v in variants:
        med = {k: statistics.median(r[k] for r in runs[v]) for k in ("steps_per_s", "tokens_per_s",
                                                                      "total_tokens_per_s")}
        ratio = statistics.median(o["steps_per_s"] / t["steps_per_s"] for o, t in zip(runs["ours"], runs[v]))
        rows.append({"model": "small", "n_params": n_params, "trainer": v, **med,
                     "ours_over_this_steps": ratio, "reps": a.reps, "steps": a.steps})
    if not a.no_smollm2:
        del model
        sm, stok = load_model("smollm2")
        r = benchmark(cfg.replace(model="smollm2"), task, sm, stok, steps=a.smollm2_steps, warmup=a.warmup)
        rows.append({"model": "smollm2", "n_params": sum(p.numel() for p in sm.parameters()), "trainer": "ours",
                     **{k: r[k] for k in ("steps_per_s", "tokens_per_s", "total_tokens_per_s")},
                     "ours_over_this_steps": float("nan"), "reps": 1, "steps": a.smollm2_steps})
    df = pd.DataFrame(rows)
    df["torch_threads"] = torch.get_num_threads()
    df["group_size"], df["prompts_per_step"], df["max_new_tokens"] = cfg.group_size, cfg.prompts_per_step, cfg.max_new_tokens
    path = runtime.write_csv(df, "bench_lm")
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(df.to_string(index=False))
    print(f"G={cfg.group_size}, {cfg.prompts_per_step} prompts/step, <= {cfg.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} torch threads; wrote {path}")
    return df


if __name__ == "__main__":
    main()
