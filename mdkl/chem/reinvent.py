"""Chemistry RL (paper §4, Table 2): REINVENT's augmented-likelihood ("DAP") loop with and without
MARA, on the prior of :mod:`mdkl.chem.prior`.

- :func:`dap_loss`: REINVENT's (log pi_prior + sigma R - log pi_theta)^2, whose minimizer is
  pi_prior exp(sigma R), i.e. reverse-KL-regularized RL with beta = 1/sigma,
- :func:`in_batch_duplicates`: REINVENT 4's duplicate mask (a repeat within a batch scores 0),
- :func:`run_rl`: one REINVENT / MARA run of ``reward_calls`` reward calls; MARA is the shared
  shaping path (:func:`mdkl.shaping.shape_rewards`: Algorithm 1) applied to R with beta = 1/sigma
  and logp_ref = prior log-likelihood, one group per sampled batch,
- :func:`profile_sizes`: the experiment's sizes per profile.

Rewards live in :mod:`mdkl.chem.reward`, Table 2's metrics in :mod:`mdkl.chem.metrics`, the
calibration of the reward analogue in :mod:`mdkl.chem.calibration`, its tests in :mod:`mdkl.chem.stats`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from mdkl.chem.prior import (SmilesLSTM, Vocabulary, log_likelihood, prior_config, prior_sizes, sample,
                             train_prior, training_set_canonical)
from mdkl.runtime import progress_bar, resolve_device
from mdkl.shaping import ShapingConfig, shape_rewards

__all__ = ["RL_SIZES", "profile_sizes", "RLConfig", "dap_loss", "in_batch_duplicates", "run_rl"]

#: RL sizes per profile (profiles only change sizes): reward calls per run and the most seeds per
#: arm the profile's time budget allows (the seeds actually run are the smaller of this cap and the
#: number the pre-registered power calculation asks for, :func:`mdkl.chem.stats.seeds_for_power`;
#: the paper profile's cap is that function's own limit, so it runs the planned seeds). cpu: 5 seeds,
#: 20 runs of ~40 s on 2 cores, so that notebook 06 fits 18 minutes. The prior's sizes are
#: :data:`mdkl.chem.prior.PRIOR_SIZES`.
RL_SIZES = {
    "quick": dict(reward_calls=1_000, max_seeds=2),
    "cpu": dict(reward_calls=10_000, max_seeds=5),
    "paper": dict(reward_calls=10_000, max_seeds=1000),
}


def profile_sizes(profile: str) -> dict:
    """Sizes of the chemistry experiment for a profile: the prior's (:func:`mdkl.chem.prior.prior_sizes`)
    and the RL runs' (``RL_SIZES``) in one dict."""
    from mdkl.runtime import by_profile

    return {**prior_sizes(profile), **by_profile(profile, **RL_SIZES)}


@dataclass(frozen=True)
class RLConfig:
    """One REINVENT / MARA run (defaults: REINVENT 4's staged learning as the paper runs it: DAP with
    sigma 128, batch 64, in-batch repeats scored 0, no diversity filter, no experience replay; the
    paper's 10,000 reward calls). The learning rate of a calibrated run is the calibration's
    (:class:`mdkl.chem.calibration.RewardCalibration`). The MARA fields carry the names of :class:`mdkl.shaping.ShapingConfig` (:attr:`shaping`)."""

    sigma: float = 128.0
    """DAP sigma (REINVENT default 128); the KL coefficient is beta = 1/sigma."""
    batch_size: int = 64
    """molecules sampled per step: 64 as in REINVENT 4's example staged-learning configuration
    (the value the paper's REINVENT 4 runs start from; it is not REINVENT 4's code default)."""
    lr: float = 5e-4
    """Adam learning rate of the agent: REINVENT's 5e-4 (Olivecrona et al. 2017, PMO's REINVENT);
    REINVENT 4's is 1e-4 (a sensitivity check; :mod:`mdkl.chem.calibration` picks one per profile)."""
    reward_calls: int = 10_000
    """Length of a run in reward calls, one per sampled molecule (paper: 10,000): every sampled
    string counts, invalid ones, repeats within a batch and repeats of earlier batches included,
    as REINVENT 4 spends steps x batch size samples whatever they are. The number of optimizer
    steps is reward_calls / batch_size, rounded up."""
    duplicates: str = "zero"
    """Reward of a molecule sampled again within the same batch (same canonical SMILES, after its
    first occurrence): 'zero' as REINVENT 4 (its sampler marks it DUPLICATE and its scorer gives
    0), or 'cached' (the molecule's full reward, from the scorer's memo). Either way it costs one
    reward call. Repeats across batches always get the full reward (REINVENT 4 without a
    diversity filter scores them again, with the same result)."""
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
        if self.duplicates not in ("cached", "zero"):
            raise ValueError(f"duplicates={self.duplicates!r}: use 'zero' (REINVENT 4: a repeat within a batch "
                             f"scores 0) or 'cached' (it gets the molecule's reward)")
        if not (0.0 < self.lr < 1.0) or not (0.0 <= self.tau <= 1.0):
            raise ValueError(f"lr={self.lr}, tau={self.tau}: need 0 < lr < 1 (REINVENT: 5e-4, REINVENT 4: 1e-4) "
                             f"and 0 <= tau <= 1 (rewards lie in [0, 1])")
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


def in_batch_duplicates(canonical) -> np.ndarray:
    """Boolean mask of the molecules that repeat an earlier one of the same batch (equal canonical
    SMILES; the first occurrence is not a duplicate, invalid ones (None) never are): REINVENT 4's
    DUPLICATE state, whose reward is 0."""
    seen: set = set()
    out = np.zeros(len(canonical), dtype=bool)
    for i, c in enumerate(canonical):
        if c is None:
            continue
        out[i] = c in seen
        seen.add(c)
    return out


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
    every call, "history": the DAP loss and the agent's gradient norm per optimizer step (REINVENT
    applies no clip; :func:`mdkl.numerics.numeric_failure` reads them), "timing": seconds per stage,
    "anchors": MARA statistics, "n_invalid", "n_nan"}``.
    The log's ``reward`` is the molecule's reward, ``duplicate`` marks in-batch repeats
    (:func:`in_batch_duplicates`), ``reward_used`` is what entered the DAP loss (0 for a duplicate
    under ``duplicates='zero'``, then MARA's shaping).
    Stages: ``sampling`` (sampling + decoding), ``scoring`` (submit to results; includes the
    forward passes when overlapped), ``update`` (includes them otherwise); ``forward`` reports the
    forward passes alone.
    ``anchors`` (MARA's activity): of ``batches``, those with >= 1 reward >= tau
    (``batches_with_anchor``) and with >= 2 (``batches_with_2plus``: only there can MARA change a
    reward, since a lone good sample is its own anchor), computed for REINVENT runs too with the
    same tau on the rewards that enter the loss; the samples whose reward MARA changed
    (``augmented``; 0 for REINVENT), the sum of MARA's changes (``augmentation_sum``) and their
    mean over the changed samples (``mean_augmentation``, 0 when none), and the in-batch
    duplicates (``duplicates``, counted under either ``duplicates`` setting)."""
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
                                             "reward_used", "duplicate", "logp_prior", "logp_agent")}
    timing = {"sampling": 0.0, "scoring": 0.0, "update": 0.0, "forward": 0.0}
    anchors = {"batches": 0, "batches_with_anchor": 0, "batches_with_2plus": 0, "augmented": 0,
               "augmentation_sum": 0.0, "mean_augmentation": 0.0, "duplicates": 0}
    calls, step = 0, 0
    steps_log: dict[str, list] = {"loss": [], "grad_norm": []}  # per optimizer step (REINVENT applies no clip)
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
        dup = in_batch_duplicates(res["canonical"])
        r_in = r.masked_fill(torch.as_tensor(dup, device=device), 0.0) if cfg.duplicates == "zero" else r
        r_used, *_ = shape_rewards(shaping, r_in, lp_agent, lp_prior, torch.zeros(n, dtype=torch.long, device=device))
        loss = dap_loss(lp_agent, lp_prior, r_used, cfg.sigma)
        opt.zero_grad()
        loss.backward()
        steps_log["loss"].append(float(loss.detach()))
        steps_log["grad_norm"].append(float(torch.sqrt(sum(p.grad.detach().pow(2).sum() for p in agent.parameters()
                                                           if p.grad is not None))))
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # asynchronous kernels: charge the update to its stage
        t3 = time.perf_counter()
        timing["sampling"] += t1 - t0
        timing["scoring"] += t2 - t1
        timing["update"] += t3 - t2
        anchors["batches"] += 1
        n_good = int((r_in >= cfg.tau).sum())
        anchors["batches_with_anchor"] += int(n_good >= 1)
        anchors["batches_with_2plus"] += int(n_good >= 2)
        anchors["augmented"] += int((r_used != r_in).sum())
        anchors["augmentation_sum"] += float((r_used - r_in).sum())
        anchors["duplicates"] += int(dup.sum())
        cols["step"] += [step] * n
        cols["smiles"] += smis
        cols["canonical"] += list(res["canonical"])
        cols["valid"] += np.asarray(res["valid"], dtype=bool).tolist()
        cols["reward"] += r.tolist()
        cols["reward_used"] += r_used.tolist()
        cols["duplicate"] += dup.tolist()
        cols["logp_prior"] += lp_prior.tolist()
        cols["logp_agent"] += lp_agent.detach().tolist()
        calls += n
        step += 1
        bar.update(n)
    bar.close()
    if anchors["augmented"]:
        anchors["mean_augmentation"] = anchors["augmentation_sum"] / anchors["augmented"]
    log = pd.DataFrame({"call": np.arange(1, calls + 1), **cols})
    history = pd.DataFrame({"step": np.arange(step), **steps_log})
    return {"log": log, "history": history, "timing": timing, "anchors": anchors, "n_invalid": scorer.n_invalid,
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
