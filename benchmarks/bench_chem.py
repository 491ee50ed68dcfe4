"""Throughput of the chemistry RL loop (mdkl.chem.run_rl): reward calls per second with the time
split into sampling, scoring (process pool, all cores) and the DAP update.

Goal (issue 4): >= 80% of the time in scoring, and a 10,000-call run in <= 3 minutes on 2 cores
with the small prior. Uses the default-profile prior (trained and cached on first use).

    python benchmarks/bench_chem.py [--budget 10000] [--task synth|amide] [--profile cpu]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mdkl import chem  # noqa: E402
from mdkl.chem_reward import RewardConfig, Scorer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=10_000)
    ap.add_argument("--task", default="synth", choices=["synth", "amide"])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--mara", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter()
    prior, vocab, _ = chem.load_prior(chem.train_prior(chem.prior_config(args.profile)))
    print(f"prior ready in {time.perf_counter() - t:.1f} s ({sum(p.numel() for p in prior.parameters())/1e6:.2f}M params)")
    t = time.perf_counter()
    with Scorer(RewardConfig(args.task)) as sc:
        print(f"scorer pool: {sc.n_workers} workers, ready in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        out = chem.run_rl(prior, vocab, sc, chem.RLConfig(budget=args.budget, mara=args.mara, tau=0.85))
        wall = time.perf_counter() - t
    tm = out["timing"]
    tot = sum(tm.values())
    print(f"{args.budget} reward calls ({args.task}, {'MARA' if args.mara else 'REINVENT'}) in {wall:.1f} s "
          f"= {args.budget / wall:.1f} calls/s on {os.cpu_count()} cores (machine load: {os.getloadavg()[0]:.1f})")
    for k, v in tm.items():
        print(f"  {k:9s} {v:7.1f} s  {v / tot:6.1%}")
    n_unique = out["log"]["canonical"].nunique()
    print(f"  unique valid molecules scored: {n_unique} of {args.budget} calls (the rest: duplicates, memoized)")
    print(f"goal >= 80% scoring: {'met' if tm['scoring'] / tot >= 0.8 else 'not met'}; "
          f"10,000 calls <= 3 min: {'met' if wall * 10_000 / args.budget <= 180 else 'not met'} "
          f"(extrapolated {wall * 10_000 / args.budget / 60:.1f} min)")


if __name__ == "__main__":
    main()
