"""MARA and an explicit KL direction on top of TRL's ``GRPOTrainer`` (scale-out: accelerate/DeepSpeed).

TRL computes the reward with user functions that never see the reference model, and its KL term is
fixed: GRPO adds per-token k3 to the loss, RLOO subtracts k1 from the reward. GRPO's k3 is a
forward-KL gradient up to trl 1.9.2; in trl 1.16 (pinned) GRPOTrainer's default
``use_bias_correction_kl=True`` multiplies it by the token ratio ``pi / pi_old``, which turns its
gradient into the per-token reverse KL's (``mdkl.kl``; measured exactly in
``tests/test_trl_kl_direction.py``). :class:`MDKLGRPOTrainer` keeps all of TRL's machinery
(generation, vLLM, PEFT, accelerate/DeepSpeed, logging) and changes three hooks only:

1. ``_get_per_token_logps_and_entropies`` records the inputs and outputs of the reference forward
   pass that TRL already runs while scoring a generation batch (and, in ``_compute_loss``, the
   policy's per-token log-probs, which carry the gradient).
2. ``_calculate_rewards`` (called by TRL right after the reference pass) turns the per-token
   reference log-probs into *sequence* log-probs, ``log pi_ref(y) = sum_t log pi_ref(y_t | x, y_<t)``
   over the completion mask (padding and, with ``mask_truncated_completions``, truncated
   completions excluded: exactly TRL's ``completion_mask``), gathers them across processes (rewards
   are gathered there too, so a prompt's group may span GPUs), computes the sampling policy's
   sequence log-probs the same way (one extra no-grad forward pass, also logged as the KL
   estimate), and calls the shared shaping path, :func:`mdkl.shaping.shape_rewards`, per
   prompt group of ``num_generations`` samples:

   - MARA Algorithm 1 (:func:`mdkl.mara.mara_rewards`) for the reverse KL, or Algorithm 2
     (:func:`mdkl.mara.mara_substitute`) for the forward KL (``mdkl.mara.MARA_FOR_KL``), with
     ``tau`` fixed or :func:`mdkl.mara.batch_percentile_tau`;
   - for ``kl="reverse", kl_placement="reward"``: the detached k1 penalty
     ``-beta (log pi(y) - log pi_ref(y))`` (:func:`mdkl.kl.kl_reward_penalty`).

   The shaped reward is handed back to TRL, whose own code then forms the GRPO advantages
   (group mean, divided by the std per ``scale_rewards``); nothing of that is copied here. With
   MARA or k1 in the reward, ``scale_rewards`` defaults to ``"none"``: dividing by the group's std
   erases the beta-scaled spread they create inside an all-correct group (the regularized target
   no longer follows), so an explicit ``"group"`` / ``"batch"`` is refused with them.
3. ``_compute_loss`` runs TRL's loss with its built-in k3 term switched off and adds
   ``beta * mdkl.kl.kl_loss(...)`` for the chosen estimator (k2: reverse, k3: forward), per token
   (``kl_level="token"``, the default as in :mod:`mdkl.lm`; with ``kl="forward"`` this is exactly
   TRL's GRPO k3 term with ``use_bias_correction_kl=False``, i.e. trl <= 1.9.2's: the same value
   as trl 1.16's default term, whose ratio factor gives it the reverse KL's gradient instead) or
   on sequence log-probs (``kl_level="sequence"``: the paper's objective
   over whole outputs; the sequence value is spread evenly over its tokens). Under Algorithm 2 the
   reference inside the KL is the anchor's, ``log pi_ref(z)``, a *sequence* probability: the
   samples MARA anchored get the KL of their sequence log-prob against it, the others keep the
   per-token term (:func:`mdkl.mara_kl.anchored_kl_loss`, as in our trainer). Spreading the
   anchor's offset over the tokens instead would keep the reference's preference between good
   answers (``notebooks/04_mara_toy.ipynb``, section 5).

The per-token KL values are aggregated with TRL's own normalization for ``loss_type`` (the one
TRL's k3 term gets), so beta weighs the KL against the policy term as in TRL, and relative to the
policy term as in :mod:`mdkl.lm` (where both are summed over tokens); TRL's
``use_bias_correction_kl`` and sequence-level importance sampling do not touch this term (so
``kl="forward"`` follows the forward KL in trl 1.16 too).
With ``scale_rewards="none"`` GRPO's mean baseline is RLOO's leave-one-out baseline up to the
factor G/(G-1). Unscorable completions (every reward function returned ``None``) take no part in
MARA and keep TRL's treatment (zero advantage). TRL's ``reward`` metrics show the shaped reward;
``mdkl/reward`` is the raw one, ``mdkl/kl_k1`` the sequence-level k1 estimate of KL(pi || pi_ref)
and ``mdkl/kl_loss`` the KL loss estimator's batch mean.

Choices to know about:

- Which pass is the reference: TRL 1.16 runs, under ``no_grad`` and in this order, the optional
  old-policy pass and then the reference pass (a separate model, or the PEFT model with its
  adapter disabled), right before ``_calculate_rewards``; the last recorded pass is therefore the
  reference. ``tests/test_trl_ext.py`` re-computes it independently. These are private TRL
  methods: pin ``trl`` (tested with 1.16.0).
- Per-token vs sequence k3: per-token k3 (ours; TRL's up to 1.9.2) follows the forward KL of
  each next-token distribution at contexts the policy visits, not KL(pi_ref || pi) over whole outputs (the
  paper's objective); ``kl_level="sequence"`` follows the latter. Sequence-level k3 weights a
  sample by ``pi_ref(y) / pi(y)``, which is heavy tailed (``mdkl.lm`` measured it diverging on the
  small LM) and can overflow on long completions: hence the per-token default.
- With ``use_vllm`` the k1 penalty uses the trained model's log-probs of the vLLM samples.

The 1-2 task on it (its TRL reward function and command line) is :mod:`mdkl.tasks.onetwo_trl`:
launch on several GPUs with ``accelerate launch [--config_file zero2.yaml] -m mdkl.tasks.onetwo_trl
--model ... --beta 0.01 --kl forward --kl_placement loss --mara auto`` (every config field is a flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from trl import GRPOConfig, GRPOTrainer

from mdkl.kl import k1, kl_loss
from mdkl.mara_kl import anchored_kl_loss
from mdkl.shaping import ShapingConfig, shape_rewards

__all__ = ["MDKLGRPOConfig", "MDKLGRPOTrainer"]


#: TRL 1.16 loss types whose per-token aggregation MDKLGRPOTrainer._aggregate mirrors
_KL_LOSS_TYPES = frozenset({"grpo", "sapo", "bnpo", "dr_grpo", "luspo", "dapo", "cispo", "vespo"})


@dataclass
class MDKLGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the KL direction and MARA, with the field names of
    :class:`mdkl.shaping.ShapingConfig` (``beta`` is TRL's field: > 0 for a KL term)."""

    scale_rewards: str | None = field(
        default=None, metadata={"help": "TRL's reward scaling ('group', 'batch', 'none'); default 'none' with "
                                        "MARA or k1 in the reward (std scaling erases their spread), else 'group'."})
    """TRL's reward scaling: 'group' / True (divide by the group's std), 'batch', 'none' / False.
    Default (None): 'none' with MARA or k1 in the reward, whose beta-scaled spread inside an
    all-correct group the std division would erase (an explicit 'group' / 'batch' with them
    raises), else TRL's 'group'."""

    kl: Literal["reverse", "forward", "none"] = field(
        default="reverse", metadata={"help": "KL direction whose gradient the regularizer follows."})
    """KL direction whose gradient the regularizer follows ('none': no KL term)."""
    kl_placement: Literal["reward", "loss"] = field(
        default="reward", metadata={"help": "reverse: 'reward' = k1 in the reward, 'loss' = k2 loss; "
                                            "forward: 'loss' (k3, GRPO's estimator)."})
    """reverse: 'reward' = k1 detached in the reward, 'loss' = k2 loss; forward: 'loss' only (k3)."""
    kl_level: Literal["sequence", "token"] = field(
        default="token", metadata={"help": "KL loss per token (TRL's GRPO term) or on sequence log-probs."})
    """KL *loss* per token (TRL's GRPO term; mdkl.lm's default) or on sequence log-probs (the
    paper's bandit view; sequence-level k3 is heavy tailed). k1 in the reward is the same either way."""
    mara: Literal["none", "alg1", "alg2", "auto"] = field(
        default="none", metadata={"help": "MARA per prompt group; 'auto': Alg. 1 reverse, Alg. 2 forward."})
    """MARA within each prompt's group of ``num_generations`` samples: 'auto' = Alg. 1 for reverse,
    Alg. 2 for forward KL (``mdkl.mara.MARA_FOR_KL``); needs beta > 0."""
    tau: float = field(default=1.0, metadata={"help": "Fixed MARA threshold."})
    """Fixed MARA threshold (1.0: the valid answers of the 0/1 reward of the 1-2 task)."""
    tau_percentile: float | None = field(
        default=None, metadata={"help": "If set, tau = this percentile of each group's rewards."})
    """If set, tau is this percentile of each group's rewards (paper's creative task: 90)."""

    def __post_init__(self):
        base = ShapingConfig.from_fields(self, advantage="mean")  # beta, KL placement / level, MARA, tau
        spread = base.mara != "none" or (base.estimator == "k1" and base.kl_placement == "reward")
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if scale is None:
            self.scale_rewards = "none" if spread else "group"
        elif spread and scale in ("group", "batch"):
            what = "MARA" if base.mara != "none" else "the k1 penalty in the reward"
            raise ValueError(f"scale_rewards={scale!r} divides the shaped rewards by a std, which erases the "
                             f"beta-scaled spread {what} creates inside an all-correct group: use "
                             f"scale_rewards='none' (the default with {what})")
        super().__post_init__()
        self.shaping  # noqa: B018  (validates the combination with TRL's advantage)
        if self.kl_placement == "loss" and self.loss_type not in _KL_LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r} with a KL loss: use one of "
                             f"{sorted(_KL_LOSS_TYPES)} or kl_placement='reward'")

    @property
    def shaping(self) -> ShapingConfig:
        """The shaping settings (:class:`mdkl.shaping.ShapingConfig`) from this config's same-named
        fields; ``advantage`` mirrors TRL's (group mean, std-scaled with ``scale_rewards='group'``)."""
        return ShapingConfig.from_fields(self, advantage="grpo" if self.scale_rewards == "group" else "mean")


class MDKLGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with an explicit KL direction and MARA (see the module docstring).

    ``args`` must be an :class:`MDKLGRPOConfig`. After each scoring pass ``self.last_shaping`` holds
    the gathered batch the shaping saw (``rewards``, ``logp_ref``, ``logp``, ``group``, ``scorable``)
    and what it produced (``shaped_rewards``, ``kl_logp_ref``), for logging and tests.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, MDKLGRPOConfig):
            raise ValueError("MDKLGRPOTrainer needs args=MDKLGRPOConfig(...) (a GRPOConfig subclass)")
        if not self.reward_weights.ne(0).all():
            raise ValueError("MDKLGRPOTrainer adds its reward shaping to the first reward function's "
                             "column: give every reward function a non-zero weight")
        self._scoring_calls: list = []  # (args, kwargs, per-token logps) of no-grad forward passes
        self._in_loss = False
        self._policy_logps = None  # per-token log-probs with gradient, recorded in _compute_loss
        self.last_shaping: dict = {}

    # -- hook 1: record the forward passes TRL already makes -------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                         logits_to_keep, *args, **kwargs)
        if self._in_loss:
            self._policy_logps = out[0]
        elif not torch.is_grad_enabled():
            self._scoring_calls.append(((input_ids, attention_mask, logits_to_keep) + args, kwargs, out[0]))
        return out

    def _generate_and_score_completions(self, inputs):
        self._scoring_calls = []
        out = super()._generate_and_score_completions(inputs)
        if "mdkl_logp_ref" not in self.last_shaping:  # beta == 0: no reference, nothing to shape
            return out
        n = out["completion_ids"].shape[0]
        i = self.accelerator.process_index
        out["mdkl_logp_ref"] = self.last_shaping.pop("mdkl_logp_ref")[i * n:(i + 1) * n]
        out["mdkl_anchored"] = self.last_shaping["anchored"][i * n:(i + 1) * n]
        return out

    # -- hook 2: shape the rewards with the reference log-probs ----------------------------------
    def _sequence_logps(self, model) -> torch.Tensor:
        """Sequence log-probs of the scored batch (gathered): sum of per-token log-probs over the
        completion mask. ``model=None`` returns the reference's (TRL's last no-grad pass)."""
        (input_ids, attention_mask, logits_to_keep, *rest), kwargs, ref_tok = self._scoring_calls[-1]
        tok = ref_tok
        if model is not None:
            with torch.no_grad():
                tok = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                                 logits_to_keep, *rest, **kwargs)[0]
        mask = attention_mask[:, -logits_to_keep:].to(tok.dtype)
        return self.accelerator.gather((tok * mask).sum(-1))

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        args = self.args
        if self.beta == 0.0:
            return per_func  # no KL term: no reference pass, MARA refused by the config
        mode = "train" if self.model.training else "eval"
        ng = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(per_func.device)
        scorable = ~torch.isnan(per_func).all(dim=1)
        rewards = (per_func * weights).nansum(dim=1)
        logp_ref = self._sequence_logps(None).to(rewards.dtype)
        logp = self._sequence_logps(self.model).to(rewards.dtype)
        group = torch.arange(len(rewards), device=rewards.device) // ng
        shaped, kl_ref = rewards.clone(), logp_ref.clone()
        anchored = torch.zeros_like(scorable)
        if scorable.any():  # MARA and the k1 penalty on the scorable samples, groups renumbered
            _, g = torch.unique(group[scorable], return_inverse=True)
            r_s, lr_s, a_s = shape_rewards(args.shaping, rewards[scorable].double(), logp[scorable].double(),
                                           logp_ref[scorable].double(), g)
            shaped[scorable], kl_ref[scorable] = r_s.to(shaped.dtype), lr_s.to(kl_ref.dtype)
            anchored[scorable] = a_s
        self._metrics[mode]["mdkl/kl_k1"].append(k1(logp, logp_ref).mean().item())
        self._metrics[mode]["mdkl/reward"].append(rewards[scorable].mean().item())
        self.last_shaping = dict(rewards=rewards, logp_ref=logp_ref, logp=logp, group=group,
                                 scorable=scorable, shaped_rewards=shaped, kl_logp_ref=kl_ref,
                                 anchored=anchored, mdkl_logp_ref=kl_ref)
        self._metrics[mode]["mdkl/mara_anchored"].append(anchored.double().mean().item())
        out = per_func.clone()
        delta = torch.where(scorable, shaped - rewards, torch.zeros_like(shaped))
        out[:, 0] = torch.where(scorable, out[:, 0].nan_to_num(0.0) + delta / weights[0], out[:, 0])
        return out

    # -- hook 3: the KL loss term ----------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        beta, self.beta, self._in_loss = self.beta, 0.0, True  # TRL's own k3 term off
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self.beta, self._in_loss = beta, False
        estimator = self.args.shaping.estimator
        if beta == 0.0 or estimator is None or self.args.kl_placement == "reward":
            return loss
        lp = self._policy_logps
        mask = (inputs["completion_mask"] * inputs.get("tool_mask", 1)).to(lp.dtype)
        ref_kl = inputs["mdkl_logp_ref"]  # sequence reference for the KL (Alg. 2: the anchor's)
        anchored = inputs["mdkl_anchored"]
        if self.args.kl_level == "token" and self.args.shaping.mara_algorithm == "alg2" and anchored.any():
            # Alg. 2: anchored samples' KL on the sequence against log pi_ref(z) (mdkl.mara_kl), the rest
            # per token; each sample's value spread over its tokens so that they sum to it
            seq = anchored_kl_loss(lp, inputs["ref_per_token_logps"].to(lp.dtype), mask, ref_kl.to(lp.dtype),
                                   anchored, beta, "token", estimator=estimator)
            per_token = (seq / mask.sum(-1).clamp(min=1.0))[:, None].expand_as(lp)
        elif self.args.kl_level == "token":  # per token against the sample's own reference (GRPO's form)
            per_token = kl_loss(lp, inputs["ref_per_token_logps"], beta, estimator)
        else:  # one value per sequence, spread over its tokens so that they sum to it
            seq = kl_loss((lp * mask).sum(-1), ref_kl.to(lp.dtype), beta, estimator)
            per_token = (seq / mask.sum(-1).clamp(min=1.0))[:, None].expand_as(lp)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["mdkl/kl_loss"].append(
            self.accelerator.gather((per_token * mask).sum().detach()[None]).sum().item()
            / max(self.accelerator.gather(mask.sum()[None]).sum().item(), 1.0) / beta)
        return loss + self._aggregate(per_token, mask, inputs)

    def _aggregate(self, per_token: torch.Tensor, mask: torch.Tensor, inputs) -> torch.Tensor:
        """Per-token loss [B, T] -> scalar exactly as TRL 1.16's ``GRPOTrainer._compute_loss``
        aggregates its policy and KL terms for ``self.loss_type`` (so beta weighs our KL term against
        the policy term as TRL's own beta does), including the gradient-accumulation scaling."""
        x, lt = per_token * mask, self.loss_type
        train = self.model.training
        accum = self.current_gradient_accumulation_steps if train else 1.0
        if lt in ("grpo", "sapo"):
            return (x.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accum
        if lt == "bnpo":
            return x.sum() / mask.sum().clamp(min=1.0) / accum
        if lt == "dr_grpo":
            return x.sum() / (x.size(0) * self.max_completion_length) / accum
        if lt == "luspo":
            return x.sum(-1).mean() / accum
        norm = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes  # dapo, cispo, vespo
        if train:
            norm = norm * accum / self.args.steps_per_generation
        return x.sum() / norm
