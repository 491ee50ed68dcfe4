"""Exact (noise-free) optimization of the KL-regularized objectives over a softmax policy.

The toy trainer (:mod:`mdkl.toy`) follows *sampled* policy gradients; this module is its exact
counterpart on a finite output space, used to check the closed-form targets of
:mod:`mdkl.targets` by plain optimization (paper Remarks 3.1, 3.3, App. B.1) and to compute the
exact logit gradients that Remarks 3.2, 3.4 and B.2 talk about.

- :func:`exact_objective`: J(softmax(logits)) as a differentiable torch scalar; same value as
  :func:`mdkl.targets.reverse_kl_objective` / :func:`mdkl.targets.forward_kl_objective` (plus an
  optional entropy bonus), so ``torch.autograd`` gives the exact gradient.
- :func:`maximize_exact_objective`: Adam (or plain gradient) ascent on that objective from uniform
  (or given) logits, with the policy at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from mdkl.targets import check_beta, check_ref, check_rewards, check_coefficient

__all__ = ["exact_objective", "maximize_exact_objective", "ExactAscent"]

Direction = Literal["reverse", "forward"]


def _objective_fn(ref, rewards, beta: float, kl: Direction = "reverse", eta: float = 0.0):
    """Validate once and return ``logits -> J(softmax(logits))`` (see :func:`exact_objective`)."""
    r = torch.as_tensor(check_rewards(rewards))
    p_np = check_ref(ref, r.numel())
    beta = check_beta(beta)
    eta = check_coefficient(eta, "eta", allow_zero=True)
    if kl not in ("reverse", "forward"):
        raise ValueError(f"unknown kl {kl!r}: use 'reverse' or 'forward'")
    if kl == "reverse" and np.any(p_np == 0):
        raise ValueError("the reverse-KL objective is -inf for a softmax policy when pi_ref has "
                         "zeros: give pi_ref full support or use kl='forward'")
    p = torch.as_tensor(p_np)
    m = p > 0
    log_p = torch.where(m, p, torch.ones_like(p)).log()  # 0 where pi_ref = 0 (masked below)

    def j(logits: torch.Tensor) -> torch.Tensor:
        logits = torch.as_tensor(logits, dtype=torch.float64)
        if logits.shape != r.shape:
            raise ValueError(f"logits must have shape {tuple(r.shape)} (got {tuple(logits.shape)})")
        if not torch.isfinite(logits).all():
            raise ValueError("logits contain NaN/inf: start from finite logits (or lower lr if the "
                             "ascent diverged)")
        logpi = torch.log_softmax(logits, -1)
        pi = logpi.exp()
        if kl == "reverse":
            div = (pi * (logpi - log_p)).sum()
        else:
            div = (p[m] * (log_p[m] - logpi[m])).sum()
        out = (pi * r).sum() - beta * div
        if eta:
            out = out - eta * (pi * logpi).sum()
        return out

    return j


def exact_objective(logits: torch.Tensor, ref, rewards, beta: float, kl: Direction = "reverse",
                    eta: float = 0.0) -> torch.Tensor:
    """J(pi) for pi = softmax(logits), differentiable in ``logits`` (float64 torch scalar).

    ``kl='reverse'``: E_pi[R] - beta KL(pi || pi_ref) (paper §2); ``kl='forward'``:
    E_pi[R] - beta KL(pi_ref || pi) (§3.2); ``eta > 0`` adds eta H(pi) (App. B.1). Values equal
    :func:`mdkl.targets.reverse_kl_objective` / ``forward_kl_objective`` (tested); torch here only
    so that autograd returns the exact gradient. The reverse objective needs pi_ref > 0 everywhere
    (a softmax policy puts mass on every output, so KL(pi || pi_ref) would be infinite otherwise);
    the forward one allows pi_ref = 0 (App. B.3).
    """
    return _objective_fn(ref, rewards, beta, kl, eta)(logits)


@dataclass
class ExactAscent:
    """Result of :func:`maximize_exact_objective`: the final policy, the objective per step and the
    policy per step (``path``, [steps + 1, n])."""

    pi: np.ndarray
    logits: np.ndarray
    objective: np.ndarray
    path: np.ndarray | None = None


def maximize_exact_objective(ref, rewards, beta: float, kl: Direction = "reverse", *,
                             eta: float = 0.0, steps: int = 2000, lr: float = 0.1,
                             init_logits=None, optimizer: str = "adam") -> ExactAscent:
    """Maximize :func:`exact_objective` over free logits with Adam (``optimizer='adam'``) or plain
    gradient ascent (``'sgd'``) on the exact gradient.

    Starts from uniform logits (or ``init_logits``). No sampling, so the result converges to the
    argmax of J itself: G_beta (reverse), G_fwd (forward) or the entropy-regularized target
    (``eta > 0``), which is how the notebooks check the closed forms by optimization; ``path``
    shows the way there (e.g. whether a split overshoots its target before settling).
    """
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer={optimizer!r}: use 'adam' or 'sgd'")
    n = check_rewards(rewards).size
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1 (got {steps!r})")
    steps = int(steps)
    lr = check_coefficient(lr, "lr")
    init = torch.zeros(n, dtype=torch.float64) if init_logits is None else \
        torch.as_tensor(np.asarray(init_logits, dtype=np.float64)).clone()
    logits = torch.nn.Parameter(init)
    opt = torch.optim.Adam([logits], lr=lr) if optimizer == "adam" else torch.optim.SGD([logits], lr=lr)
    hist = np.empty(steps + 1)
    path = np.empty((steps + 1, n))
    objective = _objective_fn(ref, rewards, beta, kl, eta)
    for t in range(steps + 1):
        j = objective(logits)
        hist[t] = float(j.detach())
        path[t] = torch.softmax(logits.detach(), -1).numpy()
        if t == steps:
            break
        opt.zero_grad()
        (-j).backward()
        opt.step()
    lg = logits.detach()
    return ExactAscent(torch.softmax(lg, -1).numpy(), lg.numpy(), hist, path)
