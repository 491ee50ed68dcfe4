"""Diversity baselines of the paper's Table 1 (creative question answering): the reward / data / weight transforms that
turn the shared REINFORCE trainer (:mod:`mdkl.lm`) into the "Unlikely", "BoN training" and
"Ensemble" rows. ("Entropy" is the trainer's own entropy bonus, ``LMConfig.entropy``.)

Pure torch functions. A batch is a flat vector of samples with a ``group`` id per sample (the G
samples of one prompt share an id), the convention of :mod:`mdkl.mara` and
``lm.train``: ``group = torch.arange(P).repeat_interleave(G)``. Ids need not be contiguous.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from mdkl.mara import as_float_tensor, group_first_argmax

__all__ = ["unlikeliness_rewards", "best_of_n_mask", "interpolate_state_dicts", "UNLIKELY_BETA_RANK"]

#: beta_rank of He et al. (2025): 0.25 in their release's GRPO recipe (``lean.rank_penalty=0.25``)
UNLIKELY_BETA_RANK = 0.25


def _check_batch(rewards, group, name: str = "rewards") -> tuple[torch.Tensor, torch.Tensor]:
    r = as_float_tensor(rewards)
    if r.ndim != 1 or r.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, one value per sample (got shape {tuple(r.shape)})")
    if torch.isnan(r).any():
        bad = torch.nonzero(torch.isnan(r)).flatten()[:5].tolist()
        raise ValueError(f"NaN {name} at positions {bad}: map failed generations / unparsable judge "
                         f"outputs to a finite reward first")
    g = torch.as_tensor(group, device=r.device)
    if g.is_floating_point() or g.shape != r.shape:
        raise ValueError(f"group must be integer ids, one per sample (got {g.dtype}, shape {tuple(g.shape)} "
                         f"for {tuple(r.shape)}): e.g. torch.arange(P).repeat_interleave(G)")
    if g.min() < 0:
        raise ValueError("group ids must be >= 0")
    return r, g.long()


def unlikeliness_rewards(rewards, logp_policy, group, beta_rank: float = UNLIKELY_BETA_RANK,
                         reward_floor: float = 0.0, lengths=None) -> torch.Tensor:
    """"Unlikeliness reward" of He, Fried & Welleck (2025), "Rewarding the Unlikely: Lifting GRPO
    Beyond Distribution Sharpening" (arXiv 2506.02355, EMNLP 2025): within each prompt's group of G
    samples, the more likely a sample is under the current policy, the more its reward is cut, so
    that GRPO's rank bias towards already-likely correct samples is removed:

        r_i' = r_i * (1 - beta_rank * rank_i / G)

    rank_i in {0, ..., G-1} orders the group by policy log-likelihood, ascending (0 = least likely,
    kept at full reward; G-1 = most likely, cut by beta_rank (G-1)/G); ties go to the earlier
    sample. This is the release's ``RayLeanTrainer._compute_advantages`` (``rank_penalty``,
    default 0.25), which ranks by the *per-token mean* log-prob of the sampling policy: pass
    ``lengths`` (completion token counts) to rank by ``logp_policy / lengths`` as there, or leave
    it None to rank by ``logp_policy`` as given. The transformed rewards then go through the usual
    group advantage (GRPO) unchanged.

    Non-binary rewards [reading: the paper defines it for 0/1 proof correctness, where only correct
    samples are affected because incorrect ones have r = 0]: we scale the reward's height above
    ``reward_floor`` (the lowest reward the scorer can give, e.g. 1 on a 1..10 judge scale),
    r' = floor + (r - floor)(1 - beta_rank rank / G). With floor = 0 and 0/1 rewards this is
    exactly the paper's rule; for any scorer it keeps a worst-possible answer unchanged and never
    turns a likely sample's reward *up* (plain multiplication would for negative rewards).
    Raises ``ValueError`` if a reward is below ``reward_floor``.
    """
    r, g = _check_batch(rewards, group)
    lp = torch.as_tensor(logp_policy, device=r.device).to(torch.float64)
    if lp.shape != r.shape:
        raise ValueError(f"logp_policy must have one value per sample (got {tuple(lp.shape)} for {tuple(r.shape)})")
    if torch.isnan(lp).any():
        raise ValueError("NaN policy log-probabilities: check the policy's forward pass")
    if lengths is not None:
        n = torch.as_tensor(lengths, device=r.device).to(torch.float64)
        if n.shape != r.shape or (n <= 0).any():
            raise ValueError("lengths must be one positive token count per sample (empty completions count "
                             "their EOS token: clamp(min=1))")
        lp = lp / n
    if not 0.0 <= beta_rank <= 1.0:
        raise ValueError(f"beta_rank must be in [0, 1] (got {beta_rank}; the paper uses 0.25)")
    if (r < reward_floor).any():
        raise ValueError(f"reward {r.min().item():.4g} is below reward_floor={reward_floor}: set reward_floor "
                         f"to the lowest reward the scorer can give")
    factor = torch.ones_like(r, dtype=torch.float64)
    for gid in torch.unique(g):
        idx = torch.nonzero(g == gid).flatten()
        order = torch.argsort(lp[idx], stable=True)  # ascending log-likelihood
        rank = torch.empty_like(order)
        rank[order] = torch.arange(idx.numel(), device=r.device)
        factor[idx] = 1.0 - beta_rank * rank.to(torch.float64) / idx.numel()
    out = reward_floor + (r.to(torch.float64) - reward_floor) * factor
    return out.to(r.dtype)


def best_of_n_mask(rewards, group) -> torch.Tensor:
    """Which samples "BoN training" trains on: per prompt group, the single highest-reward sample
    (ties go to the first, i.e. lowest index, so the choice is deterministic). Boolean mask.

    BoN training [definition used here]: best-of-N rejection-sampling fine-tuning, i.e. RAFT
    ("Reward rAnked FineTuning", Dong et al., TMLR 2023; also "rejection sampling" fine-tuning of
    Llama 2, Touvron et al. 2023): sample N completions per prompt from the current policy, keep
    the best one by the reward model, and take a supervised (max log-likelihood) step on the kept
    completions only, then resample (online). In a REINFORCE trainer that is the loss
    -mean_{kept} log pi(y), i.e. reward 1 on the kept sample, 0 elsewhere, with *no* baseline.
    (Chow et al. 2024, "Inference-Aware Fine-Tuning for Best-of-N Sampling", train for BoN at
    inference instead; not this row.)
    """
    r, g = _check_batch(rewards, group)
    best = group_first_argmax(r, torch.ones_like(r, dtype=torch.bool), g)
    return best == torch.arange(r.numel(), device=r.device)


def interpolate_state_dicts(base: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT weight-space ensemble (Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot
    models"): theta(alpha) = (1 - alpha) theta_base + alpha theta_tuned, parameter by parameter
    (alpha = 0: base model, alpha = 1: fine-tuned model; the paper's "Ensemble" row interpolates the
    base and an RL-trained model). Floating tensors are interpolated in their own dtype; integer
    buffers (e.g. position ids) must be equal in both and are copied. Returns a new state dict (on
    ``base``'s devices); load it with ``model.load_state_dict``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha}): 0 = base, 1 = fine-tuned")
    kb, kt = set(base), set(tuned)
    if kb != kt:
        only_b, only_t = sorted(kb - kt)[:5], sorted(kt - kb)[:5]
        raise ValueError(f"state dicts have different keys (only in base: {only_b}, only in tuned: {only_t}): "
                         f"interpolate two checkpoints of the same architecture")
    out = {}
    for k, b in base.items():
        t = tuned[k]
        if b.shape != t.shape:
            raise ValueError(f"shape mismatch for {k!r}: base {tuple(b.shape)} vs tuned {tuple(t.shape)}")
        if b.is_floating_point():
            out[k] = torch.lerp(b.detach(), t.detach().to(device=b.device, dtype=b.dtype), float(alpha))
        else:
            if not torch.equal(b, t.to(b.device)):
                raise ValueError(f"non-float tensor {k!r} differs between base and tuned: cannot interpolate it")
            out[k] = b.detach().clone()
    return out
