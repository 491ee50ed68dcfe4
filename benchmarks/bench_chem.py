"""Throughput of the chemistry RL loop (mdkl.chem.reinvent.run_rl): reward calls per second with the time
split into sampling, scoring (process pool, all cores; the prior / agent forward passes run in the
main process while the pool scores) and the DAP update, measured side by side in one process with
(b) the same SMILES scored alone through the same pool, batch by batch (no RL work), and (c) the
DRD2 model's sklearn ``predict_proba`` vs the vectorized kernel of ``chem_reward._svc_proba``.

Goal (issue 4): >= 80% of the time in scoring, and a 10,000-call run in <= 3 minutes on 2 cores
with the small prior. Uses the default-profile prior (trained and cached on first use).

    python benchmarks/bench_chem.py [--reward_calls 10000] [--task synth|amide] [--profile cpu] [--mara]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mdkl.chem import prior as chem_prior, reinvent as chem, reward as chem_reward, smiles as chem_smiles  # noqa: E402
from mdkl.chem.reward import RewardConfig, Scorer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reward_calls", type=int, default=10_000)
    ap.add_argument("--task", default="synth", choices=["synth", "amide"])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--mara", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.perf_counter()
    prior, vocab, _ = chem_prior.load_prior(chem_prior.train_prior(chem_prior.prior_config(args.profile)))
    print(f"prior ready in {time.perf_counter() - t:.1f} s ({sum(p.numel() for p in prior.parameters())/1e6:.2f}M params)")
    t = time.perf_counter()
    with Scorer(RewardConfig(args.task)) as sc:
        print(f"scorer pool: {sc.n_workers} workers, ready in {time.perf_counter() - t:.1f} s")
        cfg = chem.RLConfig(reward_calls=args.reward_calls, mara="alg1" if args.mara else "none", tau=0.85)
        t = time.perf_counter()
        seq = chem.run_rl(prior, vocab, sc, cfg, overlap=False)
        wall_seq = time.perf_counter() - t
        t = time.perf_counter()
        out = chem.run_rl(prior, vocab, sc, cfg, overlap=True)
        wall = time.perf_counter() - t
        assert seq["log"]["reward"].tolist() == out["log"]["reward"].tolist()  # same run either way
        # (b) the same SMILES, same batches, scored alone (memo reset: the same real scorings)
        log = out["log"]
        sc.reset()
        t = time.perf_counter()
        for _, b in log.groupby("step", sort=True):
            sc.score(b["smiles"].tolist())
        score_alone = time.perf_counter() - t
    for name, o, w in (("scoring, then forward passes (overlap=False)", seq, wall_seq),
                       ("forward passes while the pool scores (overlap=True)", out, wall)):
        tm = o["timing"]
        print(f"{name}: {w:.1f} s = {args.reward_calls / w:.1f} calls/s; " + ", ".join(
            f"{k} {tm[k]:.1f} s ({tm[k] / w:.0%})" for k in ("sampling", "scoring", "update")))
    print(f"  overlap=True / overlap=False wall time: {wall / wall_seq:.2f}")
    if wall_seq < wall:
        out, wall = seq, wall_seq
    tm = out["timing"]
    print(f"faster variant: {args.reward_calls} reward calls ({args.task}, {'MARA' if args.mara else 'REINVENT'}) in {wall:.1f} s "
          f"= {args.reward_calls / wall:.1f} calls/s on {os.cpu_count()} cores (load average: {os.getloadavg()[0]:.1f})")
    for k in ("sampling", "scoring", "update"):
        print(f"  {k:9s} {tm[k]:7.1f} s  {tm[k] / wall:6.1%} of the run")
    print(f"    (prior + agent forward passes: {tm['forward']:.1f} s, inside 'scoring' when overlapped, else 'update')")
    n_unique = log["smiles"].nunique()
    print(f"  distinct SMILES strings scored: {n_unique} of {args.reward_calls} calls (identical strings: memoized per run, still counted)")
    print(f"(b) the run's batches scored alone: {score_alone:.1f} s = {score_alone / wall:.0%} of the loop's wall time "
          f"({args.reward_calls / score_alone:.0f} calls/s)")
    mols = [m for m in (chem_smiles.mol_from_smiles(s) for s in log["canonical"].dropna().unique()[:512]) if m is not None]
    x = chem_reward.drd2_features(mols)
    model = chem_reward._drd2_model()
    t = time.perf_counter()
    p_sk = model.predict_proba(x)[:, 1]
    t_sk = time.perf_counter() - t
    t = time.perf_counter()
    p_np = chem_reward._svc_proba(model, x)
    t_np = time.perf_counter() - t
    print(f"(c) DRD2 SVC on {len(mols)} molecules: sklearn predict_proba {t_sk / len(mols) * 1e3:.2f} ms/mol, "
          f"vectorized {t_np / len(mols) * 1e3:.2f} ms/mol ({t_sk / t_np:.0f}x), max |diff| {np.abs(p_sk - p_np).max():.1e}")
    print(f"goal >= 80% scoring: {'met' if tm['scoring'] / wall >= 0.8 else 'not met'}; "
          f"10,000 calls <= 3 min: {'met' if wall * 10_000 / args.reward_calls <= 180 else 'not met'} "
          f"(extrapolated {wall * 10_000 / args.reward_calls / 60:.1f} min)")


if __name__ == "__main__":
    main()
