"""A measured demonstration of the naming task (:mod:`mdkl.tasks.naming`): Table 1's mechanism on the
small LM, measured exactly, and what a powered Table 1 on it would cost on this machine.

1. Pretrain the naming LM (or load it from the cache; the wall time says which).
2. Print the reference's exact per-category metrics (entropy over answers, valid mass, top-quality
   mass and coverage, expected distinct answers among k, both rewards) and the exact targets'
   predicted metrics on the train categories for a grid of beta (vanilla reverse / forward KL, MARA
   under both), before any RL.
3. Check the exact numbers against samples (largest |sampled - exact| / SE over categories).
4. Train vanilla RLOO (k1 in the reward, reverse KL) and MARA (Algorithm 1, fixed tau) for
   ``--steps`` steps on one seed and print their exact metrics before / after, next to the target.
5. Run ``--workers`` such runs at once in spawned processes of one thread each (the layout of a run
   grid) and, from their seconds per step, estimate a 10-row x 5-seed Table 1 (8 trained rows; Base
   and Ensemble need no training) on this machine.

Usage::

    python benchmarks/bench_naming.py                  # defaults: 100 steps, beta 0.1
    python benchmarks/bench_naming.py --steps 40 --beta 0.05
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mdkl.lm.trainer import LMConfig, train  # noqa: E402
from mdkl.tasks import naming, naming_world  # noqa: E402

SHOW = ["valid", "entropy", "distinct", "top_mass", "top_coverage", "top_seen", "long", "proxy", "true", "kl"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="RL steps per run")
    ap.add_argument("--beta", type=float, default=0.1, help="KL coefficient of both runs")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--tau", type=float, default=1.0, help="MARA's fixed threshold (the top quality)")
    ap.add_argument("--betas", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2], help="beta grid of the targets")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per RL step")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt (G)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="processes of the estimated design")
    args = ap.parse_args(argv)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)

    task = naming.NamingTask()
    cfg = task.cfg
    cached = naming_world.is_pretrained(cfg)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model, tok = naming_world.load_naming_lm(cfg, progress=False)
    t_pre = time.perf_counter() - t0
    print(f"naming LM: {sum(p.numel() for p in model.parameters()):,} parameters, {len(task.world.categories)} "
          f"categories ({len(task.world.held_out)} held out) x {cfg.n_answers} answers; "
          f"{'loaded from the cache' if cached else 'pretrained'} in {t_pre:.1f} s (2 threads)")

    torch.set_num_threads(1)
    ref = naming.answer_probs(model, tok, task.world)
    print("\nreference, exact per category:")
    print(naming.category_table(ref, task.world, task.k).drop(columns=["answers", "kl"]).round(3).to_string(index=False))
    t0 = time.perf_counter()
    targets = naming.targets_table(task, ref, args.betas, args.tau)
    print(f"\nexact targets on the train categories (tau = {args.tau}; computed in {time.perf_counter() - t0:.2f} s):")
    print(targets[["method", "beta", *SHOW]].round(3).to_string(index=False))

    t0 = time.perf_counter()
    chk = naming.sampled_check(model, tok, task, 200, seed=args.seed)
    z = max(float(((chk[f"{m}_mc"] - chk[m]).abs() / chk[f"{m}_se"].clip(lower=1 / 200)).max())
            for m in ("valid", "top_mass", "proxy", "true"))
    print(f"\nexact vs 200 samples per category: largest |sampled - exact| / SE = {z:.2f}; noncanonical valid "
          f"samples {int(chk.noncanonical.sum())}, truncated {int(chk.truncated.sum())} of {200 * len(chk)} "
          f"({time.perf_counter() - t0:.1f} s)")

    ref_task = task.with_reference(model, tok)
    base = LMConfig(beta=args.beta, kl="reverse", kl_placement="reward", kl_level="sequence", group_size=args.group,
                    prompts_per_step=args.prompts, max_new_tokens=task.max_new_tokens, steps=args.steps,
                    eval_every=args.steps, eval_samples=len(task.world.train), lr=args.lr, tau=args.tau,
                    seed=args.seed)
    rows, step_s = [], []
    for name, run_cfg, target in (("RLOO", base, "vanilla reverse"), ("MARA (rev)", base.replace(mara="auto"), "MARA reverse")):
        t0 = time.perf_counter()
        res = train(run_cfg, ref_task, copy.deepcopy(model), tok, progress=False)
        wall = time.perf_counter() - t0
        step_s.append(res.seconds / args.steps)
        ck = res.checkpoints.set_index("step")
        for step, label in ((0, "before"), (args.steps, "after")):
            rows.append({"row": name, "when": label, **{m: ck.loc[step, f"id_{m}"] for m in SHOW},
                         **{f"ood_{m}": ck.loc[step, f"ood_{m}"] for m in ("valid", "entropy", "long", "true")}})
        tgt = naming.targets_table(ref_task, ref, [args.beta], args.tau, methods=[target]).iloc[-1]
        rows.append({"row": name, "when": f"target beta={args.beta:g}", **{m: tgt[m] for m in SHOW}})
        anchored = res.history.mara_anchored.sum()
        print(f"\n{name}: {args.steps} steps in {wall:.1f} s wall ({res.seconds / args.steps:.3f} s per step, one "
              f"thread; {args.prompts} x {args.group} completions); MARA anchored {anchored} samples")
    print("\nexact metrics before / after (id_: train categories, ood_: held-out categories) and the target:")
    print(pd.DataFrame(rows).round(3).to_string(index=False))

    # the same runs again, args.workers at a time in spawned processes of one thread each (the design's layout)
    t0 = time.perf_counter()
    cfgs = [base.replace(seed=args.seed + i, mara="auto" if i % 2 else "none") for i in range(args.workers)]
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as ex:
        par = list(ex.map(_run, cfgs))
    wall_par = time.perf_counter() - t0
    sec = max(s for s, _ in par) / args.steps
    print(f"\n{args.workers} runs in parallel processes: {wall_par:.1f} s wall (each {', '.join(f'{w:.1f}' for _, w in par)} s "
          f"incl. loading; {sec:.3f} s per step)")
    pre = t_pre if not cached else 75.0
    for steps in sorted({args.steps, 150, 300}):
        run = steps * sec + max(w - s for s, w in par)  # RL steps + loading and checkpoints
        total = pre + 8 * 5 * run / args.workers
        print(f"Table 1 design, 10 rows x 5 seeds (8 trained rows), {steps} steps per run, {args.workers} workers: "
              f"~{total / 60:.1f} min incl. pretraining ({run:.0f} s per run)")
    return {"pretrain_s": t_pre, "seconds_per_step": sec, "parallel_wall_s": wall_par, "targets": targets}


def _run(cfg: LMConfig) -> tuple[float, float]:
    """One RL run in a worker process (one thread): (seconds in the training loop, wall incl. loading)."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    task = naming.NamingTask()
    model, tok = naming_world.load_naming_lm(task.cfg, progress=False)
    res = train(cfg, task.with_reference(model, tok), model, tok, progress=False)
    return res.seconds, time.perf_counter() - t0


if __name__ == "__main__":
    main()
