"""The chemistry prior (paper §4, Table 2): REINVENT's SMILES LSTM, its tokenizer, training on
MOSES, sampling, likelihoods and sample quality.

- :func:`tokenize` / :class:`Vocabulary`: the standard SMILES regex tokenization (Schwaller et al.),
- :class:`SmilesLSTM`, :func:`train_prior` (MOSES subset from the molsets wheel, cached, seeded),
  :func:`load_prior`, :func:`sample`, :func:`log_likelihood`,
- :func:`prior_config` / :func:`prior_sizes`: the prior each profile trains,
- :func:`training_set_canonical`, :func:`prior_quality` (validity / uniqueness / novelty).

Its own module so that the prior's cache key (the source of every mdkl module
:func:`train_prior` imports, :func:`mdkl.runtime.module_dependencies`) does not change when the RL
loop (:mod:`mdkl.chem.reinvent`) or the rewards (:mod:`mdkl.chem.reward`) are edited.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mdkl.chem.smiles import canonical, load_moses
from mdkl.runtime import cached, cached_dir, fixed_threads, progress_bar, resolve_device

__all__ = ["SMILES_REGEX", "tokenize", "Vocabulary", "PriorConfig", "SmilesLSTM", "train_prior",
           "load_prior", "prior_lr_factor", "minibatches", "prior_config", "prior_sizes",
           "training_set_canonical", "sample", "log_likelihood", "prior_quality"]

#: the standard SMILES tokenization regex (Schwaller et al. 2018, used by REINVENT 4)
SMILES_REGEX = (r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|\/|:|~|@|\?|>|"
                r"\*|\$|%[0-9]{2}|[0-9])")
_TOKEN_RE = re.compile(SMILES_REGEX)
PAD, BOS, EOS = "<pad>", "^", "$"


def tokenize(smiles: str) -> list[str]:
    """Regex tokens of a SMILES string; raises ValueError if some characters are not covered."""
    if not isinstance(smiles, str):
        raise ValueError(f"SMILES must be a string (got {type(smiles).__name__})")
    toks = _TOKEN_RE.findall(smiles)
    if "".join(toks) != smiles:
        raise ValueError(f"SMILES {smiles!r} has characters the tokenizer does not cover: check the string")
    return toks


class Vocabulary:
    """Token <-> id map with ``<pad>`` = 0, ``^`` (start) = 1, ``$`` (end) = 2."""

    def __init__(self, tokens):
        extra = sorted(set(tokens) - {PAD, BOS, EOS})
        self.itos = [PAD, BOS, EOS] + extra
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    @classmethod
    def from_smiles(cls, smiles) -> "Vocabulary":
        toks = set()
        for s in smiles:
            toks.update(tokenize(s))
        return cls(toks)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, smiles: str) -> list[int]:
        """[^, tokens..., $] as ids; ValueError naming the unknown token."""
        out = [1]
        for t in tokenize(smiles):
            if t not in self.stoi:
                raise ValueError(f"token {t!r} of {smiles!r} is not in the vocabulary: build the "
                                 f"vocabulary from data that contains it, or drop the SMILES")
            out.append(self.stoi[t])
        return out + [2]

    def decode(self, ids) -> str:
        """Tokens up to the first end token (start and pad tokens skipped)."""
        out = []
        for i in ids:
            i = int(i)
            if i == 2:
                break
            if i > 2:
                out.append(self.itos[i])
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps(self.itos)

    @classmethod
    def from_json(cls, s: str) -> "Vocabulary":
        v = cls([])
        v.itos = json.loads(s)
        v.stoi = {t: i for i, t in enumerate(v.itos)}
        return v


# ----------------------------------------------------------------------------------------------
# the prior
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorConfig:
    """SMILES LSTM prior (defaults: REINVENT's 3 x 512 LSTM; profiles make it smaller)."""

    n_train: int = 1_584_663
    """MOSES training SMILES used (seeded subset; default: all of them)."""
    epochs: int = 10
    """passes over the training subset."""
    embedding: int = 256
    """token embedding size."""
    hidden: int = 512
    """LSTM hidden size."""
    layers: int = 3
    """LSTM layers."""
    dropout: float = 0.0
    """dropout between LSTM layers (REINVENT: 0)."""
    batch_size: int = 128
    """training minibatch size (REINVENT: 128)."""
    lr: float = 1e-3
    """Adam learning rate of prior training (REINVENT: 1e-3)."""
    warmup: float = 0.0
    """fraction of the training steps over which the lr rises linearly from ~0 (0: no warmup)."""
    final_lr: float = 1.0
    """lr at the last step as a fraction of ``lr``, reached by linear decay (1: constant, REINVENT)."""
    bucket: int = 0
    """length bucketing: each epoch's permutation is cut into chunks of ``bucket`` minibatches,
    each chunk sorted by length and cut into minibatches, whose order is then shuffled (less
    padding: 1.3x more molecules/s on 2 CPU threads, ``benchmarks/bench_prior.py``).
    0: plain random minibatches."""
    max_len: int = 128
    """maximum sampled length in tokens (MOSES SMILES are at most 57 characters)."""
    seed: int = 0
    """seed of the subset, the initialization and the minibatch order."""
    threads: int = 2
    """torch intra-op threads while training (fixed: the same prior from the command-line step and
    from a notebook that set another thread count; 2 = the cores of the reference machine)."""
    device: str = "auto"
    """Where the LSTM, its minibatches and its optimizer state lives: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda'
    (:func:`mdkl.runtime.resolve_device`). Initialization and
    minibatch order are drawn on the CPU, so they are the same on every device; the weights are
    saved as CPU tensors."""


class SmilesLSTM(nn.Module):
    """Embedding -> multi-layer LSTM -> linear, next-token logits (REINVENT's RNN)."""

    def __init__(self, vocab_size: int, embedding: int = 256, hidden: int = 512, layers: int = 3,
                 dropout: float = 0.0):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=dropout)
        self.out = nn.Linear(hidden, vocab_size)

    def forward(self, x, state=None):
        h, state = self.lstm(self.emb(x), state)
        return self.out(h), state


def _pad(seqs: list[list[int]]) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.as_tensor(s)
    return x


def log_likelihood(model: SmilesLSTM, seqs: torch.Tensor) -> torch.Tensor:
    """Sum over tokens of log pi(token | prefix) for padded id sequences starting with ``^``
    (padding after ``$`` ignored). Shape (batch,)."""
    if seqs.shape[0] == 0:
        return torch.zeros(0, device=seqs.device)
    logits, _ = model(seqs[:, :-1])
    tgt = seqs[:, 1:]
    lp = torch.log_softmax(logits, -1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (lp * (tgt != 0)).sum(1)


@torch.no_grad()
def sample(model: SmilesLSTM, n: int, gen: torch.Generator, max_len: int = 128) -> torch.Tensor:
    """``n`` id sequences ``[^, ..., $, pad...]`` sampled autoregressively (shape n x <= max_len+1).
    Sequences that hit ``max_len`` are cut without an end token (decoded, they are usually invalid).
    Runs on the model's device; ``gen`` must be a generator on that device."""
    device = next(model.parameters()).device
    if n <= 0:
        return torch.zeros(0, 2, dtype=torch.long, device=device)
    out = torch.zeros(n, max_len + 1, dtype=torch.long, device=device)  # preallocated: no per-step concatenation
    out[:, 0] = 1
    x = out[:, :1]
    done = torch.zeros(n, dtype=torch.bool, device=device)
    state = None
    t = 0
    for t in range(1, max_len + 1):
        logits, state = model(x, state)
        x = torch.multinomial(torch.softmax(logits[:, -1], -1), 1, generator=gen)
        x.masked_fill_(done.unsqueeze(1), 0)
        out[:, t] = x.squeeze(1)
        done |= x.squeeze(1) == 2
        if done.all():
            break
    return out[:, : t + 1]


def prior_lr_factor(step: int, total: int, warmup: float = 0.0, final: float = 1.0) -> float:
    """Multiplier of the prior's learning rate at ``step`` (0-based) of ``total``: a linear warmup
    over the first ``warmup`` fraction of the steps, times a linear decay from 1 to ``final``."""
    w = max(1, round(warmup * total))
    return min(1.0, (step + 1) / w) * (1.0 - (1.0 - final) * step / max(total - 1, 1))


def minibatches(lengths, batch_size: int, gen: torch.Generator, bucket: int = 0) -> list[list[int]]:
    """One epoch of minibatch indices over ``len(lengths)`` items, each item exactly once: a random
    permutation cut into minibatches; with ``bucket > 0`` the permutation is first cut into chunks
    of ``bucket`` minibatches, each chunk sorted by ``lengths`` (similar lengths share a batch, so
    less padding), and the minibatch order is shuffled."""
    perm = torch.randperm(len(lengths), generator=gen).tolist()
    if bucket <= 0:
        return [perm[k:k + batch_size] for k in range(0, len(perm), batch_size)]
    out = []
    for c in range(0, len(perm), batch_size * bucket):
        chunk = sorted(perm[c:c + batch_size * bucket], key=lambda i: lengths[i])
        out += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [out[i] for i in torch.randperm(len(out), generator=gen).tolist()]


def _train_prior(cfg: PriorConfig, out: Path, progress: bool = True) -> None:
    device = resolve_device(cfg.device)
    with fixed_threads(cfg.threads):
        t0 = time.perf_counter()
        smiles = load_moses(cfg.n_train, cfg.seed)
        vocab = Vocabulary.from_smiles(smiles)
        data = [vocab.encode(s) for s in smiles]
        lengths = [len(d) for d in data]
        g = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        model = SmilesLSTM(len(vocab), cfg.embedding, cfg.hidden, cfg.layers, cfg.dropout).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        total = cfg.epochs * math.ceil(len(data) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: prior_lr_factor(k, total, cfg.warmup, cfg.final_lr))
        losses = []
        bar = progress_bar(total=total, desc="prior", show=progress, mininterval=5)
        for _ in range(cfg.epochs):
            for idx in minibatches(lengths, cfg.batch_size, g, cfg.bucket):
                x = _pad([data[i] for i in idx]).to(device)
                ntok = (x[:, 1:] != 0).sum()
                loss = -log_likelihood(model, x).sum() / ntok
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update()
        bar.close()
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, out / "model.pt")
        (out / "vocab.json").write_text(vocab.to_json())
        (out / "config.json").write_text(json.dumps(asdict(cfg)))
        (out / "stats.json").write_text(json.dumps({"train_seconds": time.perf_counter() - t0,
                                                    "torch_threads": torch.get_num_threads(),
                                                    "device": device.type}))
        np.save(out / "losses.npy", np.asarray(losses))


def train_prior(cfg: PriorConfig = PriorConfig(), force: bool = False, progress: bool = True) -> Path:
    """Train (or load from the cache) the prior; returns its folder (model.pt, vocab.json, losses).
    The folder is keyed by the config, the code and the numeric path (a prior trained on another
    CPU kind differs in its last bits); :func:`prior_recipe` names it without the path."""
    return cached_dir("chem-prior", cfg, lambda d: _train_prior(cfg, d, progress),
                      code=[_train_prior], force=force)


def prior_recipe(cfg: PriorConfig) -> str:
    """The prior's recipe name, ``chem-prior-recipe-<hash of its config>``: the same on every machine
    and code version (unlike :func:`train_prior`'s folder, which also keys the code and the numeric
    path). A frozen reward calibration records it, so it stays valid for the same recipe trained on
    another CPU kind or after a refactor, and is refused for another recipe."""
    from mdkl.runtime import cache_key

    return f"chem-prior-recipe-{cache_key(cfg, numeric=False)}"


def load_prior(path: Path) -> tuple[SmilesLSTM, Vocabulary, PriorConfig]:
    """Model (eval mode), vocabulary and config from a :func:`train_prior` folder."""
    path = Path(path)
    cfg = PriorConfig(**json.loads((path / "config.json").read_text()))
    vocab = Vocabulary.from_json((path / "vocab.json").read_text())
    model = SmilesLSTM(len(vocab), cfg.embedding, cfg.hidden, cfg.layers, cfg.dropout)
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True, map_location="cpu"))
    return model.eval(), vocab, cfg


#: the prior's sizes per profile (profiles only change sizes): training set, epochs, prior samples
#: for validity / uniqueness / novelty. The RL sizes are :data:`mdkl.chem.reinvent.RL_SIZES`.
PRIOR_SIZES = {
    "quick": dict(n_train=40_000, epochs=1, n_quality=1_000),
    "cpu": dict(n_train=1_000_000, epochs=1, n_quality=10_000),
    "paper": dict(n_train=1_584_663, epochs=10, n_quality=10_000),
}
#: The small profiles' prior: a 1x256 LSTM, batch 64, lr 4e-3 with a 2% warmup and a linear decay
#: to 2%, length-bucketed minibatches (recipe search measured in notebook 06, section 1). REINVENT's
#: 3x512 at batch 128 / lr 1e-3 needs far more CPU time than 2 cores allow.
SMALL_PRIOR = dict(embedding=64, hidden=256, layers=1, batch_size=64, lr=4e-3, warmup=0.02,
                   final_lr=0.02, bucket=50)


def prior_sizes(profile: str) -> dict:
    """The prior's sizes for a profile (see ``PRIOR_SIZES``)."""
    from mdkl.runtime import by_profile

    return by_profile(profile, **PRIOR_SIZES)


def prior_config(profile: str, seed: int = 0) -> PriorConfig:
    """The prior trained for a profile: REINVENT's 3x512 on all of MOSES for ``paper``, the small
    LSTM of ``SMALL_PRIOR`` on a subset otherwise."""
    from mdkl.runtime import resolve_profile

    s = prior_sizes(profile)
    extra = {} if resolve_profile(profile) == "paper" else SMALL_PRIOR
    return PriorConfig(n_train=s["n_train"], epochs=s["epochs"], seed=seed, **extra)


def training_set_canonical(cfg: PriorConfig, force: bool = False) -> list[str | None]:
    """Canonical SMILES of the prior's training molecules (the reference set of novelty), cached;
    canonicalized in a process pool over all cores (~0.2 ms per molecule)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    def compute():
        smiles = load_moses(cfg.n_train, cfg.seed)
        # spawn, as mdkl.chem.reward.Scorer: no fork of a process holding torch / BLAS threads
        with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=mp.get_context("spawn")) as ex:
            return list(ex.map(canonical, smiles, chunksize=2000))

    return cached("chem-moses-canonical", {"n": cfg.n_train, "seed": cfg.seed}, compute,
                  code=[training_set_canonical], force=force)


def prior_quality(model, vocab, n: int, train_smiles, seed: int = 0, batch: int = 500,
                  max_len: int = 128) -> dict:
    """Validity (RDKit-parsable), uniqueness (unique canonical / valid) and novelty (unique
    canonical not in ``train_smiles``, given canonical) of ``n`` samples, plus their log-likelihoods.
    Samples on the model's device (with a generator there)."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    smis, lls = [], []
    for k in range(0, n, batch):
        seqs = sample(model, min(batch, n - k), g, max_len)
        with torch.no_grad():
            lls.append(log_likelihood(model, seqs))
        smis += [vocab.decode(s[1:]) for s in seqs.tolist()]
    can = [canonical(s) for s in smis]
    valid = [c for c in can if c is not None]
    uniq = set(valid)
    train = set(train_smiles)
    return {"n": n, "validity": len(valid) / max(n, 1),
            "uniqueness": len(uniq) / max(len(valid), 1),
            "novelty": len(uniq - train) / max(len(uniq), 1),
            "smiles": smis, "log_likelihood": torch.cat(lls).cpu().numpy()}

