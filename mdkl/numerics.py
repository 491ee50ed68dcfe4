"""Numeric failure of a training run: a run whose loss or pre-clip gradient norm left a stated bound
is reported as "numerically failed" instead of being summarized (its metrics describe a run the
optimizer no longer steered).

Every trainer that can fail this way logs, per step, the loss and the gradient norm *before*
clipping (:func:`mdkl.lm.trainer.train`: the ``loss`` and ``grad_norm`` columns of
``LMResult.history``); :func:`numeric_failure` reads those two columns. The toy trainer
(:func:`mdkl.toy.train_toy`) logs each seed's loss and gradient norm (``ToyResult.loss``,
``ToyResult.grad_norm``; it applies no clip), and so does the chemistry loop
(:func:`mdkl.chem.reinvent.run_rl`: its ``history``, the DAP loss and the agent's gradient norm per
optimizer step; REINVENT applies no clip).

The bounds (defaults :data:`GRAD_NORM_FACTOR`, :data:`LOSS_BOUND`):

* non-finite loss or gradient norm: always a failure.
* gradient norm > ``grad_norm_factor * max_grad_norm`` (1e3 x the clip). The trainer rescales the
  gradient to the clip, so a step whose pre-clip norm is 1e3 x the clip moves the weights along
  whatever single term is 1e3 x larger than the rest: every other sample's contribution is
  scaled by < 1e-3, and the step is one unit step on one sample (the failure of Algorithm 2's
  unnormalized importance weight pi_ref(z)/pi(y) on long completions). Bounded estimators stay
  far below it: the REINFORCE term's norm is at most max|A| max ||grad log pi||, the
  self-normalized k3's at most 2 beta max ||grad log pi|| (:func:`mdkl.mara_kl.self_normalized_k3`).
  Measured on Table 1's creative-task rows (SmolLM2, clip 1.0): healthy rows' pre-clip norms have
  medians 3-25 and a largest value of 71 (14x below the bound); the unnormalized forward MARA row
  had a median of 2.6e10 (data/results/creative_training_history.csv).
* a trainer without a clip (REINVENT's DAP loss; ``max_grad_norm=None``): gradient norm >
  ``grad_norm_factor`` x the run's median gradient norm (its finite, non-zero steps). With no clip
  there is no trainer scale to compare with, and a runaway step is one that dwarfs the run's own
  typical step by three orders of magnitude (measured on the toy trainer's Fig. 5 runs, 3,000 sampled
  steps: largest / median 3.7-6.6 per seed); a failure on most steps at once is caught by the other
  two bounds (REINVENT's loss is mean (log pi_prior + sigma R - log pi)^2: (sigma + tens of
  nats)^2 ~ 3e4 at sigma = 128, 40x below the loss bound).
* |loss| > ``loss_bound`` (1e6). The loss is mean(-A log pi(y)) plus beta times a KL estimate;
  with rewards spanning D and completions of T tokens over a vocabulary of V, |A log pi| <=
  D T log V (D = 10, T = 20, V = 5e4: 2.2e3), and a KL estimate of a policy that still samples
  what it is trained on is of the order of the log-ratios (tens of nats): 1e6 is 450x above that
  worst case. Measured: healthy rows' largest |loss| 43; the unnormalized row's median 6.2e8.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["NumericFailure", "numeric_failure", "GRAD_NORM_FACTOR", "LOSS_BOUND"]

#: a pre-clip gradient norm above this multiple of the clip is a numeric failure (module docstring)
GRAD_NORM_FACTOR = 1e3
#: an absolute loss above this is a numeric failure (module docstring)
LOSS_BOUND = 1e6


@dataclass(frozen=True)
class NumericFailure:
    """Verdict of :func:`numeric_failure`; true (``bool(v)``) when the run failed."""

    failed: bool
    """True when at least one step left a bound."""
    n_steps: int
    """Number of logged steps."""
    n_bad: int
    """Steps whose loss or gradient norm left a bound (or was not finite)."""
    first_bad_step: int | None
    """The first such step's ``step`` value (its row index when there is no ``step`` column)."""
    reason: str
    """'' when the run passed, else which bounds were left and how often."""

    def __bool__(self) -> bool:
        return self.failed

    @property
    def label(self) -> str:
        """'numerically failed' or 'ok', for a table cell."""
        return "numerically failed" if self.failed else "ok"


def _column(history, name: str) -> np.ndarray:
    try:
        col = history[name]
    except (KeyError, IndexError, TypeError):
        if isinstance(history, (list, tuple)) and all(isinstance(r, dict) for r in history):
            col = [r[name] for r in history]
        else:
            raise ValueError(f"history has no {name!r} column: pass the trainer's per-step history "
                             f"(LMResult.history, with 'loss' and 'grad_norm')") from None
    return np.asarray(col, dtype=np.float64).reshape(-1)


def numeric_failure(history, *, max_grad_norm: float | None = 1.0, grad_norm_factor: float = GRAD_NORM_FACTOR,
                    loss_bound: float = LOSS_BOUND) -> NumericFailure:
    """Whether a run failed numerically: some step's ``loss`` or pre-clip ``grad_norm`` was not
    finite, or ``grad_norm > grad_norm_factor * max_grad_norm``, or ``|loss| > loss_bound`` (bounds
    argued in the module docstring). ``history``: a DataFrame (``LMResult.history``), a mapping of
    columns or a list of per-step dicts with ``loss`` and ``grad_norm`` (and optionally ``step``);
    ``max_grad_norm``: the run's clip (``LMConfig.max_grad_norm``); ``None`` for a trainer that
    applies no clip (REINVENT): the scale is then the run's median gradient norm (module docstring).
    Returns a :class:`NumericFailure` (true when failed)."""
    for name, v in (("max_grad_norm", 1.0 if max_grad_norm is None else max_grad_norm),
                    ("grad_norm_factor", grad_norm_factor), ("loss_bound", loss_bound)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0 (got {v!r})")
    loss, gnorm = _column(history, "loss"), _column(history, "grad_norm")
    if loss.shape != gnorm.shape:
        raise ValueError(f"loss and grad_norm must have one value per step (got {loss.size} and {gnorm.size})")
    try:
        steps = _column(history, "step")
    except ValueError:
        steps = np.arange(loss.size, dtype=np.float64)
    if max_grad_norm is None:  # no clip: the run's own typical step is the scale
        typical = gnorm[np.isfinite(gnorm) & (gnorm > 0)]
        scale = float(np.median(typical)) if typical.size else math.inf
        grad_bound, scale_name = grad_norm_factor * scale, f"the run's median {scale:.3g}"
    else:
        grad_bound, scale_name = grad_norm_factor * max_grad_norm, f"clip {max_grad_norm:g}"
    checks = (("non-finite loss or grad norm", ~(np.isfinite(loss) & np.isfinite(gnorm))),
              (f"grad norm > {grad_bound:.3g} ({grad_norm_factor:g} x {scale_name})",
               np.isfinite(gnorm) & (gnorm > grad_bound)),
              (f"|loss| > {loss_bound:.3g}", np.isfinite(loss) & (np.abs(loss) > loss_bound)))
    bad = np.zeros(loss.shape, dtype=bool)
    parts = []
    for what, mask in checks:
        bad |= mask
        if mask.any():
            parts.append(f"{what} in {int(mask.sum())}/{loss.size} steps")
    first = int(steps[np.argmax(bad)]) if bad.any() else None
    return NumericFailure(bool(bad.any()), int(loss.size), int(bad.sum()), first, "; ".join(parts))
