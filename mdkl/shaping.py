"""The one regularization ("shaping") path every trainer calls: KL direction and placement, MARA,
entropy bonus and group advantages of KL-regularized policy-gradient RL (paper §3-§5).

The toy trainer (:mod:`mdkl.toy`), the LM trainer (:mod:`mdkl.lm`, 1-2 and creative tasks), the
TRL extension (:mod:`mdkl.lm.trl_ext`) and the chemistry loop (:mod:`mdkl.chem.reinvent`, MARA Algorithm 1 on
the rewards with beta = 1/sigma) all configure it with a :class:`ShapingConfig` and call, per batch:

1. :func:`shape_rewards`: the Unlikely transform (``unlikely`` > 0) -> MARA within each group
   (Algorithm 1 or 2, tau fixed or a percentile) -> the k1 penalty -beta (log pi - log pi_ref) if
   the KL sits in the reward -> the entropy bonus -eta log pi. Returns the shaped rewards and the
   reference log-probs the KL *loss* must see (the anchor's under Algorithm 2).
2. :func:`advantages` (BoN training's 0/1 mask, or :func:`group_advantages` of the shaped rewards
   within each group: 'none', 'mean', 'rloo', 'grpo').
3. :func:`policy_loss`: REINFORCE -mean(A log pi(y)) plus the KL estimator as a loss (k2, k3, or
   k1 whose gradient is zero in expectation), on sequence log-probs or summed per token. Under
   Algorithm 2 the samples it anchored always get the KL on the *sequence*, against
   log pi_ref(z) (:func:`mdkl.mara_kl.anchored_kl_loss`): the anchor's reference is a sequence
   probability, and spreading it over tokens keeps the reference's preference (``notebooks/04``,
   section 5).

Placement table (one table, :func:`mdkl.kl.kl_gradient_direction`; :func:`kl_estimator_for` reads
it backwards): ``kl='reverse'`` + ``'reward'`` = k1 detached in the reward (PPO / RLOO);
``'reverse'`` + ``'loss'`` = k2 loss; ``'forward'`` + ``'loss'`` = k3 loss (GRPO's estimator).

A batch is a flat vector of samples with a group id per sample (the G samples of one prompt, one
toy seed's batch, one chemistry batch), the convention of :mod:`mdkl.mara`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from mdkl.baselines import best_of_n_mask, unlikeliness_rewards
from mdkl.kl import kl_gradient_direction, kl_loss, kl_reward_penalty
from mdkl.mara import ANCHORS, MARA_FOR_KL, batch_percentile_tau, check_mara_has_kl, mara_rewards, mara_substitute
from mdkl.mara_kl import KL_WEIGHTS, anchored_kl_loss, loo_weight_correction, self_normalized_k3
from mdkl.successors import (SuccessorFields, check_successor, differential_smoothing_rewards, flow_balance_loss,
                             inverse_probability_rewards, ucpo_advantages)

__all__ = ["ShapingConfig", "Shaped", "kl_estimator_for", "shape_rewards", "group_advantages", "advantages",
           "policy_loss", "ADVANTAGES"]

#: advantage estimators of :func:`group_advantages`
ADVANTAGES = ("none", "mean", "rloo", "grpo")


def kl_estimator_for(kl: str, placement: str) -> str:
    """The estimator whose gradient in ``placement`` follows the ``kl`` direction ('reverse' or
    'forward'): the inverse of :func:`mdkl.kl.kl_gradient_direction` (reverse+reward = k1,
    reverse+loss = k2, forward+loss = k3)."""
    for est in ("k1", "k2", "k3"):
        try:
            if kl_gradient_direction(est, placement) == kl:
                return est
        except ValueError:
            continue
    raise ValueError(f"unsupported KL (direction, placement) ({kl!r}, {placement!r}): use reverse+reward "
                     f"(k1), reverse+loss (k2) or forward+loss (k3)")


@dataclass(frozen=True)
class ShapingConfig(SuccessorFields):
    """How rewards, advantages and the KL term of one RL run are formed. Trainers build it from
    their own configs' same-named fields with :meth:`from_fields`; invalid settings raise a
    ``ValueError`` naming the fix when it is constructed. The successor methods' fields
    (``successor``, ``gamma_p``, ...) are inherited from :class:`mdkl.successors.SuccessorFields`."""

    beta: float = 0.01
    """KL coefficient beta (>= 0; 0 disables the KL term). MARA's augmentation scales with it."""
    kl: Literal["reverse", "forward", "none"] = "reverse"
    """KL direction whose gradient the regularizer follows ('none': no KL term)."""
    kl_placement: Literal["reward", "loss"] = "reward"
    """Where the KL estimator goes: 'reward' (detached, k1) or 'loss' (differentiated: k2 reverse,
    k3 forward); see :func:`kl_estimator_for`."""
    kl_level: Literal["sequence", "token"] = "sequence"
    """KL loss on sequence log-probs (the paper's bandit view; the toy's only level) or summed per
    token (GRPO / TRL). k1 in the reward is the same either way."""
    kl_weight_baseline: Literal["none", "loo"] = "none"
    """Sequence-level k3 only: replace the constant 1 in its gradient beta (1 - w/pi) grad log pi by
    the leave-one-out mean of w/pi = pi_ref/pi over the sample's group ('loo'). Unbiased, so the
    fixed point is unchanged; it lowers the variance of Algorithm 2, whose weights sum to more
    than 1 (:func:`mdkl.mara_kl.loo_weight_correction`). The loss value is still k3."""
    kl_weight: Literal["importance", "self_normalized"] = "importance"
    """Sequence-level k3 only: its gradient weight w/pi as is ('importance': Algorithm 2 as stated,
    unbounded, e^20 at a 20-nat spread of log pi_ref) or normalized within each group
    ('self_normalized', :func:`mdkl.mara_kl.self_normalized_k3`): gradient beta (1 - r) grad log pi
    with r = (w/pi) / group mean of w/pi in [0, G]; fixed point the forward KL to w / sum w with
    coefficient beta (uniform on MARA's good set) as G -> inf; at finite G the pull toward an outcome
    is at most beta (G - 1) pi(y), so outcomes ~beta (G - 1) below the group's reward lose their mass."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """Explicit estimator overriding the one (kl, kl_placement) implies (None: the table's). Its
    only use is k1 as a *loss*, whose gradient is zero in expectation (notebook 02's control row);
    any other override must agree with the table."""
    entropy: float = 0.0
    """Entropy bonus eta: -eta log pi(y) (detached) added to the reward (Table 1's "Entropy" row)."""
    mara: Literal["none", "alg1", "alg2", "auto"] = "none"
    """MARA (§5): 'alg1' augmented rewards, 'alg2' anchor substitution of reward and reference
    log-prob, 'auto' = the one for the KL direction (:data:`mdkl.mara.MARA_FOR_KL`). Needs beta > 0."""
    tau: float | None = None
    """Fixed MARA reward threshold (e.g. 1.0 for 0/1 rewards); used when tau_percentile is None."""
    tau_percentile: float | None = None
    """If set, tau is this percentile of the rewards (paper's creative task: 90), per tau_scope."""
    tau_scope: Literal["group", "batch"] = "group"
    """Rewards the percentile tau is taken over: each group's, or the whole batch's (one tau).
    Anchors stay per group."""
    anchor: Literal["support", "reward", "random"] = "support"
    """MARA anchor: the paper's best-supported good sample, the highest-reward one, or a random one
    (:func:`mdkl.mara.mara_anchor`)."""
    advantage: Literal["none", "mean", "rloo", "grpo"] = "rloo"
    """Advantage within each group (:func:`group_advantages`): raw rewards, mean baseline,
    leave-one-out, or GRPO's std-normalized one (refused with MARA or k1 in the reward)."""
    unlikely: float = 0.0
    """Unlikeliness reward's beta_rank (He et al. 2025; 0 = off, their value 0.25)."""
    reward_floor: float = 0.0
    """Lowest reward the scorer can give (the Unlikely transform keeps it fixed)."""
    best_of_n: bool = False
    """BoN training (RAFT): advantage = 0/1 mask of each group's best sample, no baseline."""

    def __post_init__(self):
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"beta must be >= 0 and finite (got {self.beta})")
        for name, allowed in (("kl", ("reverse", "forward", "none")), ("kl_placement", ("reward", "loss")),
                              ("kl_level", ("sequence", "token")), ("mara", ("none", "alg1", "alg2", "auto")),
                              ("tau_scope", ("group", "batch")), ("anchor", ANCHORS), ("advantage", ADVANTAGES),
                              ("kl_estimator", (None, "k1", "k2", "k3")),
                              ("kl_weight_baseline", ("none", "loo")), ("kl_weight", KL_WEIGHTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}: use one of {allowed}")
        est = self.estimator  # validates (kl, kl_placement, kl_estimator)
        check_successor(self, self.beta, est is not None, self.mara, self.tau, self.advantage)
        if self.successor == "flowrl" and self.best_of_n:
            raise ValueError("best_of_n and successor='flowrl' both replace the policy loss: choose one")
        if self.mara != "none":
            check_mara_has_kl(self.beta, self.kl != "none", f"kl={self.kl!r}, beta={self.beta}")
            if self.tau is None and self.tau_percentile is None:
                raise ValueError("MARA needs a threshold tau (e.g. tau=1.0 for 0/1 rewards) or tau_percentile")
        if self.kl_weight_baseline == "loo" and not (est == "k3" and self.kl_placement == "loss"):
            raise ValueError("kl_weight_baseline='loo' is a baseline for k3's importance weight: use it with "
                             "kl='forward', kl_placement='loss' (or set kl_weight_baseline='none')")
        if self.kl_weight == "self_normalized" and not (est == "k3" and self.kl_placement == "loss"
                                                        and self.kl_level == "sequence"
                                                        and self.kl_weight_baseline == "none"):
            raise ValueError("kl_weight='self_normalized' normalizes sequence-level k3's weight w/pi within each "
                             "group: use it with kl='forward', kl_placement='loss', kl_level='sequence' and "
                             "kl_weight_baseline='none' (its own baseline is the 1 in 1 - r)")
        if self.tau_percentile is not None and not 0 <= self.tau_percentile <= 100:
            raise ValueError(f"tau_percentile must be in [0, 100] (got {self.tau_percentile})")
        if not 0.0 <= self.unlikely <= 1.0:
            raise ValueError(f"unlikely (beta_rank) must be in [0, 1] (got {self.unlikely}; He et al. use 0.25)")
        if self.entropy < 0:
            raise ValueError(f"entropy bonus must be >= 0 (got {self.entropy})")
        k1_reward = est == "k1" and self.kl_placement == "reward"
        if self.best_of_n and k1_reward:
            raise ValueError("best_of_n trains on the best sample with advantage 1 and ignores shaped rewards, so a "
                             "k1 KL penalty in the reward would be dropped: use kl_placement='loss' or kl='none'")
        if self.advantage == "grpo" and (self.mara != "none" or k1_reward):
            what = "MARA" if self.mara != "none" else "the k1 penalty in the reward"
            raise ValueError(f"advantage='grpo' divides each group's shaped rewards by their std, which erases the "
                             f"beta-scaled spread {what} creates inside an all-correct group (the regularized "
                             f"target no longer follows): use advantage='rloo' or 'mean'")

    @classmethod
    def from_fields(cls, config, **overrides) -> "ShapingConfig":
        """The shaping settings of a trainer's ``config``: every field of this class that ``config``
        has under the same name (attribute or property), then ``overrides``; the rest default."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {n: getattr(config, n) for n in names if hasattr(config, n)}
        return cls(**{**values, **overrides})

    @property
    def estimator(self) -> str | None:
        """The KL estimator in use: k1 (reward), k2 or k3 (loss), the ``kl_estimator`` override, or
        None when there is no KL term (kl='none' or beta = 0)."""
        if self.kl_estimator is not None:
            direction = kl_gradient_direction(self.kl_estimator, self.kl_placement)
            if self.kl == "none" or direction not in (self.kl, "none"):
                raise ValueError(f"kl_estimator={self.kl_estimator!r} in the {self.kl_placement} follows the "
                                 f"{direction!r} direction, not kl={self.kl!r}: set kl to match or drop the override")
        if self.kl == "none" or self.beta == 0:
            return None
        return self.kl_estimator or kl_estimator_for(self.kl, self.kl_placement)

    @property
    def mara_algorithm(self) -> str:
        """'none', 'alg1' or 'alg2' (resolving 'auto' by the KL direction)."""
        if self.mara != "auto":
            return self.mara
        if self.estimator is None:
            raise ValueError("mara='auto' needs a KL term (kl != 'none', beta > 0) to choose Alg. 1 or 2")
        return MARA_FOR_KL[self.kl]

    def replace(self, **changes) -> "ShapingConfig":
        return dataclasses.replace(self, **changes)


class Shaped(NamedTuple):
    """What :func:`shape_rewards` returns (unpacks as ``rewards, logp_ref_kl, anchored``)."""

    rewards: torch.Tensor
    """[B] the rewards the advantage sees (after Unlikely, MARA, the k1 penalty, the entropy bonus)."""
    logp_ref_kl: torch.Tensor
    """[B] the sequence reference log-prob the KL loss sees: log pi_ref(z) where Algorithm 2 anchored
    the sample, its own log pi_ref(y) elsewhere."""
    anchored: torch.Tensor
    """[B] bool: the samples MARA acted on (R >= tau in a group with an anchor; all False without
    MARA). Their count is how often MARA acted."""


def shape_rewards(cfg: ShapingConfig, rewards: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor,
                  group: torch.Tensor, *, lengths: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, outcomes: torch.Tensor | None = None) -> Shaped:
    """The rewards the advantage sees, and the reference log-probs the KL *loss* sees.

    In order: the Unlikely transform (``cfg.unlikely`` > 0: :func:`mdkl.baselines.unlikeliness_rewards`,
    ranked by per-token log-prob when ``lengths`` = completion token counts is given), MARA within
    each group (Alg. 1: augmented rewards; Alg. 2: reward and reference log-prob of good samples
    replaced by the anchor's; tau fixed or a percentile per ``tau_scope``; ``generator`` draws
    random anchors), then the k1 penalty -beta (log pi - log pi_ref) if the KL sits in the reward
    (Rem. 3.1), then the entropy bonus -eta log pi (Rem. B.1). Inputs are flat [B] with one
    ``group`` id per sample; everything is detached and computed in the promoted dtype of the
    three inputs. Returns :class:`Shaped` ``(rewards, logp_ref_kl, anchored)``.

    All-equal rewards in a group with ``tau_percentile``: tau equals the common reward, every
    sample is "good" and the anchor is the group's best-supported sample, so Alg. 1 gives
    R + beta (log pi_ref(z) - log pi_ref(y)) (a pull toward uniform over the group's samples) and
    Alg. 2 gives R and log pi_ref(z) to every sample; nothing is skipped.

    Successor reward transforms take MARA's place (``cfg.successor``): Differential Smoothing
    (:func:`mdkl.successors.differential_smoothing_rewards`, correct = R >= tau) or inverse-probability
    scaling (:func:`mdkl.successors.inverse_probability_rewards`; ``outcomes``: one integer outcome id
    per sample, e.g. the token or :func:`mdkl.successors.outcome_ids` of the answers).
    """
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, logp.dtype), logp_ref.dtype)
    r = rewards.detach().to(dtype)
    lp, lref = logp.detach().to(dtype), logp_ref.detach().to(dtype)
    if cfg.unlikely > 0:
        ln = None if lengths is None else lengths.to(torch.float64).clamp(min=1)
        r = unlikeliness_rewards(r, lp, group, cfg.unlikely, cfg.reward_floor, ln)
    if cfg.successor == "diff_smooth":
        gp = cfg.beta if cfg.gamma_p is None else cfg.gamma_p
        r = differential_smoothing_rewards(r, lref, r >= cfg.tau, gp, cfg.gamma_n)
    elif cfg.successor == "ips":
        if outcomes is None:
            raise ValueError("successor='ips' needs outcomes= (one integer outcome id per sample: the token, or "
                             "mdkl.successors.outcome_ids of the answer strings / canonical SMILES)")
        r = inverse_probability_rewards(r, torch.as_tensor(outcomes, device=r.device), group, cfg.ips_alpha,
                                        cfg.ips_eps)
    alg = cfg.mara_algorithm
    anchored = torch.zeros(r.shape, dtype=torch.bool, device=r.device)
    if alg != "none":
        if cfg.tau_percentile is None:
            tau = cfg.tau
        elif cfg.tau_scope == "batch":
            tau = batch_percentile_tau(r, cfg.tau_percentile)[0]
        else:
            tau = batch_percentile_tau(r, cfg.tau_percentile, group)
        tau_t = torch.as_tensor(tau, dtype=r.dtype, device=r.device)
        # a good sample's group always has an anchor (the sample itself qualifies)
        anchored = r >= (tau_t[torch.as_tensor(group, device=r.device).long()] if tau_t.ndim else tau_t)
        if alg == "alg1":
            r = mara_rewards(r, lref, cfg.beta, tau, group, anchor=cfg.anchor, generator=generator)
        else:
            r, lref = mara_substitute(r, lref, tau, group, anchor=cfg.anchor, generator=generator)
    est = cfg.estimator
    if est is not None and cfg.kl_placement == "reward":
        r = r + kl_reward_penalty(lp, lref, cfg.beta, est)
    if cfg.entropy:
        r = r - cfg.entropy * lp
    return Shaped(r, lref, anchored)


def _consecutive_size(g: torch.Tensor) -> int | None:
    """The common size if ``g`` is 0,..,0,1,..,1,... in equal consecutive blocks, else None."""
    n_groups = int(g.max()) + 1
    if g.numel() % n_groups:
        return None
    size = g.numel() // n_groups
    return size if torch.equal(g, torch.arange(n_groups, device=g.device).repeat_interleave(size)) else None


def group_advantages(rewards: torch.Tensor, group: torch.Tensor, kind: str = "rloo",
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages within each group of samples (``group``: one integer id per sample).

    ``'none'``: A_i = r_i (no baseline). ``'mean'``: A_i = r_i - mean r.
    ``'rloo'``: A_i = r_i - mean_{j != i} r_j (leave-one-out, needs >= 2 samples per group).
    ``'grpo'``: A_i = (r_i - mean r) / (std r + eps), unbiased std as in GRPO / TRL (>= 2 per group).
    Zero-variance groups get zero advantages under the last three. The toy's [n_seeds, batch] is
    ``group = arange(n_seeds).repeat_interleave(batch)`` on the flattened rewards; the LM's
    consecutive prompt groups ``arange(P).repeat_interleave(G)``."""
    r = rewards
    g = torch.as_tensor(group, device=r.device)
    if r.ndim != 1 or g.shape != r.shape or g.is_floating_point():
        raise ValueError(f"rewards must be 1-D with one integer group id per sample (got rewards "
                         f"{tuple(r.shape)}, group {tuple(g.shape)} {g.dtype}): flatten [n_groups, size] "
                         f"and pass torch.arange(n_groups).repeat_interleave(size)")
    if kind not in ADVANTAGES:
        raise ValueError(f"unknown advantage {kind!r}: use one of {ADVANTAGES}")
    if kind == "none" or r.numel() == 0:
        return r.clone()
    if g.min() < 0:
        raise ValueError("group ids must be >= 0")
    counts = torch.bincount(g)
    if kind in ("rloo", "grpo") and (counts[counts > 0] < 2).any():
        raise ValueError(f"advantage {kind!r} needs >= 2 samples per group (G completions per prompt, or "
                         f"batch_size >= 2): use advantage='mean' or larger groups")
    size = _consecutive_size(g)
    if size is not None:  # equal consecutive groups: one row each
        x = r.view(-1, size)
        if kind == "rloo":
            a = x - (x.sum(1, keepdim=True) - x) / (size - 1)
        elif kind == "grpo":
            a = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + eps)
        else:
            a = x - x.mean(1, keepdim=True)
        return a.reshape(-1)
    n = counts.to(r.dtype)[g]
    total = torch.zeros(counts.numel(), dtype=r.dtype, device=r.device).index_add_(0, g, r)[g]
    if kind == "rloo":
        return r - (total - r) / (n - 1)
    centred = r - total / n
    if kind == "mean":
        return centred
    var = torch.zeros(counts.numel(), dtype=r.dtype, device=r.device).index_add_(0, g, centred**2)[g] / (n - 1)
    return centred / (var.sqrt() + eps)


def advantages(cfg: ShapingConfig, rewards: torch.Tensor, shaped: torch.Tensor, group: torch.Tensor, *,
               logp: torch.Tensor | None = None, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The advantage each sample's log-prob is weighted by: BoN training's 0/1 mask of each group's
    best *raw* reward (``cfg.best_of_n``, :func:`mdkl.baselines.best_of_n_mask`, no baseline), else
    :func:`group_advantages` of the ``shaped`` rewards with ``cfg.advantage``. With
    ``cfg.successor == 'ucpo'`` the correct samples' (raw R >= tau) advantages are then reweighted
    by :func:`mdkl.successors.ucpo_advantages`, which needs the sequence ``logp`` (and ``lengths``,
    completion token counts, for its length-normalized form)."""
    if cfg.best_of_n:
        return best_of_n_mask(rewards, group).to(shaped.dtype)
    adv = group_advantages(shaped, group, cfg.advantage)
    if cfg.successor == "ucpo":
        if logp is None:
            raise ValueError("successor='ucpo' reweights advantages by the policy's sequence log-probs: pass logp=")
        adv = ucpo_advantages(adv, rewards.to(adv.device) >= cfg.tau, logp, group, cfg.ucpo_tau,
                              lengths if cfg.ucpo_length_norm else None)
    return adv


def policy_loss(cfg: ShapingConfig, logp: torch.Tensor, logp_ref_kl: torch.Tensor, adv: torch.Tensor, *,
                token_logp_ref: torch.Tensor | None = None, completion_mask: torch.Tensor | None = None,
                anchored: torch.Tensor | None = None, group: torch.Tensor | None = None,
                log_z: torch.Tensor | None = None) -> torch.Tensor:
    """REINFORCE loss -mean(A log pi(y)), plus beta * mean(k) when the KL is a loss (k2 reverse, k3
    forward, or an explicit k1; reference detached).

    Sequence level (``cfg.kl_level == 'sequence'``): ``logp``, ``logp_ref_kl`` and ``adv`` are
    [..., B] sequence values, samples on the last axis; leading axes are independent runs (the
    toy's seeds) and the loss has their shape (mean over samples). ``logp_ref_kl`` is the
    sequence reference :func:`shape_rewards` returned (the anchor's under Algorithm 2), so this is
    Algorithm 2 exactly. With ``cfg.kl_weight_baseline == 'loo'`` or ``cfg.kl_weight ==
    'self_normalized'`` (k3, [B] inputs) ``group`` is needed.

    Token level: ``logp`` is [B, C] per-token log-probs of the policy, ``token_logp_ref`` [B, C] the
    reference's and ``completion_mask`` [B, C]; the REINFORCE term uses their sum and the KL
    estimator is summed over tokens (GRPO / TRL style), except on the samples ``anchored`` marks
    (Algorithm 2's substitution, from :func:`shape_rewards`), whose KL is the estimator of the
    sequence log-prob against log pi_ref(z) (:func:`mdkl.mara_kl.anchored_kl_loss`).

    ``cfg.successor == 'flowrl'``: FlowRL's squared loss (:func:`mdkl.successors.flow_balance_loss`)
    replaces both terms; ``log_z`` is the trainer's learned log Z (per-token means at token level)."""
    token = cfg.kl_level == "token"
    if token:
        if token_logp_ref is None or completion_mask is None or logp.ndim != 2:
            raise ValueError("kl_level='token' needs per-token logp [B, C], token_logp_ref and completion_mask")
        seq = logp.sum(-1)
    else:
        seq = logp
    if cfg.successor == "flowrl":
        if log_z is None:
            raise ValueError("successor='flowrl' needs the trainer's learned log_z (a parameter in its optimizer)")
        c = cfg.flow_scale if cfg.flow_scale is not None else 1.0 / cfg.beta
        if token:
            return flow_balance_loss(seq, (token_logp_ref.to(logp.dtype) * completion_mask).sum(-1), adv, log_z, c,
                                     completion_mask.sum(-1))
        return flow_balance_loss(seq, logp_ref_kl, adv, log_z, c)
    loss = -(adv.detach().to(seq.dtype) * seq).mean(-1)
    est = cfg.estimator
    if est is None or cfg.kl_placement != "loss":
        return loss
    substituted = anchored is not None and bool(anchored.any()) and cfg.mara_algorithm == "alg2"
    if token and substituted:
        k = anchored_kl_loss(logp, token_logp_ref.to(logp.dtype), completion_mask, logp_ref_kl, anchored, cfg.beta,
                             "token", estimator=est)
    elif token:
        k = (kl_loss(logp, token_logp_ref.to(logp.dtype), cfg.beta, est) * completion_mask).sum(-1)
    elif cfg.kl_weight == "self_normalized":
        if group is None or logp.ndim != 1:
            raise ValueError("kl_weight='self_normalized' needs sequence log-probs [B] and group [B]")
        k = cfg.beta * self_normalized_k3(logp, logp_ref_kl, group)  # gradient beta (1 - r), r in [0, G]
    else:
        k = kl_loss(logp, logp_ref_kl.to(logp.dtype), cfg.beta, est)
        if cfg.kl_weight_baseline == "loo":
            if group is None or logp.ndim != 1:
                raise ValueError("kl_weight_baseline='loo' needs sequence log-probs [B] and group [B]")
            k = k + cfg.beta * loo_weight_correction(logp, logp_ref_kl, group)  # same value; gradient beta (b - w/pi)
    return loss + k.mean(-1)
