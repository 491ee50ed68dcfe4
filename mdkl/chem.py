"""Chemistry (paper §4, Table 2): a REINVENT-style SMILES LSTM prior, RL with the augmented-
likelihood ("DAP") loss with and without MARA.

- :func:`tokenize` / :class:`Vocabulary`: the standard SMILES regex tokenization (Schwaller et al.),
- :class:`SmilesLSTM`, :func:`train_prior` (MOSES subset from the molsets wheel, cached, seeded),
  :func:`prior_quality` (validity / uniqueness / novelty),
- :func:`dap_loss`: REINVENT's (log pi_prior + sigma R - log pi_theta)^2, whose minimizer is
  pi_prior exp(sigma R), i.e. reverse-KL-regularized RL with beta = 1/sigma,
- :func:`run_rl`: one REINVENT / MARA run of ``reward_calls`` reward calls; MARA is the shared
  shaping path (:func:`mdkl.shaping.shape_rewards`: Algorithm 1) applied to R with beta = 1/sigma
  and logp_ref = prior log-likelihood, one group per sampled batch.

Rewards live in :mod:`mdkl.chem_reward`, Table 2's metrics in :mod:`mdkl.chem_metrics`.
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

from mdkl.chem_reward import canonical, load_moses
from mdkl.runtime import cached, cached_dir, fixed_threads, progress_bar, resolve_device
from mdkl.shaping import ShapingConfig, shape_rewards

__all__ = ["SMILES_REGEX", "tokenize", "Vocabulary", "PriorConfig", "SmilesLSTM", "train_prior",
           "load_prior", "prior_lr_factor", "minibatches", "prior_config", "profile_sizes",
           "training_set_canonical", "sample",
           "log_likelihood", "prior_quality", "RLConfig", "dap_loss", "run_rl"]

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
    """Train (or load from the cache) the prior; returns its folder (model.pt, vocab.json, losses)."""
    return cached_dir("chem-prior", cfg, lambda d: _train_prior(cfg, d, progress),
                      code=[_train_prior], force=force)


def load_prior(path: Path) -> tuple[SmilesLSTM, Vocabulary, PriorConfig]:
    """Model (eval mode), vocabulary and config from a :func:`train_prior` folder."""
    path = Path(path)
    cfg = PriorConfig(**json.loads((path / "config.json").read_text()))
    vocab = Vocabulary.from_json((path / "vocab.json").read_text())
    model = SmilesLSTM(len(vocab), cfg.embedding, cfg.hidden, cfg.layers, cfg.dropout)
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True, map_location="cpu"))
    return model.eval(), vocab, cfg


#: sizes per profile (profiles only change sizes): prior training set / epochs, reward calls per RL run, seeds,
#: prior samples for validity / uniqueness / novelty.
PROFILE_SIZES = {
    "quick": dict(n_train=40_000, epochs=1, reward_calls=1_000, seeds=2, n_quality=1_000),
    "cpu": dict(n_train=1_000_000, epochs=1, reward_calls=10_000, seeds=3, n_quality=10_000),
    "paper": dict(n_train=1_584_663, epochs=10, reward_calls=10_000, seeds=10, n_quality=10_000),
}
#: The small profiles' prior: a 1x256 LSTM, batch 64, lr 4e-3 with a 2% warmup and a linear decay
#: to 2%, length-bucketed minibatches (recipe search measured in notebook 06, section 1). REINVENT's
#: 3x512 at batch 128 / lr 1e-3 needs far more CPU time than 2 cores allow.
SMALL_PRIOR = dict(embedding=64, hidden=256, layers=1, batch_size=64, lr=4e-3, warmup=0.02,
                   final_lr=0.02, bucket=50)


def profile_sizes(profile: str) -> dict:
    """Sizes of the chemistry experiment for a profile (see ``PROFILE_SIZES``)."""
    from mdkl.runtime import by_profile

    return by_profile(profile, **PROFILE_SIZES)


def prior_config(profile: str, seed: int = 0) -> PriorConfig:
    """The prior trained for a profile: REINVENT's 3x512 on all of MOSES for ``paper``, the small
    LSTM of ``SMALL_PRIOR`` on a subset otherwise."""
    from mdkl.runtime import resolve_profile

    s = profile_sizes(profile)
    extra = {} if resolve_profile(profile) == "paper" else SMALL_PRIOR
    return PriorConfig(n_train=s["n_train"], epochs=s["epochs"], seed=seed, **extra)


def training_set_canonical(cfg: PriorConfig, force: bool = False) -> list[str | None]:
    """Canonical SMILES of the prior's training molecules (the reference set of novelty), cached;
    canonicalized in a process pool over all cores (~0.2 ms per molecule)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    def compute():
        smiles = load_moses(cfg.n_train, cfg.seed)
        # spawn, as chem_reward.Scorer: no fork of a process holding torch / BLAS threads
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


# ----------------------------------------------------------------------------------------------
# RL: REINVENT's DAP loss, with or without MARA
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RLConfig:
    """One REINVENT / MARA run (defaults: REINVENT 4's staged-learning defaults, the paper's 10,000
    reward calls). The MARA fields carry the names of :class:`mdkl.shaping.ShapingConfig` (:attr:`shaping`)."""

    sigma: float = 128.0
    """DAP sigma (REINVENT default 128); the KL coefficient is beta = 1/sigma."""
    batch_size: int = 64
    """molecules sampled per step (REINVENT 4 default 64)."""
    lr: float = 5e-4
    """Adam learning rate of the agent: REINVENT's 5e-4 (Olivecrona et al. 2017, PMO's REINVENT);
    REINVENT 4 defaults to 1e-4, too slow to leave the prior within our shorter runs."""
    reward_calls: int = 10_000
    """Length of a run in reward calls, one per sampled molecule (paper: 10,000; duplicates count);
    the number of optimizer steps is reward_calls / batch_size, rounded up."""
    mara: str = "none"
    """MARA on the rewards before the DAP loss: 'alg1' (Algorithm 1) or 'auto' (= 'alg1': DAP is
    reverse-KL regularized), 'none' for REINVENT. Algorithm 2 needs a KL term it can re-anchor."""
    tau: float = 0.85
    """MARA threshold (paper: 0.80 or 0.85)."""
    max_len: int = 128
    """maximum sampled length in tokens."""
    seed: int = 0
    """seed of sampling."""
    device: str = "auto"
    """Where the LSTM agent, the frozen prior copy, the samples and the optimizer state lives: 'auto' (CUDA when available, else CPU), 'cpu', 'cuda'
    (:func:`mdkl.runtime.resolve_device`). The
    agent samples with a ``torch.Generator`` on that device (CPU and CUDA draw different streams from
    one seed); the scorer stays in its CPU worker processes, overlapping with the LSTM's forward
    passes as on the CPU."""

    def __post_init__(self):
        if self.sigma <= 0:
            raise ValueError(f"sigma={self.sigma}: the DAP loss needs sigma > 0 (REINVENT default 128)")
        if self.batch_size < 1 or self.reward_calls < 1:
            raise ValueError("batch_size and reward_calls must be >= 1")
        if self.mara not in ("none", "alg1", "auto"):
            raise ValueError(f"mara={self.mara!r}: use 'none', 'alg1' or 'auto' (DAP's KL is reverse, where "
                             f"MARA is Algorithm 1)")

    @property
    def beta(self) -> float:
        """The KL coefficient DAP implies, beta = 1/sigma."""
        return 1.0 / self.sigma

    @property
    def shaping(self) -> ShapingConfig:
        """MARA's settings as a :class:`mdkl.shaping.ShapingConfig`: reverse KL carried by the DAP
        loss (no k1 in the reward), beta = 1/sigma, tau, ``mara``."""
        return ShapingConfig.from_fields(self, kl="reverse", kl_placement="loss", advantage="none")


def dap_loss(logp_agent: torch.Tensor, logp_prior: torch.Tensor, rewards: torch.Tensor,
             sigma: float) -> torch.Tensor:
    """REINVENT's augmented-likelihood loss, mean over the batch of
    (log pi_prior(y) + sigma R(y) - log pi_theta(y))^2 (the paper's chemistry task, Table 2). Its minimizer is
    pi_theta ∝ pi_prior exp(sigma R): reverse-KL-regularized RL with beta = 1/sigma (Rem. 3.1)."""
    target = logp_prior.detach() + sigma * torch.as_tensor(rewards, dtype=logp_agent.dtype)
    return ((target - logp_agent) ** 2).mean()


def run_rl(prior: SmilesLSTM, vocab: Vocabulary, scorer, cfg: RLConfig = RLConfig(),
           progress: bool = False, overlap: bool = True) -> "dict":
    """One run: sample ``batch_size`` SMILES from the agent (initialized at the prior), score them
    (one reward call each), optionally augment with MARA, take one Adam step on the DAP loss,
    until ``reward_calls`` calls. The last batch is truncated so that exactly ``reward_calls`` calls are made.

    With ``overlap`` (and a scorer that has ``submit``), the main process computes the prior's
    log-likelihoods (no_grad) and the agent's forward pass, which do not depend on the rewards,
    while the scorer's pool scores the batch; the backward pass waits for the rewards. Without it,
    scoring finishes first. Both give identical results (no randomness in between); which one is
    faster depends on free cores (``benchmarks/bench_chem.py`` measures both). Returns ``{"log": DataFrame of
    every call, "timing": seconds per stage, "anchors": MARA statistics, "n_invalid", "n_nan"}``.
    Stages: ``sampling`` (sampling + decoding), ``scoring`` (submit to results; includes the
    forward passes when overlapped), ``update`` (includes them otherwise); ``forward`` reports the
    forward passes alone.
    ``anchors``: of ``batches``, those with >= 1 reward >= tau (``batches_with_anchor``) and with
    >= 2 (``batches_with_2plus``: only there can MARA change a reward, since a lone good sample is
    its own anchor), computed for REINVENT runs too with the same tau, and the samples whose
    reward MARA changed (``augmented``; 0 for REINVENT)."""
    import copy

    import pandas as pd

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    agent = copy.deepcopy(prior).to(device).train()
    for p in agent.parameters():
        p.requires_grad_(True)
    # used under no_grad only, never updated; the caller's module is left where it is
    prior = (prior if next(prior.parameters()).device == device else copy.deepcopy(prior).to(device)).eval()
    opt = torch.optim.Adam(agent.parameters(), lr=cfg.lr)
    scorer.reset()
    submit = getattr(scorer, "submit", None)
    cols: dict[str, list] = {k: [] for k in ("step", "smiles", "canonical", "valid", "reward",
                                             "reward_used", "logp_prior", "logp_agent")}
    timing = {"sampling": 0.0, "scoring": 0.0, "update": 0.0, "forward": 0.0}
    anchors = {"batches": 0, "batches_with_anchor": 0, "batches_with_2plus": 0, "augmented": 0}
    calls, step = 0, 0
    shaping = cfg.shaping
    bar = progress_bar(total=cfg.reward_calls, desc="RL", show=progress, mininterval=5)
    while calls < cfg.reward_calls:
        n = min(cfg.batch_size, cfg.reward_calls - calls)
        t0 = time.perf_counter()
        seqs = sample(agent, n, gen, cfg.max_len)
        smis = [vocab.decode(s) for s in seqs[:, 1:].tolist()]
        t1 = time.perf_counter()
        job = submit(smis) if submit is not None and overlap else None
        res = None if job is not None else scorer.score(smis)
        t2 = time.perf_counter()  # end of scoring when not overlapped
        with torch.no_grad():
            lp_prior = log_likelihood(prior, seqs)
        lp_agent = log_likelihood(agent, seqs)
        timing["forward"] += time.perf_counter() - t2
        if job is not None:
            res = job.get()
            t2 = time.perf_counter()  # forward passes ran inside scoring
        r = torch.as_tensor(res["reward"], dtype=torch.float32, device=device)
        r_used, *_ = shape_rewards(shaping, r, lp_agent, lp_prior, torch.zeros(n, dtype=torch.long, device=device))
        loss = dap_loss(lp_agent, lp_prior, r_used, cfg.sigma)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # asynchronous kernels: charge the update to its stage
        t3 = time.perf_counter()
        timing["sampling"] += t1 - t0
        timing["scoring"] += t2 - t1
        timing["update"] += t3 - t2
        anchors["batches"] += 1
        n_good = int((r >= cfg.tau).sum())
        anchors["batches_with_anchor"] += int(n_good >= 1)
        anchors["batches_with_2plus"] += int(n_good >= 2)
        anchors["augmented"] += int((r_used != r).sum())
        cols["step"] += [step] * n
        cols["smiles"] += smis
        cols["canonical"] += list(res["canonical"])
        cols["valid"] += np.asarray(res["valid"], dtype=bool).tolist()
        cols["reward"] += r.tolist()
        cols["reward_used"] += r_used.tolist()
        cols["logp_prior"] += lp_prior.tolist()
        cols["logp_agent"] += lp_agent.detach().tolist()
        calls += n
        step += 1
        bar.update(n)
    bar.close()
    log = pd.DataFrame({"call": np.arange(1, calls + 1), **cols})
    return {"log": log, "timing": timing, "anchors": anchors, "n_invalid": scorer.n_invalid,
            "n_nan": scorer.n_nan}


def main(argv=None) -> None:
    """``python -m mdkl.chem prior [--profile P] [--seed S]``: the one-off slow steps of notebook 06
    (train or reuse the profile's prior; canonicalize its training set for novelty), cached. The
    Makefile runs this before notebook 06 so the notebook itself only does the RL runs."""
    import argparse

    from mdkl.runtime import resolve_profile

    ap = argparse.ArgumentParser(prog="python -m mdkl.chem", description=main.__doc__)
    ap.add_argument("step", choices=["prior"])
    ap.add_argument("--profile", default=None, help="quick | cpu | paper (default: $MDKL_PROFILE or cpu)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = prior_config(resolve_profile(args.profile), args.seed)
    t = time.perf_counter()
    path = train_prior(cfg)
    stats = json.loads((path / "stats.json").read_text())
    print(f"prior {path.name}: trained in {stats['train_seconds'] / 60:.1f} min ({cfg})")
    training_set_canonical(cfg)
    print(f"prior and canonical training set ready ({time.perf_counter() - t:.0f} s in this call)")


if __name__ == "__main__":
    main()
