"""The KL loss of MARA's Algorithm 2 on completions made of tokens (paper §5, Alg. 2; forward KL: k3).

Algorithm 2 replaces, for every sample with R >= tau, the reward by R(z) *and* the reference
probability inside the KL term by pi_ref(z), the anchor's. On a language model the KL term is
usually a per-token k3 (GRPO); the anchor's reference, however, is one number per *sequence*. This
module is the loss a trainer adds for Algorithm 2 under forward KL: per sample,

* anchored good samples (R >= tau in a group with an anchor): sequence-level k3 against
  log pi_ref(z), ``beta * k3(sum_t log pi(y_t | y_<t), log pi_ref(z))``, Algorithm 2 as stated;
* the other samples: k3 against their own reference, on the sequence (``level="sequence"``) or
  summed per token (``level="token"``, GRPO's form).

Which fixed point each choice has (derivations in :mod:`mdkl.token_tree`, measured on an exact
token tree in ``notebooks/04_mara_toy.ipynb``):

* ``level="sequence"``: the expected gradient is that of sum_y (pi(y) - w(y)) log pi(y) with
  w = pi_ref(z) on the good set and pi_ref(y) below tau, whatever the parameterization; for a
  policy that can represent any distribution over sequences the fixed point is
  :func:`mdkl.mara.mara_forward_target`, *constant on the good set*, exactly.
* ``level="token"``: per-token k3 has a fixed point per context, with local normalizers; the bad
  continuations of a good prefix then weigh the good answers by their own format-failure rates,
  an O(1) deviation that does not vanish as beta -> 0 (measured: P("1" | valid) = 0.512 instead of
  0.5 on the tree of the notebook, at every beta).
* Spreading log pi_ref(z) - log pi_ref(y) evenly over the T tokens with per-token k3 (each token's
  fixed point then sees only a 1/T slice of the offset) keeps the reference's preference with
  exponent 1 - 1/T.

Variance: the sequence-level k3 gradient of a sample is beta (1 - w(y)/pi(y)) grad log pi(y).
E_pi[w/pi] = sum_y w(y) =: W, which exceeds 1 under Algorithm 2 (every good sample carries the
anchor's mass), so the constant 1 is a poor baseline. ``weight_baseline="loo"`` replaces it by the
mean of w/pi over the *other* samples of the same group (independent of the sample, hence the
expected gradient and the fixed point are unchanged; the loss *value* stays k3). Nothing is
clipped: a clip on w/pi would move the fixed point.

Bounded alternative (:func:`self_normalized_k3`, ``kl_weight="self_normalized"``): on long
completions log pi_ref(z) - log pi(y) spreads by ~20 nats between the samples of one prompt, so
w/pi reaches e^20 ~ 5e8 and one sample decides the clipped step. Normalizing the weights within
the group, r_i = rho_i / mean_{j in group} rho_j (rho = w/pi), gives the gradient
beta (1 - r_i) grad log pi(y_i) with r_i in [0, G]: bounded whatever the spread. As G -> inf,
mean rho -> E_pi[w/pi] = W = sum_y w(y), so the expected gradient is
beta sum_y (pi(y) - w(y)/W) grad log pi(y): the forward KL to the *normalized* q = w/W with
coefficient beta, whose fixed point is ``mara_forward_target(ref, R, beta / W, tau)`` =
G_fwd(w/W, R', beta): still constant on the good set (q and R' are), with KL strength beta
instead of Algorithm 2's beta W (W = 1 without MARA: then it is vanilla forward KL's target).
The price of the bound, at finite G: the pull toward an outcome y is at most beta (G - 1) pi(y)
(every coefficient is >= 1 - G), against beta w(y)/W in the limit, so it vanishes with pi(y): an
outcome whose reward is more than ~beta (G - 1) below its group's is not held by the KL and loses
its mass (any bounded per-sample weight has this). Measured with exact enumeration of groups
(``tests/test_fwd_mara_snis.py``; 4 outcomes, beta = 0.1, bad outcomes' limit mass 0.0266): their
mass goes to 0 at G = 2, 4, 8 and is 0.0100 at G = 16, 0.0194 at G = 32; the good set stays
uniform (ratio within 1e-3 at G = 2-8, where the importance form's per-group anchor gives 1.51,
1.11, 1.01).
"""

from __future__ import annotations

from typing import Literal

import torch

from mdkl.kl import kl_estimate
from mdkl.mara import check_group_ids

__all__ = ["anchored_kl_loss", "group_loo_mean", "loo_weight_correction", "self_normalized_k3", "KL_WEIGHTS"]

#: importance weights of the sequence-level k3 gradient: w/pi as is (Alg. 2 as stated) or normalized per group
KL_WEIGHTS = ("importance", "self_normalized")

Level = Literal["sequence", "token"]


def group_loo_mean(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Per sample i, the mean of ``x`` over the other samples of its group (leave-one-out).

    ``x`` and ``group`` are [B]; every group needs at least 2 samples (else there is nothing to
    leave one out of: raise, naming the fix).
    """
    if x.ndim != 1:
        raise ValueError(f"x must be [B], one value per sample (got shape {tuple(x.shape)})")
    g = check_group_ids(group, x.shape[0], x.device)
    n_groups = int(g.max()) + 1 if g.numel() else 0
    total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, g, x)
    count = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, g, torch.ones_like(x))
    if (count[g] < 2).any():
        raise ValueError("a leave-one-out baseline needs >= 2 samples per group: use group_size >= 2 "
                         "or weight_baseline='none'")
    return (total[g] - x) / (count[g] - 1)


def loo_weight_correction(seq_logp: torch.Tensor, seq_logp_ref_kl: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """The term that turns sequence-level k3's gradient (1 - w/pi) grad log pi into (b - w/pi) grad log pi,
    b = :func:`group_loo_mean` of w/pi = exp(log pi_ref_kl - log pi) over the sample's group: its value is
    0 (so the loss value stays k3) and its gradient (b - 1) grad log pi. Unbiased, since b does not
    depend on the sample; multiply by beta as the k3 term is."""
    w = torch.exp(seq_logp_ref_kl.to(seq_logp.dtype).detach() - seq_logp.detach())
    return (group_loo_mean(w, group) - 1.0) * (seq_logp - seq_logp.detach())


def self_normalized_k3(seq_logp: torch.Tensor, seq_logp_ref_kl: torch.Tensor, group: torch.Tensor, *,
                       probs: torch.Tensor | None = None) -> torch.Tensor:
    """Sequence-level k3 of Algorithm 2 (paper §5, Alg. 2: reference log pi_ref(z) on anchored samples)
    with its importance weight rho = w/pi = exp(seq_logp_ref_kl - seq_logp) self-normalized within
    each group: per sample [B] a surrogate whose gradient is (1 - r_i) grad log pi(y_i), with

        r_i = rho_i / mean_{j in group(i)} rho_j   in [0, G]   (G = the group's size),

    and whose value is k3 at the normalized ratio, r_i - 1 - log r_i >= 0 (its group mean is
    -mean log r, 0 iff pi is proportional to w on the group's samples). Multiply by beta.

    Bound: the normalized weight r_i / G lies in [0, 1], so the gradient coefficient 1 - r_i lies in
    [1 - G, 1] whatever log pi_ref spreads to; in a loss averaged over B = P G samples each sample's
    coefficient is at most beta (G - 1) / (P G) < beta / P in magnitude, and the KL part of the
    gradient has norm <= 2 beta (1 - 1/G) max_i ||grad log pi(y_i)||. The importance form
    (1 - rho_i) has no bound (rho = e^20 at a 20-nat spread).

    Fixed point: as G -> inf the group mean of rho tends to W = sum_y w(y) (W = 1 without MARA;
    > 1 under Alg. 2), so the expected gradient tends to sum_y (pi - w/W) grad log pi: forward KL
    to q = w/W with coefficient beta, fixed point :func:`mdkl.mara.mara_forward_target` at beta / W,
    uniform on the good set. At finite G it is a ratio estimator (biased, consistent): the pull
    toward y is at most beta (G - 1) pi(y), so outcomes more than ~beta (G - 1) in reward below
    their group's lose their mass (module docstring: measured bias).

    ``group`` [B]: group ids (>= 1 sample each). ``probs`` [B], optional: the probability each row
    stands for when rows enumerate outcomes exactly (:mod:`mdkl.token_tree`); the group mean of rho
    is then the probs-weighted mean, i.e. E_pi[rho] = W exactly (the G -> inf limit).
    """
    if seq_logp.ndim != 1 or seq_logp_ref_kl.shape != seq_logp.shape:
        raise ValueError(f"seq_logp and seq_logp_ref_kl must be [B] sequence log-probs (got "
                         f"{tuple(seq_logp.shape)}, {tuple(seq_logp_ref_kl.shape)})")
    g = check_group_ids(group, seq_logp.shape[0], seq_logp.device)
    log_rho = (seq_logp_ref_kl.to(seq_logp.dtype) - seq_logp).detach()
    if not torch.isfinite(log_rho).all():
        raise ValueError("non-finite log importance weights log pi_ref - log pi: check both log-probs")
    n_groups = int(g.max()) + 1 if g.numel() else 0
    top = torch.full((n_groups,), -torch.inf, dtype=log_rho.dtype, device=log_rho.device).scatter_reduce(
        0, g, log_rho, "amax")
    scaled = torch.exp(log_rho - top[g])  # in (0, 1]: no overflow at any spread
    p = torch.ones_like(scaled) if probs is None else probs.to(scaled.dtype).detach()
    num = torch.zeros(n_groups, dtype=scaled.dtype, device=scaled.device).index_add(0, g, p * scaled)
    den = torch.zeros(n_groups, dtype=scaled.dtype, device=scaled.device).index_add(0, g, p)
    log_r = log_rho - top[g] - torch.log(num[g] / den[g])  # log r_i = log rho_i - log mean rho
    r = torch.exp(log_r)
    return (r - 1.0 - log_r) + (1.0 - r) * (seq_logp - seq_logp.detach())


def _check_inputs(token_logp, token_logp_ref, completion_mask, seq_logp_ref_kl, anchored, beta, level):
    if token_logp.ndim != 2:
        raise ValueError(f"token_logp must be [B, T] per-token policy log-probs (got shape {tuple(token_logp.shape)})")
    b = token_logp.shape[0]
    for name, t, shape in (("token_logp_ref", token_logp_ref, token_logp.shape),
                           ("completion_mask", completion_mask, token_logp.shape),
                           ("seq_logp_ref_kl", seq_logp_ref_kl, (b,)), ("anchored", anchored, (b,))):
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)} to match token_logp {tuple(token_logp.shape)} "
                             f"(got {tuple(t.shape)}): pass per-token tensors [B, T] and per-sample tensors [B]")
    if anchored.dtype != torch.bool:
        raise ValueError(f"anchored must be a bool mask [B] (got dtype {anchored.dtype})")
    if not (beta > 0 and beta < float("inf")):
        raise ValueError(f"beta must be > 0 and finite for a KL loss (got {beta}); without a KL term MARA is inert")
    if level not in ("sequence", "token"):
        raise ValueError(f"unknown level {level!r}: use 'sequence' (exact Alg. 2 target) or 'token'")
    if torch.isnan(seq_logp_ref_kl).any() or torch.isnan(token_logp_ref).any():
        raise ValueError("NaN reference log-probabilities: check the reference model's forward pass")


def anchored_kl_loss(token_logp: torch.Tensor, token_logp_ref: torch.Tensor, completion_mask: torch.Tensor,
                     seq_logp_ref_kl: torch.Tensor, anchored: torch.Tensor, beta: float,
                     level: Level = "sequence", *, estimator: Literal["k2", "k3"] = "k3",
                     weight_baseline: Literal["none", "loo"] = "none",
                     group: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample KL loss [B] of Algorithm 2 (paper §5) for completions of tokens: forward KL
    (``estimator="k3"``, the pairing of :data:`mdkl.mara.MARA_FOR_KL`) unless told otherwise.

    Inputs: ``token_logp`` [B, T] policy log-probs of the completion tokens (with grad);
    ``token_logp_ref`` [B, T] the reference's; ``completion_mask`` [B, T] (1 on completion tokens);
    ``seq_logp_ref_kl`` [B] the sequence reference log-prob after Algorithm 2's substitution
    (:func:`mdkl.mara.mara_substitute`: log pi_ref(z) for anchored good samples, the sample's own
    otherwise); ``anchored`` [B] bool, True where the substitution applied (R >= tau in a group
    with an anchor); ``beta`` > 0; ``level`` of the KL for the samples that are *not* anchored.

    Returns ``beta * k`` per sample (``k`` = ``estimator``, k3 below): k3 of the sequence log-probs against ``seq_logp_ref_kl`` for
    anchored samples (and for all samples with ``level="sequence"``), the masked per-token k3 sum
    against ``token_logp_ref`` otherwise. The caller adds its mean to the REINFORCE loss.
    ``level="sequence"`` has the exact uniform-on-the-good-set fixed point of
    :func:`mdkl.mara.mara_forward_target`; ``level="token"`` deviates (module docstring).

    ``weight_baseline="loo"`` (needs ``group`` [B]; only with ``level="sequence"``): the gradient
    beta (1 - w/pi) grad log pi becomes beta (b - w/pi) grad log pi, with b the leave-one-out mean of
    w/pi = exp(seq_logp_ref_kl - log pi) in the sample's group; same expected gradient, same
    fixed point, and the returned value is still beta * k3.
    """
    _check_inputs(token_logp, token_logp_ref, completion_mask, seq_logp_ref_kl, anchored, beta, level)
    m = completion_mask.to(token_logp.dtype)
    seq_logp = (token_logp * m).sum(-1)
    ref_kl = seq_logp_ref_kl.to(token_logp.dtype).detach()
    own = (token_logp_ref.to(token_logp.dtype).detach() * m).sum(-1)
    mismatch = (~anchored) & ((own - ref_kl).abs() > 1e-4 * (1.0 + own.abs()))
    if mismatch.any():
        i = int(torch.nonzero(mismatch)[0])
        raise ValueError(f"sample {i} is not anchored but seq_logp_ref_kl ({float(ref_kl[i]):.6g}) differs from its "
                         f"masked token reference sum ({float(own[i]):.6g}): pass anchored = the rows "
                         f"mara_substitute changed, and the same completion_mask for both")
    if estimator not in ("k2", "k3"):
        raise ValueError(f"estimator must be a loss estimator, 'k2' (reverse) or 'k3' (forward); got {estimator!r}")
    seq_k = kl_estimate(seq_logp, ref_kl, estimator)
    if level == "sequence":
        kl = seq_k
    else:
        tok_k = (kl_estimate(token_logp, token_logp_ref.to(token_logp.dtype).detach(), estimator) * m).sum(-1)
        kl = torch.where(anchored, seq_k, tok_k)
    if weight_baseline == "loo":
        if estimator != "k3":
            raise ValueError("weight_baseline='loo' is a baseline for k3's importance weight w/pi: use estimator='k3'")
        if level != "sequence":
            raise ValueError("weight_baseline='loo' applies to sequence-level importance weights: use level='sequence'")
        if group is None:
            raise ValueError("weight_baseline='loo' needs group [B] (the prompt group of each sample)")
        kl = kl + loo_weight_correction(seq_logp, ref_kl, group)  # value unchanged; gradient beta (b - w/pi)
    elif weight_baseline != "none":
        raise ValueError(f"unknown weight_baseline {weight_baseline!r}: use 'none' or 'loo'")
    return beta * kl
