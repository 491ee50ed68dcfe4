"""MARA: Mode Anchored Reward Augmentation (paper §5, Algorithms 1 and 2, Remark B.3).

Pure, batched tensor functions. A batch is a flat vector of samples with an optional ``group``
index (LLMs: the samples of one prompt; chemistry: one sampled batch; toy: one seed's batch);
the anchor is chosen and applied within each group, so every trainer calls the same code.

Algorithm 1 (augmented rewards; use with reverse KL)::

    z = argmax_{y_i : R(y_i) >= tau} pi_ref(y_i)
    rbar_i = R(z) + beta (log pi_ref(z) - log pi_ref(y_i))   if R(y_i) >= tau else R(y_i)

Algorithm 2 (anchor substitution; use with forward KL): for samples with R >= tau replace the
reward by R(z) *and* the reference log-probability inside the KL term by log pi_ref(z).

Under reverse KL both give the target of Remark B.3 (:func:`mara_target`): constant mass on every
output with R >= tau. Under forward KL only Algorithm 2 does (``notebooks/04_mara_toy.ipynb``
shows both numerically): Algorithm 1's rewards enter G_fwd = beta pi_ref / (Lambda - rbar) and do
not cancel pi_ref. Groups where no sample reaches ``tau`` are returned unchanged (documented
behaviour, not an error).
"""

from __future__ import annotations

import numpy as np
import torch

from scipy.special import logsumexp

from mdkl.targets import check_beta, check_ref, check_rewards, forward_kl_target

#: MARA's inputs are checked by :func:`check_group_ids` (one id per sample, integers >= 0), the
#: private ``_prepare`` (shapes, NaN / inf, dtypes) and :func:`check_tau`.

__all__ = ["check_tau_in_reward_range", "mara_anchor", "mara_rewards", "mara_substitute", "mara_target", "mara_forward_target",
           "batch_percentile_tau", "check_mara_has_kl", "check_group_ids", "check_tau", "group_first_argmax",
           "as_float_tensor", "MARA_FOR_KL", "ANCHORS"]

#: which algorithm gives MARA's uniform-over-good-modes target under each KL direction
MARA_FOR_KL = {"reverse": "alg1", "forward": "alg2"}

#: anchor choices: "support" is the paper's (best-supported good sample); the others answer the
#: reviewers' question about the anchor (notebooks/04_mara_toy.ipynb compares them)
ANCHORS = ("support", "reward", "random")


def as_float_tensor(x) -> torch.Tensor:
    """``x`` as a tensor, converted to the default float dtype unless it is already floating."""
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def _check_mara_beta(beta: float) -> float:
    """beta > 0 for MARA, with an error that says what to do instead (paper §5: the augmentation scales with beta, inert at beta = 0)."""
    try:
        return check_beta(beta, "beta (MARA)")
    except ValueError as e:
        raise ValueError(f"{e}. MARA's augmentation beta * (log pi_ref(z) - log pi_ref(y)) scales "
                         f"with beta, so without a KL term it is inert: use plain RL (no MARA) "
                         f"or set beta > 0") from None


def check_mara_has_kl(beta: float, kl_term: bool, what: str = "") -> None:
    """Raise the error trainers give when MARA is configured without a KL term (``kl_term`` False)
    or with beta <= 0 (paper §5, Alg. 1: MARA is inert at beta = 0). ``what`` names the offending setting."""
    if kl_term and beta > 0:
        return
    got = f" (got {what})" if what else f" (got beta={beta})"
    raise ValueError(f"MARA needs a KL term with beta > 0{got}: its augmentation "
                     f"beta * (log pi_ref(z) - log pi_ref(y)) vanishes at beta = 0; "
                     f"use mara='none' or set beta > 0")


def check_group_ids(group, n: int, device=None) -> torch.Tensor:
    """``group`` as a long tensor of ``n`` ids >= 0, else ``ValueError`` naming the fix (float ids
    such as 1.5 would otherwise be truncated to another group)."""
    g = torch.as_tensor(group, device=device)
    if g.is_floating_point() or g.is_complex():
        if not torch.isfinite(g).all() or not torch.equal(g, torch.round(g)):
            raise ValueError("group ids must be integers (got non-integer floats): pass one integer "
                             "id per sample, e.g. torch.arange(P).repeat_interleave(G)")
    elif g.dtype == torch.bool:
        raise ValueError("group ids must be integers, not booleans")
    g = g.to(torch.long)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"group must have one id per sample (got shape {tuple(g.shape)} for {n} samples)")
    if g.numel() and g.min() < 0:
        raise ValueError("group ids must be >= 0")
    return g


def check_tau(tau) -> None:
    """``tau`` (scalar or one value per group) must be finite: an infinite threshold makes MARA
    silently all-on or all-off; use ``mara='none'`` for no MARA."""
    t = torch.as_tensor(tau)
    if t.ndim > 1:
        raise ValueError(f"tau must be a scalar or one value per group (got shape {tuple(t.shape)})")
    if t.is_floating_point() and not torch.isfinite(t).all():
        raise ValueError(f"tau is NaN or infinite (got {tau!r}): pick a finite reward threshold, e.g. "
                         f"batch_percentile_tau(rewards, 90)")


def check_tau_in_reward_range(tau: float, reward_min: float, reward_max: float) -> None:
    """A fixed MARA threshold against the rewards a task can give (Alg. 1-2 act on {R >= tau}).

    ``tau > reward_max``: no sample can ever reach it, so MARA never anchors and the run is silently
    vanilla: a ``ValueError`` naming the fix. ``tau <= reward_min``: every sample is 'above tau',
    including those at the lowest reward (e.g. an invalid answer at 0 on a 0/1 task), so the anchor,
    chosen by reference support, can be one of them and the good outputs' rewards fall toward its
    (a ``UserWarning``; ``reward_min = -inf``: unknown, no warning). With two reward levels every tau in (reward_min, reward_max] picks the same
    good set, so tau is then immaterial."""
    if not (np.isfinite(reward_max) and reward_min <= reward_max) or np.isnan(reward_min):
        raise ValueError(f"reward range needs a finite max and min <= max (got [{reward_min}, {reward_max}]; "
                         f"min may be -inf when unknown)")
    if tau > reward_max:
        raise ValueError(f"tau={tau} is above every reward the task gives (max {reward_max}): MARA would never "
                         f"anchor and the run would be vanilla; choose tau <= {reward_max}")
    if tau <= reward_min:
        import warnings

        warnings.warn(f"tau={tau} <= the lowest reward {reward_min}: every sample counts as 'above tau', so a "
                      f"lowest-reward output (e.g. an invalid answer) can become MARA's anchor; choose tau > "
                      f"{reward_min}", UserWarning, stacklevel=3)


def _prepare(rewards, logp_ref, group, tau):
    r = as_float_tensor(rewards)
    lr = as_float_tensor(logp_ref)
    dtype = torch.promote_types(r.dtype, lr.dtype)  # no silent float64 -> float32 truncation
    r, lr = r.to(dtype), lr.to(dtype)
    check_tau(tau)
    if r.ndim != 1 or r.shape != lr.shape:
        raise ValueError(f"rewards and logp_ref must be 1-D of equal length "
                         f"(got {tuple(r.shape)} and {tuple(lr.shape)})")
    if torch.isnan(r).any():
        bad = torch.nonzero(torch.isnan(r)).flatten()[:5].tolist()
        raise ValueError(f"NaN rewards at positions {bad}: map failed generations to a finite reward "
                         f"(e.g. 0.0) before MARA")
    if torch.isinf(r).any():
        raise ValueError("infinite rewards: MARA's rbar = R(z) + beta (...) would be inf / NaN; clip or "
                         "map them to finite values")
    if torch.isnan(lr).any() or torch.isposinf(lr).any():
        raise ValueError("NaN reference log-probabilities (or +inf ones): check the reference model's forward pass")
    if group is None:
        g = torch.zeros(r.shape[0], dtype=torch.long, device=r.device)
    else:
        g = check_group_ids(group, r.shape[0], r.device)
    tau_t = torch.as_tensor(tau, dtype=r.dtype, device=r.device)
    if tau_t.ndim == 1:  # per-group tau
        if g.numel() and tau_t.numel() < int(g.max()) + 1:
            raise ValueError(f"tau has {tau_t.numel()} entries for {int(g.max()) + 1} groups: pass a "
                             f"scalar or one tau per group id (e.g. batch_percentile_tau(r, q, group))")
        tau_t = tau_t[g]
    if torch.isnan(tau_t).any():
        raise ValueError("tau is NaN")
    return r, lr, g, tau_t


def _check_anchor(anchor: str) -> str:
    if anchor not in ANCHORS:
        raise ValueError(f"unknown anchor {anchor!r}: use one of {ANCHORS} ('support' is the paper's)")
    return anchor


def group_first_argmax(score: torch.Tensor, mask: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per sample: index of the first sample of its group maximizing ``score`` among ``mask``, or -1."""
    n = score.shape[0]
    n_groups = int(g.max()) + 1
    neg_inf = torch.tensor(float("-inf"), dtype=score.dtype, device=score.device)
    masked = torch.where(mask, score, neg_inf)
    gmax = torch.full((n_groups,), float("-inf"), dtype=score.dtype, device=score.device)
    gmax = gmax.scatter_reduce(0, g, masked, reduce="amax", include_self=True)
    is_cand = mask & (masked == gmax[g])
    idx = torch.arange(n, device=score.device)
    big = torch.full((n_groups,), n, dtype=torch.long, device=score.device)
    first = big.scatter_reduce(0, g, torch.where(is_cand, idx, torch.full_like(idx, n)),
                               reduce="amin", include_self=True)
    out = first[g]
    return torch.where(out < n, out, torch.full_like(out, -1))


def mara_anchor(rewards, logp_ref, tau, group=None, *, anchor: str = "support",
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample index of its group's anchor z, or -1 where the group has no sample with R >= tau.

    ``anchor="support"`` (default, the paper's Algorithm 1, line 1): z = argmax over the group's
    samples with R(y) >= tau of log pi_ref(y); ties go to the first such sample. Two variants for
    the reviewers' question about the anchor: ``"reward"``, the highest-reward good sample (ties
    broken by the best support, then the first); ``"random"``, a uniformly random good sample of
    the group (drawn with ``generator``). ``tau`` is a scalar or one value per group.
    """
    _check_anchor(anchor)
    r, lr, g, tau_t = _prepare(rewards, logp_ref, group, tau)
    if r.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=r.device)
    good = r >= tau_t
    if anchor == "support":
        return group_first_argmax(lr, good, g)
    if anchor == "reward":
        best_r = group_first_argmax(r, good, g)
        top = good & (best_r >= 0) & (r == r[best_r.clamp(min=0)])
        return group_first_argmax(lr, top, g)
    # drawn on the generator's device (a trainer's generator lives where its samples do)
    keys = torch.rand(r.shape[0], generator=generator, dtype=r.dtype,
                      device=r.device if generator is None else generator.device).to(r.device)
    return group_first_argmax(keys, good, g)


def _anchored(rewards, logp_ref, tau, group, anchor, generator):
    """Shared first step of Algorithms 1 and 2: detached ``(r, logp_ref, apply, a)`` where
    ``apply`` marks the samples with R >= tau in a group that has an anchor and ``a`` is each
    sample's anchor index (clamped to 0 where there is none; only used where ``apply``)."""
    r, lr, g, tau_t = _prepare(rewards, logp_ref, group, tau)
    r, lr = r.detach(), lr.detach()
    z = mara_anchor(r, lr, tau, g, anchor=anchor, generator=generator)  # caller's tau: scalar or per group
    return r, lr, (r >= tau_t) & (z >= 0), z.clamp(min=0)


def mara_rewards(rewards, logp_ref, beta: float, tau, group=None, *, anchor: str = "support",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1: rbar_i = R(z) + beta (log pi_ref(z) - log pi_ref(y_i)) if R(y_i) >= tau, else R(y_i).

    ``beta`` must be > 0: at beta = 0 there is no KL term to shape, the augmentation vanishes and
    every good sample just gets R(z) (use vanilla RL instead). Groups without a sample above
    ``tau`` are returned unchanged. The result carries no gradient. ``anchor`` / ``generator``:
    see :func:`mara_anchor` (default: the paper's best-supported good sample).
    """
    _check_mara_beta(beta)
    r, lr, apply, a = _anchored(rewards, logp_ref, tau, group, anchor, generator)
    if torch.isinf(lr[apply]).any():
        bad = torch.nonzero(apply & torch.isinf(lr)).flatten()[:5].tolist()
        raise ValueError(f"samples {bad} have R >= tau but log pi_ref = -inf: their augmented reward "
                         f"R(z) + beta (log pi_ref(z) - log pi_ref(y)) would be inf / NaN. Give the "
                         f"reference full support on sampled outputs (e.g. clamp log-probs to a floor)")
    rbar = r[a] + beta * (lr[a] - lr)
    return torch.where(apply, rbar, r)


def mara_substitute(rewards, logp_ref, tau, group=None, *, anchor: str = "support",
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 2: for samples with R >= tau, return R(z) as the reward and log pi_ref(z) as the
    reference log-probability to use inside the KL term; other samples are unchanged.

    Returns ``(rewards, logp_ref)``, both detached. This "selectively reduces the KL regularization
    for high-rewarding samples"; under forward KL (k3 loss) it yields the uniform target
    (:func:`mara_forward_target`). ``anchor`` / ``generator``: see :func:`mara_anchor`.
    """
    r, lr, apply, a = _anchored(rewards, logp_ref, tau, group, anchor, generator)
    if torch.isinf(lr[a][apply]).any():
        raise ValueError("a group's anchor has log pi_ref = -inf (every sample with R >= tau has "
                         "probability 0 under pi_ref): the substituted KL term would be inf. Give the "
                         "reference full support on sampled outputs (e.g. clamp log-probs to a floor)")
    return torch.where(apply, r[a], r), torch.where(apply, lr[a], lr)


def batch_percentile_tau(rewards, q: float = 90.0, group=None) -> torch.Tensor:
    """tau as the ``q``-th percentile of each group's rewards (paper: 90th, creative task).

    Returns one tau per group (index with the group id). When all rewards of a group are equal,
    tau equals that reward, so *every* sample is "good" and the anchor is the best-supported
    sample of the group: MARA then only reshapes the KL toward uniform over the group's
    samples (tested in ``tests/test_mara.py``).
    """
    r = as_float_tensor(rewards).detach()
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D (got shape {tuple(r.shape)}): flatten them with a group id per sample")
    if not torch.isfinite(r).all():
        raise ValueError("NaN rewards (or inf ones): map failed generations to a finite reward before computing tau")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100] (got {q})")
    g = torch.zeros_like(r, dtype=torch.long) if group is None else check_group_ids(group, r.shape[0], r.device)
    n_groups = int(g.max()) + 1 if g.numel() else 0
    missing = sorted(set(range(n_groups)) - set(g.tolist()))
    if missing:
        raise ValueError(f"group ids {missing[:5]} have no samples, so no percentile: number the groups "
                         f"0..G-1 (e.g. torch.unique(group, return_inverse=True)[1])")
    return torch.stack([torch.quantile(r[g == k], q / 100.0) for k in range(n_groups)]) if n_groups else r.new_empty(0)


def _whole_space_anchor(r: np.ndarray, p: np.ndarray, tau: float, anchor: str) -> tuple[np.ndarray, int]:
    """The good set {R >= tau} and the anchor z chosen over the whole output space."""
    _check_anchor(anchor)
    if not np.isfinite(float(tau)):
        raise ValueError(f"tau must be a finite reward threshold (got {tau})")
    good = r >= tau
    if not good.any():
        raise ValueError(f"tau={tau} is above every reward (max R = {r.max()}): choose tau <= max R")
    if anchor == "random":
        raise ValueError("anchor='random' has no whole-space target (the anchor changes every batch): "
                         "train with it (ToyConfig(anchor='random')) or use 'support' / 'reward'")
    cand = good & (r == r[good].max()) if anchor == "reward" else good
    z = int(np.flatnonzero(cand)[np.argmax(p[cand])])
    return good, z


def mara_target(ref, rewards, beta: float, tau: float, anchor: str = "support") -> np.ndarray:
    """Remark B.3: the reverse-KL target under MARA's rewards (Algorithm 1, or Algorithm 2).

    Mass proportional to pi_ref(z) exp(R(z) / beta) (one constant) on every output with
    R >= tau, where z is the best-supported output with R >= tau over the whole space, and
    pi_ref(y) exp(R(y) / beta) below tau. Raises if ``tau`` is above every reward (no output can
    ever anchor: lower tau to at most max R). ``anchor="reward"``: z is the highest-reward good
    output instead (ties: best support), see :func:`mara_anchor`.
    """
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = _check_mara_beta(beta)
    good, z = _whole_space_anchor(r, p, tau, anchor)
    with np.errstate(divide="ignore"):
        logits = np.where(good, np.log(p[z]) + r[z] / beta, np.log(p) + r / beta)
    return np.exp(logits - logsumexp(logits))


def mara_forward_target(ref, rewards, beta: float, tau: float, anchor: str = "support") -> np.ndarray:
    """The forward-KL target under Algorithm 2 (anchor substitution), paper §5 / Remark 3.3.

    With the k3 loss, Algorithm 2's gradient is that of E_pi[R'] + beta sum_y w(y) log pi(y),
    where R' = R(z), w = pi_ref(z) on {R >= tau} and R' = R, w = pi_ref below tau (w need not
    sum to 1). Its stationarity condition on the simplex gives G = beta w / (Lambda - R'), the
    form of Remark 3.3 with W = sum w: G = G_fwd(w / W, R', beta W), computed by
    :func:`mdkl.targets.forward_kl_target`. Constant on the good set, like Remark B.3's reverse
    target: "MARA works with forward KL too" holds for Algorithm 2 (Algorithm 1's rewards put
    into G_fwd do not cancel pi_ref; ``notebooks/04_mara_toy.ipynb``).
    """
    r = check_rewards(rewards)
    p = check_ref(ref, r.size)
    beta = _check_mara_beta(beta)
    good, z = _whole_space_anchor(r, p, tau, anchor)
    w = np.where(good, p[z], p)
    r_sub = np.where(good, r[z], r)
    total = w.sum()
    return forward_kl_target(w / total, r_sub, beta * total)
