"""The 1-2 task on TRL: :class:`mdkl.lm.trl_ext.MDKLGRPOTrainer` trained on the 1-2 prompt with
the task's reward (see docs/trl.md).

:func:`onetwo_reward` is the task's reward as a TRL reward function; :func:`main` is the command
line, every :class:`~mdkl.lm.trl_ext.MDKLGRPOConfig` field a flag::

    accelerate launch [--config_file zero2.yaml] -m mdkl.tasks.onetwo_trl --model smollm2 \
        --output_dir runs/onetwo --beta 0.01 --kl forward --kl_placement loss --mara auto

(kept apart from :mod:`mdkl.lm.trl_ext` so that the LM layer does not import a task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mdkl.lm.trl_ext import MDKLGRPOConfig, MDKLGRPOTrainer
from mdkl.tasks.onetwo import PROMPT, rewards

__all__ = ["onetwo_reward", "OneTwoScriptArguments", "main"]


def onetwo_reward(completions, **kwargs) -> list[float]:
    """TRL reward function for the 1-2 task (:func:`mdkl.tasks.onetwo.rewards`); TRL passes conversational
    completions as ``[{'role': 'assistant', 'content': ...}]``."""
    return rewards([c if isinstance(c, str) else c[-1]["content"] for c in completions]).tolist()


@dataclass
class OneTwoScriptArguments:
    """What :func:`main` needs besides :class:`MDKLGRPOConfig`."""

    model: str = field(default="small", metadata={"help": "'small' (mdkl.lm.smalllm's from-scratch LM), 'smollm2', "
                                                          "or a folder with a causal LM and its tokenizer"})
    """'small' (the cached from-scratch LM of :mod:`mdkl.lm.smalllm`), 'smollm2', or a model folder."""
    n_prompts: int = field(default=4096, metadata={"help": "Rows of the prompt dataset (the 1-2 prompt)."})
    """Rows of the prompt dataset (all the 1-2 prompt; ``max_steps`` bounds the run)."""


def main(argv=None) -> MDKLGRPOTrainer:
    """Train on the 1-2 task with :class:`MDKLGRPOTrainer`; every ``MDKLGRPOConfig`` field is a flag."""
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoTokenizer, HfArgumentParser

    script, args = HfArgumentParser((OneTwoScriptArguments, MDKLGRPOConfig)).parse_args_into_dataclasses(argv)
    with PartialState().main_process_first():  # the first process builds the cached weights
        if script.model == "small":
            from mdkl.lm.smalllm import small_lm_dir
            path = str(small_lm_dir(progress=False))
        elif script.model == "smollm2":
            from mdkl.lm.models import smollm2_dir
            path = str(smollm2_dir())
        else:
            path = script.model
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = Dataset.from_dict({"prompt": [[{"role": "user", "content": PROMPT}]] * script.n_prompts})
    trainer = MDKLGRPOTrainer(model=path, reward_funcs=onetwo_reward, args=args, train_dataset=ds,
                              processing_class=tok)
    trainer.train()
    return trainer


if __name__ == "__main__":
    main()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # join the process group's threads before exit: left to interpreter shutdown, a torchrun
        # rank could abort ("terminate called without an active exception", SIGABRT)
        dist.destroy_process_group()
