"""KL estimators on samples y ~ pi_theta and the divergence each *placement* actually optimizes.

With ``logp = log pi_theta(y)`` and ``logp_ref = log pi_ref(y)`` on on-policy samples:

=========  ==========================================  =====================  ====================
estimator  value                                       placement              gradient direction
=========  ==========================================  =====================  ====================
k1         log pi/pi_ref                               reward (detached)      reverse KL  (PPO, RLOO)
k1         log pi/pi_ref                               loss                   none (zero in expectation)
k2         0.5 (log pi/pi_ref)^2                       loss                   reverse KL
k3         pi_ref/pi - log(pi_ref/pi) - 1              loss                   forward KL (GRPO, trl <= 1.9.2)
k3 x r     k3 * r,  r = pi/sg(pi) (1 on-policy)        loss                   reverse KL (trl >= 1.10 default)
=========  ==========================================  =====================  ====================

GRPO's k3 up to trl 1.9.2; trl >= 1.10 default (``use_bias_correction_kl=True``): k3 x token ratio =
reverse-KL gradient (k2's), per token. ``sg`` is stop-gradient: TRL's ratio is ``pi / pi_old`` with
``pi_old`` detached, so its value is 1 on-policy but its gradient is ``grad log pi``.

Derivations (score-function gradients, samples from pi, gradient through ``logp`` only):

- k1 in the reward: E_pi[(-log pi/pi_ref) grad log pi] = -grad KL(pi || pi_ref).
- k1 as a loss: E_pi[grad log pi] = 0.
- k2 as a loss: E_pi[log(pi/pi_ref) grad log pi] = grad KL(pi || pi_ref).
- k3 as a loss: E_pi[(1 - pi_ref/pi) grad log pi] = -sum pi_ref grad log pi = grad KL(pi_ref || pi).
- k3 x r as a loss: grad k3 + k3 grad log pi = log(pi/pi_ref) grad log pi, k2's gradient:
  E_pi[...] = grad KL(pi || pi_ref).

``tests/test_trl_kl_direction.py`` measures the last two rows in trl 1.16 (pinned) itself:
``GRPOTrainer``'s default KL term has exactly the reverse-KL gradient, with
``use_bias_correction_kl=False`` exactly the forward-KL gradient.

``tests/test_kl.py`` checks the k1, k2 and k3 rows against finite differences of the exact divergences.
"""

from __future__ import annotations

from typing import Literal

import torch

from mdkl.targets import check_coefficient

Estimator = Literal["k1", "k2", "k3"]
Placement = Literal["reward", "loss"]

__all__ = ["k1", "k2", "k3", "check_logp_pair", "kl_estimate", "kl_gradient_direction", "KL_PLACEMENTS",
           "kl_reward_penalty", "kl_loss"]

#: the recommended (estimator, placement) for each KL direction; "reverse_k2" is the loss variant
KL_PLACEMENTS = {
    "reverse": ("k1", "reward"),
    "reverse_k2": ("k2", "loss"),
    "forward": ("k3", "loss"),
}


def check_logp_pair(logp: torch.Tensor, logp_ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logp`` and ``logp_ref`` as tensors of the *same* shape without NaN, else ``ValueError``
    naming the fix (a [B] vs [B, 1] pair would broadcast to [B, B] and average the wrong terms)."""
    logp, logp_ref = torch.as_tensor(logp), torch.as_tensor(logp_ref)
    if logp.shape != logp_ref.shape:
        raise ValueError(f"logp has shape {tuple(logp.shape)} but logp_ref {tuple(logp_ref.shape)}: pass one "
                         f"reference log-prob per policy log-prob (same shape; e.g. .squeeze(-1) or sum "
                         f"per-token log-probs over tokens first), KL estimators never broadcast")
    if torch.isnan(logp).any() or torch.isnan(logp_ref).any():
        raise ValueError("NaN in logp or logp_ref: check the policy / reference forward pass (padding, "
                         "log of 0 probabilities)")
    return logp, logp_ref


def k1(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y) - log pi_ref(y): unbiased for KL(pi || pi_ref) as a value."""
    logp, logp_ref = check_logp_pair(logp, logp_ref)
    return logp - logp_ref


def k2(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k2 = 0.5 (log pi(y) - log pi_ref(y))^2: as a loss, a reverse-KL gradient."""
    logp, logp_ref = check_logp_pair(logp, logp_ref)
    return 0.5 * (logp - logp_ref) ** 2


def k3(logp: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k3 = pi_ref/pi - log(pi_ref/pi) - 1 >= 0: as a loss, a forward-KL gradient (GRPO's up to trl 1.9.2)."""
    logp, logp_ref = check_logp_pair(logp, logp_ref)
    log_ratio = logp_ref - logp
    return torch.expm1(log_ratio) - log_ratio


_ESTIMATORS = {"k1": k1, "k2": k2, "k3": k3}


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, estimator: Estimator) -> torch.Tensor:
    """Per-sample value of ``estimator`` (one of ``k1``, ``k2``, ``k3``)."""
    try:
        return _ESTIMATORS[estimator](logp, logp_ref)
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}: use 'k1', 'k2' or 'k3'") from None


def kl_gradient_direction(estimator: Estimator, placement: Placement) -> str:
    """Which divergence's gradient ``estimator`` placed in the reward or the loss follows.

    Returns ``'reverse'`` (grad KL(pi || pi_ref)), ``'forward'`` (grad KL(pi_ref || pi)) or
    ``'none'`` (zero in expectation). k2/k3 in the reward are not standard; they are rejected.
    """
    table = {("k1", "reward"): "reverse", ("k1", "loss"): "none",
             ("k2", "loss"): "reverse", ("k3", "loss"): "forward"}
    try:
        return table[(estimator, placement)]
    except KeyError:
        raise ValueError(f"unsupported KL placement {(estimator, placement)}: use one of "
                         f"{sorted(table)}") from None


def kl_reward_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float,
                      estimator: Estimator = "k1") -> torch.Tensor:
    """``-beta * k(y)`` to add to the reward; detached, so it only enters through the advantage."""
    beta = check_coefficient(beta, "beta", allow_zero=True)
    return -beta * kl_estimate(logp.detach(), logp_ref.detach(), estimator)


def kl_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float,
            estimator: Estimator) -> torch.Tensor:
    """``beta * k(y)`` per sample, differentiable through ``logp`` (reference detached)."""
    beta = check_coefficient(beta, "beta", allow_zero=True)
    return beta * kl_estimate(logp, logp_ref.detach(), estimator)
