"""Toy trainers for the didactic experiments (paper Figs. 1-5).

Two pieces:

- :func:`train_toy`: KL-regularized policy-gradient RL (REINFORCE with a leave-one-out or mean
  baseline) on sampled batches, for a categorical policy (free logits over K actions) or a 1-D
  Gaussian policy. KL direction and placement, entropy bonus and MARA are config fields; the
  rewards, advantages and loss come from the shared :mod:`mdkl.shaping` path. Several seeds
  train in parallel as independent rows of one parameter tensor (Adam is elementwise, so rows
  never interact); each seed's batch is one shaping group.
- :func:`fit_density`: distribution matching (Fig. 1a/b), minimizing the exact reverse or
  forward KL to a target density on a quadrature grid.

Defaults of :class:`ToyConfig` follow our reading of the authors' earlier toy code (the paper
states no toy training settings): logits initialised at 0, batches of 32, AdamW lr 5e-3, 1000
steps, KL as a loss (k2).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np
import torch

from mdkl.kl import kl_gradient_direction
from mdkl.mara import check_tau_in_reward_range
from mdkl.runtime import progress_bar, resolve_device
from mdkl.shaping import ShapingConfig, advantages, policy_loss, shape_rewards
from mdkl.successors import SuccessorFields

__all__ = ["ToyConfig", "ToyResult", "CategoricalPolicy", "GaussianPolicy", "train_toy",
           "train_categorical", "train_categorical_cached", "fit_density", "DensityFit"]


@dataclass(frozen=True)
class ToyConfig(SuccessorFields):
    """Configuration of one toy KL-regularized RL run (all seeds of it train in parallel). The
    shaping fields carry the names of :class:`mdkl.shaping.ShapingConfig` (:attr:`shaping`); the
    successor methods' fields come from :class:`mdkl.successors.SuccessorFields` (the outcome of a
    sample for ``successor='ips'`` is its action; ``'flowrl'`` trains one log Z per seed)."""

    beta: float = 1e-3
    """KL coefficient beta (>= 0; 0 disables the KL term)."""
    kl: Literal["reverse", "forward", "none"] = "reverse"
    """KL direction whose gradient the regularizer follows ('none': no KL term)."""
    kl_placement: Literal["reward", "loss"] = "loss"
    """Where the estimator goes: 'loss' (differentiated: k2 reverse, k3 forward) or 'reward'
    (detached k1, reverse only); see :func:`mdkl.shaping.kl_estimator_for`."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """Explicit estimator overriding the (kl, kl_placement) table; its one use is k1 as a loss
    (kl='reverse', kl_placement='loss'), whose gradient is zero in expectation (notebook 02)."""
    entropy: float = 0.0
    """Entropy bonus eta, added to the reward as -eta log pi(y) (detached)."""
    mara: Literal["none", "alg1", "alg2", "auto"] = "none"
    """MARA variant: 'alg1' augmented rewards, 'alg2' anchor substitution, 'auto' = the right one
    for the KL direction (alg1 for reverse, alg2 for forward, see mdkl.mara.MARA_FOR_KL)."""
    tau: float | None = None
    """MARA reward threshold (must be <= max reward)."""
    anchor: Literal["support", "reward", "random"] = "support"
    """MARA anchor: the paper's best-supported good sample, or the highest-reward / a random good
    sample (see mdkl.mara.mara_anchor; 'random' draws from the shared generator)."""
    batch_size: int = 32
    """Samples per seed per step."""
    lr: float = 5e-3
    """AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (torch's default)."""
    steps: int = 1000
    """Policy-gradient steps (one sampled batch per seed each)."""
    advantage: Literal["rloo", "mean", "none"] = "rloo"
    """Advantage within each seed's batch: leave-one-out baseline, batch-mean baseline, or the raw
    rewards (:func:`mdkl.shaping.group_advantages`)."""
    init: Literal["zeros", "reference"] = "zeros"
    """Initial logits: zeros (uniform) or the reference log-probabilities (categorical only)."""
    seed: int = 0
    """Seed of the one torch generator that samples every run's batches. The runs share it, so
    run i's trajectory depends on ``n_seeds`` too: fix (seed, n_seeds) to reproduce a result."""
    n_seeds: int = 1
    """Independent runs trained in parallel."""
    log_every: int = 10
    """Record the policy every this many steps."""
    device: str = "auto"
    """Where the policy, the samples and the optimizer state live: 'auto' (CUDA when available,
    else CPU), 'cpu', 'cuda' (:func:`mdkl.runtime.resolve_device`). The sampling generator is a
    ``torch.Generator`` on that device: CPU and CUDA draw different random streams from one seed."""

    @property
    def shaping(self) -> ShapingConfig:
        """The shaping settings (:class:`mdkl.shaping.ShapingConfig`, sequence-level KL); raises a
        ``ValueError`` naming the fix for inconsistent settings."""
        return ShapingConfig.from_fields(self)

    @property
    def kl_direction(self) -> str:
        """'reverse', 'forward' or 'none': which divergence the KL term's gradient follows."""
        est = self.shaping.estimator
        return "none" if est is None else kl_gradient_direction(est, self.kl_placement)

    @property
    def mara_algorithm(self) -> str:
        """The MARA algorithm actually used ('none', 'alg1' or 'alg2')."""
        return self.shaping.mara_algorithm

    def replace(self, **changes) -> "ToyConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class ToyResult:
    """Outcome of :func:`train_toy`: ``final`` policy per seed and its ``history``.

    Categorical: ``final`` is [n_seeds, K] probabilities, ``history`` [n_logged, n_seeds, K].
    Gaussian: ``final`` is [n_seeds, 2] (mean, std), ``history`` [n_logged, n_seeds, 2].
    """

    config: ToyConfig
    steps: np.ndarray
    history: np.ndarray
    final: np.ndarray
    mean_reward: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """[steps, n_seeds]: each seed's loss at every step (what its gradient came from)."""
    grad_norm: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """[steps, n_seeds]: the L2 norm of each seed's gradient at every step (no clip is applied);
    :func:`mdkl.numerics.numeric_failure` reads a seed's column beside its loss."""

    @property
    def mean_final(self) -> np.ndarray:
        """The final policy averaged over seeds."""
        return self.final.mean(axis=0)


class CategoricalPolicy(torch.nn.Module):
    """Free logits over K actions, one row per seed."""

    def __init__(self, n_seeds: int, n_actions: int, init_logits: torch.Tensor | None = None):
        super().__init__()
        init = torch.zeros(n_seeds, n_actions, dtype=torch.float64)
        if init_logits is not None:
            init = init + torch.as_tensor(init_logits, dtype=torch.float64)
        self.logits = torch.nn.Parameter(init)

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return torch.multinomial(torch.softmax(self.logits, -1), batch, replacement=True, generator=gen)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits, -1).gather(1, x)

    def snapshot(self) -> np.ndarray:
        return torch.softmax(self.logits.detach(), -1).cpu().numpy()


class GaussianPolicy(torch.nn.Module):
    """1-D Gaussian N(mean, exp(log_std)^2), one (mean, log_std) per seed."""

    def __init__(self, n_seeds: int, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean = torch.nn.Parameter(torch.full((n_seeds, 1), float(mean), dtype=torch.float64))
        self.log_std = torch.nn.Parameter(torch.full((n_seeds, 1), float(np.log(std)), dtype=torch.float64))

    def sample(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            eps = torch.randn(self.mean.shape[0], batch, generator=gen, dtype=torch.float64, device=self.mean.device)
            return self.mean + self.log_std.exp() * eps

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.log_std.exp()
        return -0.5 * z**2 - self.log_std - 0.5 * np.log(2 * np.pi)

    def snapshot(self) -> np.ndarray:
        return torch.cat([self.mean, self.log_std.exp()], 1).detach().cpu().numpy()


def _validate(cfg: ToyConfig, reward_range: tuple[float, float] | None) -> ShapingConfig:
    shaping = cfg.shaping  # beta, KL, MARA and advantage settings
    if shaping.mara != "none" and shaping.tau_percentile is None and reward_range is not None:
        check_tau_in_reward_range(cfg.tau, *reward_range)
    if cfg.batch_size < 1 or cfg.steps < 0 or cfg.n_seeds < 1:
        raise ValueError("batch_size, n_seeds must be >= 1 and steps >= 0")
    return shaping


def train_toy(
    cfg: ToyConfig,
    policy: torch.nn.Module,
    reward_fn: Callable[[torch.Tensor], torch.Tensor],
    ref_log_prob: Callable[[torch.Tensor], torch.Tensor],
    *,
    max_reward: float | None = None,
    min_reward: float | None = None,
    progress: bool = False,
) -> ToyResult:
    """REINFORCE on ``E[R] - beta * KL`` (+ entropy, + MARA) for ``cfg.steps`` steps.

    ``reward_fn`` and ``ref_log_prob`` map a [n_seeds, batch] tensor of samples to rewards and
    reference log-probabilities. ``policy`` is moved to ``cfg.device`` (in place), where the samples
    are drawn; ``reward_fn`` / ``ref_log_prob`` receive them there (their outputs are moved there
    too). Results come back to the CPU. Per step: sample a batch per seed, then the shared shaping path
    with each seed's batch as one group (:func:`mdkl.shaping.shape_rewards`: MARA, k1 penalty in
    the reward, entropy bonus; :func:`mdkl.shaping.advantages`; :func:`mdkl.shaping.policy_loss`:
    REINFORCE + the estimator as a loss), and one AdamW step.
    """
    shaping = _validate(cfg, None if max_reward is None else
                        (-np.inf if min_reward is None else min_reward, max_reward))
    device = resolve_device(cfg.device)
    policy.to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    s, b = cfg.n_seeds, cfg.batch_size
    # FlowRL's learned log Z: one scalar per seed, trained with the policy (FlowRL: a head on the prompt)
    log_z = (torch.nn.Parameter(torch.zeros(s, 1, dtype=torch.float64, device=device))
             if shaping.successor == "flowrl" else None)
    opt = torch.optim.AdamW([*policy.parameters(), *([log_z] if log_z is not None else [])], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    group = torch.arange(s, device=device).repeat_interleave(b)
    steps, hist, mean_r, losses, gnorms = [0], [policy.snapshot()], [], [], []
    for it in progress_bar(range(1, cfg.steps + 1), show=progress, desc="toy RL", leave=False):
        x = policy.sample(b, gen)
        logp = policy.log_prob(x)
        with torch.no_grad():
            r = torch.as_tensor(reward_fn(x), dtype=torch.float64, device=device)
            lref = torch.as_tensor(ref_log_prob(x), dtype=torch.float64, device=device)
        if torch.isnan(r).any():
            raise ValueError("reward_fn returned NaN: rewards must be finite")
        mean_r.append(r.mean(1).cpu().numpy())
        shaped, lref_kl, _ = shape_rewards(shaping, r.flatten(), logp.flatten(), lref.flatten(), group,
                                        generator=gen, outcomes=x.flatten() if shaping.successor == "ips" else None)
        adv = advantages(shaping, r.flatten(), shaped, group, logp=logp.detach().flatten()).view(s, b)
        loss = policy_loss(shaping, logp, lref_kl.view(s, b), adv, log_z=log_z)  # one loss per seed
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        losses.append(loss.detach().cpu().numpy())
        gnorms.append(_seed_grad_norms(policy, log_z, s))
        opt.step()
        if it % cfg.log_every == 0 or it == cfg.steps:
            steps.append(it)
            hist.append(policy.snapshot())
    return ToyResult(cfg, np.array(steps), np.stack(hist), hist[-1],
                     np.stack(mean_r) if mean_r else np.zeros((0, s)),
                     np.stack(losses) if losses else np.zeros((0, s)), np.stack(gnorms) if gnorms else np.zeros((0, s)))


def _seed_grad_norms(policy: torch.nn.Module, log_z: torch.Tensor | None, n_seeds: int) -> np.ndarray:
    """L2 norm of each seed's gradient: every parameter of the toy policies (and FlowRL's log Z)
    holds one row per seed, so a seed's gradient is its rows."""
    sq = torch.zeros(n_seeds, dtype=torch.float64, device=next(policy.parameters()).device)
    for p in [*policy.parameters(), *([log_z] if log_z is not None else [])]:
        if p.grad is not None:
            sq += p.grad.detach().reshape(n_seeds, -1).pow(2).sum(1)
    return sq.sqrt().cpu().numpy()


def train_categorical(cfg: ToyConfig, rewards, ref, *, progress: bool = False) -> ToyResult:
    """:func:`train_toy` for a categorical policy over ``len(rewards)`` actions.

    ``rewards`` and ``ref`` are vectors (ref a probability vector, zeros allowed).
    """
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64))
    p = np.asarray(ref, dtype=np.float64)
    if r.ndim != 1 or p.shape != tuple(r.shape):
        raise ValueError("rewards and ref must be 1-D vectors of the same length")
    if torch.isnan(r).any():
        raise ValueError("rewards contain NaN: every action needs a finite reward")
    with np.errstate(divide="ignore"):
        log_ref = torch.as_tensor(np.log(p))
    init = None
    if cfg.init == "reference":
        init = torch.clamp(log_ref, min=-30.0)
    elif cfg.init != "zeros":
        raise ValueError(f"unknown init {cfg.init!r}: use 'zeros' or 'reference'")
    policy = CategoricalPolicy(cfg.n_seeds, r.numel(), init)
    device = resolve_device(cfg.device)
    r, log_ref = r.to(device), log_ref.to(device)
    return train_toy(cfg, policy, lambda x: r[x], lambda x: log_ref[x],
                     max_reward=float(r.max()), min_reward=float(r.min()), progress=progress)


def train_categorical_cached(name: str, cfg: ToyConfig, rewards, ref, *, force: bool = False) -> ToyResult:
    """:func:`train_categorical` through :func:`mdkl.runtime.cached` (``data/cache/<name>-<key>``),
    keyed by the config, the problem (rewards, reference) and the code of this module (with the
    modules it imports), so notebooks re-train only what changed."""
    from mdkl import runtime

    key = {"cfg": cfg, "rewards": np.asarray(rewards, dtype=np.float64),
           "ref": np.asarray(ref, dtype=np.float64)}
    return runtime.cached(name, key, lambda: train_categorical(cfg, rewards, ref),
                          code=[sys.modules[__name__]], force=force)


# ----------------------------------------------------------------------------------------------
# distribution matching (Fig. 1a/b)
# ----------------------------------------------------------------------------------------------
@dataclass
class DensityFit:
    """Result of :func:`fit_density`: densities on ``grid`` at each recorded step."""

    grid: np.ndarray
    target: np.ndarray
    steps: np.ndarray
    densities: np.ndarray  # [n_logged, len(grid)]
    divergence: np.ndarray  # exact divergence at each recorded step


def fit_density(
    target_pdf: Callable[[np.ndarray], np.ndarray],
    family: Literal["gaussian", "categorical"],
    divergence: Literal["reverse", "forward"],
    *,
    steps: int = 600,
    lr: float = 0.05,
    grid: np.ndarray | None = None,
    n_bins: int = 50,
    bin_range: tuple[float, float] = (-4.0, 4.0),
    init_mean: float = -3.0,
    init_std: float = 2.0,
    log_every: int = 10,
) -> DensityFit:
    """Fit a policy density q to ``target_pdf`` p by Adam on the exact divergence on a grid.

    ``divergence='reverse'`` minimizes KL(q || p) (mode seeking), ``'forward'`` KL(p || q)
    (mass covering). ``family='gaussian'`` is the restrictive policy (Fig. 1a: one mode or
    moment matching); ``'categorical'`` is ``n_bins`` free bins on ``bin_range`` (Fig. 1b:
    expressive enough to match both modes under either divergence).
    """
    if family == "gaussian":
        grid = np.linspace(-10, 10, 4001) if grid is None else np.asarray(grid, dtype=np.float64)
        mean = torch.tensor(init_mean, dtype=torch.float64, requires_grad=True)
        log_std = torch.tensor(np.log(init_std), dtype=torch.float64, requires_grad=True)
        params = [mean, log_std]
        g = torch.as_tensor(grid)
        w = float(grid[1] - grid[0])

        def log_q():
            z = (g - mean) / log_std.exp()
            lq = -0.5 * z**2 - log_std - 0.5 * np.log(2 * np.pi)
            return lq - torch.logsumexp(lq + np.log(w), 0)  # renormalize on the grid
    elif family == "categorical":
        edges = np.linspace(*bin_range, n_bins + 1)
        grid = 0.5 * (edges[1:] + edges[:-1])
        w = float(edges[1] - edges[0])
        logits = torch.zeros(n_bins, dtype=torch.float64, requires_grad=True)
        params = [logits]

        def log_q():
            return torch.log_softmax(logits, 0) - np.log(w)
    else:
        raise ValueError(f"unknown family {family!r}: use 'gaussian' or 'categorical'")
    p_np = np.asarray(target_pdf(grid), dtype=np.float64)
    p_np = p_np / (p_np.sum() * w)
    p = torch.as_tensor(p_np)
    with np.errstate(divide="ignore"):
        log_p = torch.as_tensor(np.log(p_np))

    def div(lq):
        q = lq.exp()
        if divergence == "reverse":
            return (q * (lq - log_p.clamp(min=-700))).sum() * w
        if divergence == "forward":
            m = p > 0
            return (p[m] * (log_p[m] - lq[m])).sum() * w
        raise ValueError(f"unknown divergence {divergence!r}: use 'reverse' or 'forward'")

    opt = torch.optim.Adam(params, lr=lr)
    rec_steps, dens, divs = [], [], []
    for t in range(steps + 1):
        lq = log_q()
        d = div(lq)
        if t % log_every == 0 or t == steps:
            rec_steps.append(t)
            dens.append(lq.exp().detach().numpy())
            divs.append(float(d.detach()))
        if t == steps:
            break
        opt.zero_grad()
        d.backward()
        opt.step()
    return DensityFit(grid, p_np, np.array(rec_steps), np.stack(dens), np.array(divs))
