"""An exact tabular autoregressive model on an enumerable token tree, to find fixed points of
per-sample RL losses on sequences (paper §5: MARA's Algorithms 1 and 2 on completions of tokens).

A policy is one free logit vector per prefix (context) over a small vocabulary, for sequences of
a fixed length T: every sequence y is enumerable, pi(y) = prod_t pi(y_t | y_<t) is exact, and so is
the expected gradient of any per-sample surrogate loss l(y) of sampled training,

    E_{y ~ pi}[grad l(y)] = grad sum_y sg(pi(y)) l(y)      (sg: stop-gradient),

with the advantages, MARA's anchor and substitutions computed on the whole space (the limit a
large group converges to: z = the best-supported good sequence). Adam on that expected gradient
converges to the fixed point of sampled training (:func:`train_exact`).

:func:`one_two_tree` is the paper's "1-2" task in miniature (§4, Fig. 6): good iff the sequence
starts ``<a> d </a>`` with d in {1, 2}, anything after; the reference prefers "1" and fails the
format with some probability, also after the digit. :func:`forward_mara_loss` builds the candidate
forward-KL implementations of Algorithm 2 compared in ``notebooks/04_mara_toy.ipynb``.

Fixed points (per-token k3 with a per-token shift s_t on the reference, a per-context softmax):
the expected gradient on the logits of context c is P(c) times
    sum_v [pi(v|c) - pi_ref(v|c) E_pi[e^{s} | c, v]] (e_v - pi(.|c))     (KL part)
so per-token k3 pulls each conditional toward pi_ref(v|c) E[e^s | c, v], with a normalizer local to
c. Spreading Algorithm 2's offset Delta = log pi_ref(z) - log pi_ref(y) evenly (s = Delta / T) gives
the token that departs from the anchor only its 1/T slice: the ratio of two good answers that share
T - 1 tokens becomes (pi_ref(1) / pi_ref(2))^(1 - 1/T) instead of 1. Sequence-level k3 against
w(y) (pi_ref(z) on the good set, pi_ref(y) below tau) has expected gradient sum_y (pi(y) - w(y))
grad log pi(y): for a model that can represent every distribution over sequences (this one can)
the fixed point is beta w / (Lambda - R') with a single Lambda, :func:`mdkl.mara.mara_forward_target`,
constant on the good set.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from mdkl.kl import k3
from mdkl.mara import mara_rewards, mara_substitute
from mdkl.mara_kl import anchored_kl_loss

__all__ = ["TokenTree", "one_two_tree", "expected_loss", "train_exact", "TreeFit", "whole_space_anchor",
           "forward_mara_loss", "reverse_mara_loss", "FORWARD_CANDIDATES", "good_set_max_min",
           "even_spread_reference"]

#: forward-KL implementations of Algorithm 2 compared on the tree (see :func:`forward_mara_loss`)
FORWARD_CANDIDATES = ("vanilla", "even_spread", "sequence", "hybrid", "departure")

PerSampleLoss = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TokenTree:
    """All sequences of ``length`` tokens over ``vocab``, a tabular reference and a reward.

    ``sequences`` [N, T] token ids (N = V^T); ``contexts`` [N, T] the index of the prefix y_<t
    (row of a [n_contexts, V] logit table); ``ref_logp`` [n_contexts, V] the reference's
    conditional log-probs; ``rewards`` [N].
    """

    vocab: tuple[str, ...]
    sequences: torch.Tensor
    contexts: torch.Tensor
    ref_logp: torch.Tensor
    rewards: torch.Tensor

    @property
    def length(self) -> int:
        return self.sequences.shape[1]

    @property
    def n_contexts(self) -> int:
        return self.ref_logp.shape[0]

    def token_logprobs(self, logits: torch.Tensor) -> torch.Tensor:
        """[N, T] log pi(y_t | y_<t) for the policy with ``logits`` [n_contexts, V] (differentiable)."""
        if tuple(logits.shape) != tuple(self.ref_logp.shape):
            raise ValueError(f"logits must be [n_contexts, V] = {tuple(self.ref_logp.shape)} (got {tuple(logits.shape)})")
        return torch.log_softmax(logits, -1)[self.contexts, self.sequences]

    def ref_token_logprobs(self) -> torch.Tensor:
        """[N, T] log pi_ref(y_t | y_<t)."""
        return self.token_logprobs(self.ref_logp)

    def ref_probs(self) -> torch.Tensor:
        """[N] pi_ref(y)."""
        return self.ref_token_logprobs().sum(-1).exp()

    def decode(self, i: int) -> str:
        return " ".join(self.vocab[int(v)] for v in self.sequences[i])



def even_spread_reference(token_logp_ref: torch.Tensor, completion_mask: torch.Tensor,
                          logp_ref_kl: torch.Tensor) -> torch.Tensor:
    """The naive way to meet Algorithm 2 with a per-token KL, kept to show why it fails: per-token
    reference log-probs whose sum per sequence is ``logp_ref_kl`` (the anchor's log pi_ref(z)),
    the difference to the sample's own log pi_ref(y) spread evenly over its tokens. With per-token
    k3 each token's fixed point sees only a 1/T slice of the offset, so the trained ratio of two
    good answers keeps the reference's with exponent 1 - 1/T (this module's ``even_spread``)."""
    m = completion_mask.to(token_logp_ref.dtype)
    shift = (logp_ref_kl - (token_logp_ref * m).sum(-1)) / m.sum(-1).clamp(min=1)
    return (token_logp_ref + shift[:, None]) * m

def _prefix_index(prefix, n_vocab: int) -> int:
    """Row of the logit table for ``prefix`` (contexts ordered by length, then lexicographically)."""
    offset = sum(n_vocab ** k for k in range(len(prefix)))
    code = 0
    for v in prefix:
        code = code * n_vocab + int(v)
    return offset + code


def one_two_tree(length: int = 5, *, p_open: float = 0.7, p_digit: tuple[float, float] = (0.6, 0.2),
                 p_close: tuple[float, float] = (0.85, 0.7), concentration: float = 2.0,
                 seed: int = 0) -> TokenTree:
    """The "1-2" task (paper §4, Fig. 6) on vocabulary ``<a> 1 2 </a>`` and sequences of ``length``.

    Reward 1 iff the sequence starts ``<a> d </a>`` with d in {1, 2} (any tokens after: several
    good sequences per answer), else 0. Reference: ``p_open`` = pi_ref(<a> first);
    ``p_digit`` = pi_ref(1 | <a>), pi_ref(2 | <a>) (the rest split over the other two tokens);
    ``p_close`` = pi_ref(</a> | <a> 1), pi_ref(</a> | <a> 2): unequal, so the two answers fail the
    format at different rates *after* the digit; every other context draws its conditional from a
    Dirichlet(``concentration``) with ``seed``. Defaults: P_ref(1 | valid) = 0.785,
    P_ref(valid) = 0.455.
    """
    if length < 3:
        raise ValueError(f"length must be >= 3 to hold '<a> d </a>' (got {length})")
    for name, p in (("p_open", (p_open,)), ("p_digit", p_digit), ("p_close", p_close)):
        if not all(0 < x < 1 for x in p):
            raise ValueError(f"{name} must be probabilities in (0, 1) (got {p})")
    if sum(p_digit) >= 1:
        raise ValueError(f"p_digit must sum to < 1 (the other tokens need mass; got {p_digit})")
    vocab = ("<a>", "1", "2", "</a>")
    n_vocab = len(vocab)
    seqs = torch.tensor(list(itertools.product(range(n_vocab), repeat=length)), dtype=torch.long)
    ctx = torch.zeros_like(seqs)
    for t in range(length):
        code = torch.zeros(seqs.shape[0], dtype=torch.long)
        for i in range(t):
            code = code * n_vocab + seqs[:, i]
        ctx[:, t] = sum(n_vocab ** k for k in range(t)) + code
    n_ctx = sum(n_vocab ** k for k in range(length))
    p = np.random.default_rng(seed).dirichlet(np.full(n_vocab, concentration), size=n_ctx)
    rest = (1 - p_open) / 3
    p[_prefix_index([], n_vocab)] = [p_open, rest, rest, rest]
    other = (1 - sum(p_digit)) / 2
    p[_prefix_index([0], n_vocab)] = [other, p_digit[0], p_digit[1], other]
    for d, pc in zip((1, 2), p_close):
        q = (1 - pc) / 3
        p[_prefix_index([0, d], n_vocab)] = [q, q, q, pc]
    good = (seqs[:, 0] == 0) & ((seqs[:, 1] == 1) | (seqs[:, 1] == 2)) & (seqs[:, 2] == 3)
    return TokenTree(vocab, seqs, ctx, torch.tensor(np.log(p), dtype=torch.float64), good.to(torch.float64))


def whole_space_anchor(tree: TokenTree, tau: float) -> tuple[torch.Tensor, int]:
    """``(good, z)``: the mask R >= tau and the best-supported good sequence over the whole space
    (Algorithm 1, line 1, with the batch = every sequence)."""
    good = tree.rewards >= tau
    if not good.any():
        raise ValueError(f"tau={tau} is above every reward (max R = {float(tree.rewards.max())}): choose tau <= max R")
    lref = tree.ref_token_logprobs().sum(-1)
    z = int(torch.where(good, lref, torch.full_like(lref, -torch.inf)).argmax())
    return good, z


def expected_loss(logits: torch.Tensor, tree: TokenTree, per_sample_loss: PerSampleLoss) -> torch.Tensor:
    """sum_y sg(pi(y)) l(y): its gradient is the exact expected gradient of on-policy sampled
    training with the per-sample loss ``per_sample_loss(token_logp [N, T]) -> [N]``."""
    tok = tree.token_logprobs(logits)
    loss = per_sample_loss(tok)
    if loss.shape != (tok.shape[0],):
        raise ValueError(f"per_sample_loss must return one loss per sequence [N] (got {tuple(loss.shape)})")
    return (tok.sum(-1).detach().exp() * loss).sum()


@dataclass
class TreeFit:
    """Result of :func:`train_exact`: final logits, sequence probabilities pi [N], and the largest
    absolute entry of the final expected gradient (how close to a fixed point)."""

    logits: torch.Tensor
    pi: torch.Tensor
    grad_max: float


def train_exact(tree: TokenTree, per_sample_loss: PerSampleLoss, *, steps: int = 3000, lr: float = 0.05,
                init: torch.Tensor | None = None) -> TreeFit:
    """Adam on the exact expected gradient from the reference (or ``init``) logits, with a cosine
    learning-rate decay to lr / 1000 so that the last iterates settle on the fixed point. The
    default 3000 steps bring every candidate of :func:`forward_mara_loss` to a gradient below 1e-9
    (measured for beta in [0.01, 1])."""
    if steps < 1 or not lr > 0:
        raise ValueError(f"steps must be >= 1 and lr > 0 (got {steps}, {lr})")
    logits = (tree.ref_logp if init is None else init).detach().clone().to(torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 1e-3)
    for _ in range(steps):
        opt.zero_grad()
        expected_loss(logits, tree, per_sample_loss).backward()
        opt.step()
        sched.step()
    opt.zero_grad()
    expected_loss(logits, tree, per_sample_loss).backward()
    pi = tree.token_logprobs(logits.detach()).sum(-1).exp()
    return TreeFit(logits.detach(), pi, float(logits.grad.abs().max()))


def good_set_max_min(pi: torch.Tensor, good: torch.Tensor) -> float:
    """max / min of pi over the good sequences (1 = uniform)."""
    g = pi[good]
    return float(g.max() / g.min())


def _advantage(rewards: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """R - E_pi[R]: the group baseline of an infinitely large group."""
    return rewards - (pi * rewards).sum()


def forward_mara_loss(tree: TokenTree, name: str, beta: float, tau: float = 1.0) -> PerSampleLoss:
    """Per-sample loss -A(y) log pi(y) + beta KL(y) of one forward-KL implementation of Algorithm 2.

    MARA on the whole space (:func:`mdkl.mara.mara_substitute` with every sequence in one group):
    good sequences get R(z) and log pi_ref(z). ``name``:

    * ``"vanilla"``: no MARA, per-token k3 with the own reference (GRPO). Fixed point per context:
      pi(v|c) = beta pi_ref(v|c) / (Lambda_c - Q(c, v)); good answers keep the reference's ratio.
    * ``"even_spread"``: Algorithm 2 with the offset log pi_ref(z) - log pi_ref(y) spread evenly
      over the T tokens (:func:`even_spread_reference`), per-token k3: exponent 1 - 1/T.
    * ``"sequence"``: Algorithm 2 as stated, sequence-level k3 for every sample
      (:func:`mdkl.mara_kl.anchored_kl_loss`, ``level="sequence"``): fixed point
      :func:`mdkl.mara.mara_forward_target`, uniform on the good set.
    * ``"hybrid"``: sequence-level k3 against pi_ref(z) on good samples, per-token k3 with the own
      reference below tau (``level="token"``). The bad continuations of a good prefix are then
      pulled toward the reference with the local normalizer of their context; their mass there is
      O(beta) but the reward gap it makes between the two answers is O(beta) as well, the same
      order as the KL term, so the good answers' ratio deviates by O(1) in beta, driven by how
      differently the two answers fail the format after the digit (measured on
      :func:`one_two_tree`: P(1 | valid) = 0.512 at beta = 0.01, 0.1 and 1 with ``p_close`` =
      (0.85, 0.7); 0.529 with (0.85, 0.5); 0.5001-0.502 with (0.85, 0.85), where only the
      Dirichlet-drawn deeper bad contexts differ).
    * ``"departure"``: per-token k3, own reference except on the token where a good sequence
      first departs from the anchor z, whose reference becomes pi_ref(z_t | y_<t) (still a
      probability). The suffix after the departure keeps its own reference: the suffix's
      reference ratio leaks into the fixed point (exact only when the suffixes' reference
      probabilities match).
    """
    if name not in FORWARD_CANDIDATES:
        raise ValueError(f"unknown candidate {name!r}: use one of {FORWARD_CANDIDATES}")
    tok_ref = tree.ref_token_logprobs()
    lref = tok_ref.sum(-1)
    good, z = whole_space_anchor(tree, tau)
    if name == "vanilla":
        r_sub, lref_kl, anchored = tree.rewards, lref, torch.zeros_like(good)
    else:
        r_sub, lref_kl = mara_substitute(tree.rewards, lref, tau)
        anchored = good
    mask = torch.ones_like(tok_ref)
    if name == "even_spread":
        tok_ref_kl = even_spread_reference(tok_ref, mask, lref_kl)
    elif name == "departure":
        seqs = tree.sequences
        departs = seqs != seqs[z]
        first = departs.to(torch.long).argmax(1)
        rows = torch.nonzero(good & departs.any(1)).flatten()
        tok_ref_kl = tok_ref.clone()
        tok_ref_kl[rows, first[rows]] = tree.ref_logp[tree.contexts[rows, first[rows]], seqs[z, first[rows]]]
    else:
        tok_ref_kl = tok_ref

    def loss(tok: torch.Tensor) -> torch.Tensor:
        lp = tok.sum(-1)
        pg = -_advantage(r_sub, lp.detach().exp()) * lp
        if name in ("sequence", "hybrid"):
            return pg + anchored_kl_loss(tok, tok_ref, mask, lref_kl, anchored, beta,
                                            "sequence" if name == "sequence" else "token")
        return pg + beta * k3(tok, tok_ref_kl).sum(-1)

    return loss


def reverse_mara_loss(tree: TokenTree, beta: float, tau: float = 1.0, mara: bool = True) -> PerSampleLoss:
    """Algorithm 1 under reverse KL: rewards rbar (:func:`mdkl.mara.mara_rewards`, whole space)
    minus the sequence-level k1 = sum of per-token k1, detached, in the reward (PPO / RLOO).
    Fixed point: Remark B.3's :func:`mdkl.mara.mara_target`, uniform on the good set
    (``mara=False``: vanilla, G_beta)."""
    lref = tree.ref_token_logprobs().sum(-1)
    r = mara_rewards(tree.rewards, lref, beta, tau) if mara else tree.rewards

    def loss(tok: torch.Tensor) -> torch.Tensor:
        lp = tok.sum(-1)
        shaped = r - beta * (lp.detach() - lref)
        return -_advantage(shaped, lp.detach().exp()) * lp

    return loss
