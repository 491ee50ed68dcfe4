"""Prior training throughput (mdkl.chem.prior.train_prior's loop): plain random minibatches vs
length-bucketed minibatches (``PriorConfig.bucket``), measured side by side in one process on the
same MOSES molecules, model and optimizer settings (the default-profile prior recipe).

Reports molecules/s of each, their ratio, and the padding fraction (pad tokens / all tokens) of
one epoch's minibatches. Both runs go through the real, uncached ``chem_prior._train_prior``.

    python benchmarks/bench_prior.py [--molecules 25600] [--threads 2]
"""

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from mdkl.chem import prior as chem_prior  # noqa: E402
from mdkl.chem.smiles import load_moses  # noqa: E402


def padding_fraction(lengths, batches) -> float:
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - real / padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--molecules", type=int, default=25_600)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = replace(chem_prior.prior_config("cpu"), n_train=args.molecules, epochs=1)
    smiles = load_moses(cfg.n_train, cfg.seed)
    vocab = chem_prior.Vocabulary.from_smiles(smiles)
    lengths = [len(vocab.encode(s)) for s in smiles]
    rates = {}
    for bucket in (0, cfg.bucket):
        c = replace(cfg, bucket=bucket)
        pad = padding_fraction(lengths, chem_prior.minibatches(lengths, c.batch_size, torch.Generator().manual_seed(0), bucket))
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            chem_prior._train_prior(c, Path(d), progress=False)
            wall = time.perf_counter() - t
        rates[bucket] = args.molecules / wall
        print(f"bucket={bucket:3d}: {args.molecules} molecules in {wall:.1f} s = {rates[bucket]:.0f} molecules/s "
              f"(padding {pad:.0%} of tokens)")
    print(f"length bucketing / plain minibatches: {rates[cfg.bucket] / rates[0]:.2f}x molecules/s "
          f"({cfg.hidden}-unit LSTM, batch {cfg.batch_size}, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
