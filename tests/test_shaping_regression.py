"""The shared shaping path (mdkl.shaping) reproduces the trainers' earlier inline pipelines exactly.

``tests/data/shaping_reference.json`` holds results recorded with the implementation that preceded
:mod:`mdkl.shaping` (toy trainer with its own MARA / KL / baseline code, LM trainer with
``regularized_rewards``): final policies of ``train_categorical`` / ``train_toy`` for every KL
placement, MARA algorithm, anchor, entropy and advantage kind, and 3 steps of ``lm.train`` on a
tiny from-scratch LM with graded rewards (every shaping path fires). On the kernels the reference
was recorded with (same torch version and CPU capability, one thread) every run must match it to
1e-12 (it matched bit for bit when the shaping module replaced the inline code); elsewhere torch's
vectorized reductions may round differently, so only float rounding (relative 1e-4 for the float32
LM, 1e-9 for the float64 toy) is allowed there.

One path changed on purpose and is not compared: Algorithm 2 with a per-token k3 (forward-KL MARA at
``kl_level="token"``) used to spread the anchor's offset evenly over the tokens, which keeps the
reference's preference between good answers; its anchored samples now get the KL on the sequence
(``tests/test_fwd_mara_tree.py`` proves the difference on an exact token tree).

References that travel. Seeded float32 training repeats bit for bit only on one numeric path (CPU
vendor, pinned or native kernels, torch version: :func:`mdkl.runtime.numeric_path`): MKL's
reproducibility mode is an Intel guarantee and AMD CPUs take other MKL code paths, so even the
pinned AVX2 path differs in the last bits across vendors. ``shaping_reference.json`` is the original
recording (its CPU vendor was not recorded; it is not Intel's: Intel's pinned path differs from it
by up to 1.1e-6 relative); ``shaping_reference_paths.json`` holds the same runs recorded on further
paths, each keyed by its numeric path. Where this machine's path has a recording, every number must
match it bit for bit (1e-12). Elsewhere the original is compared within :data:`CROSS_PATH_RTOL`:
relative 2e-3 plus absolute 1e-5 for the float32 LM (its KL estimates near 0 are differences of
float32 log-probs of ~50 nats, rounded at ~3e-6), absolute 1e-9 for the float64 toy. Measured: the
largest difference between two paths is 1.9e-4 relative (the gradient norm of Algorithm 2's
sequence-level k3, whose ratio pi_ref(z) / pi(y) amplifies rounding, on Intel's native AVX-512
kernels against the original); Intel's pinned path differs by up to 1.6e-6; the toy by < 1e-15. So
the tolerance is ~10x the measured spread, and far below what a one-line change to the shaping
path produces (:func:`test_a_one_line_change_fails_on_any_path`: the leave-one-out baseline counting
the sample itself moves the LM's losses by a factor ~30 and its parameters by 3e-3 relative, the toy
policy by 1.6e-2), so that test fails on every path. The recordings in the paths file are checked
against the original with the same tolerance (:func:`test_path_recordings_agree_with_the_original`).
Record this machine's path with
``python tests/test_shaping_regression.py --record`` (it refuses a recording outside the tolerance).
"""

import copy
import inspect
import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mdkl import lm, runtime, shaping
from mdkl.tasks import onetwo
from mdkl.lm.smalllm import SmallLMConfig, load_small_lm
from mdkl.toy import GaussianPolicy, ToyConfig, train_categorical, train_toy

DATA = Path(__file__).parent / "data"
ORIGINAL = json.loads((DATA / "shaping_reference.json").read_text())
PATHS_FILE = DATA / "shaping_reference_paths.json"
PATHS = json.loads(PATHS_FILE.read_text()) if PATHS_FILE.exists() else {}
PATH = runtime.numeric_path()
#: tolerances against a recording made on another numeric path (see the module docstring)
CROSS_PATH_RTOL = {"toy_atol": 1e-9, "lm_rtol": 2e-3, "lm_atol": 1e-5}
SAME_PATH = PATH in PATHS
REFERENCE = PATHS[PATH] if SAME_PATH else ORIGINAL
TOY_TOL = 1e-12 if SAME_PATH else CROSS_PATH_RTOL["toy_atol"]
LM_RTOL = 1e-12 if SAME_PATH else CROSS_PATH_RTOL["lm_rtol"]
LM_ATOL = 1e-12 if SAME_PATH else CROSS_PATH_RTOL["lm_atol"]

R = [1.0, 1.0, 0.5, 0.0, 0.2]
REF = [0.05, 0.4, 0.3, 0.2, 0.05]
BASE = dict(lr=0.05, batch_size=16, n_seeds=3, weight_decay=0.0, log_every=50)
TOY = {
    "k2_loss_rloo": dict(beta=0.1, kl="reverse", kl_placement="loss", advantage="rloo", steps=150),
    "k3_loss_mean": dict(beta=0.1, kl="forward", kl_placement="loss", advantage="mean", steps=150),
    "k1_reward_none": dict(beta=0.1, kl="reverse", kl_placement="reward", advantage="none", steps=150),
    "k1_loss": dict(beta=0.1, kl="reverse", kl_placement="loss", kl_estimator="k1", steps=150),
    "mara_alg1_k2": dict(beta=0.2, kl="reverse", mara="auto", tau=1.0, steps=150),
    "mara_alg2_k3": dict(beta=0.2, kl="forward", mara="auto", tau=1.0, steps=150, advantage="mean"),
    "mara_alg1_k1reward_random": dict(beta=0.2, kl="reverse", kl_placement="reward", mara="alg1", tau=0.5,
                                      anchor="random", steps=150),
    "mara_alg2_reward_anchor": dict(beta=0.3, kl="forward", mara="alg2", tau=0.5, anchor="reward", steps=150,
                                    init="reference"),
    "entropy_k2": dict(beta=0.05, kl="reverse", entropy=0.1, steps=150),
    "no_kl": dict(beta=0.0, kl="none", steps=150),
}
LM_BASE = dict(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=8, eval_samples=8, eval_every=100, lr=1e-3)
LMC = {
    "default": dict(),
    "rev_k2_seq_grpo": dict(kl="reverse", kl_placement="loss", kl_level="sequence", advantage="grpo"),
    "rev_k1_alg1_pct_mean": dict(mara="alg1", tau_percentile=50.0, tau_scope="batch", advantage="mean", beta=0.05),
    "entropy_nokl": dict(kl="none", entropy=0.1),
    "unlikely_k2": dict(kl_placement="loss", unlikely=0.25),
    "bon_fwd_seq": dict(kl="forward", kl_placement="loss", kl_level="sequence", best_of_n=True, beta=0.001),
    "alg2_seq_group_pct": dict(kl="forward", kl_placement="loss", kl_level="sequence", mara="alg2",
                               tau_percentile=75.0, beta=0.001),
}
TINY = SmallLMConfig(n_docs=400, steps=40, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64,
                     vocab_size=300, batch_size=16, max_len=64, threads=1)


@dataclass(frozen=True)
class GradedTask:
    """Graded rewards in {0, 1/3, 2/3, 1} from the completion's length (every shaping path fires)."""

    name: str = "graded"

    def prompts(self, tokenizer):
        return [onetwo.prompt_text(tokenizer, p) for p in onetwo.PROMPTS[:2]]

    def rewards(self, completions):
        return torch.tensor([(len(c) % 4) / 3 for c in completions], dtype=torch.float64)

    def metrics(self, completions):
        return {}


def _close(got, want, what, rtol=0.0, atol=0.0):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, what
    excess = np.abs(got - want) - (atol + rtol * np.abs(want))
    assert not got.size or excess.max() <= 0, \
        f"{what}: max |difference| {np.abs(got - want).max():.3g} from the reference (rtol={rtol}, atol={atol})"


def run_toy(name: str) -> dict:
    """One toy case of the reference: final policy and mean-reward curve."""
    if name == "gaussian_k2":
        cfg = ToyConfig(beta=0.1, kl="reverse", steps=100, n_seeds=2, batch_size=16, lr=0.05, log_every=50)
        res = train_toy(cfg, GaussianPolicy(2, 0.0, 1.0), lambda x: -(x - 1.0) ** 2,
                        lambda x: -0.5 * x**2 - 0.5 * np.log(2 * np.pi))
    else:
        res = train_categorical(ToyConfig(**BASE, **TOY[name]), R, REF)
    return {"final": np.asarray(res.final).tolist(), "mean_reward": np.asarray(res.mean_reward).tolist()}


def check_toy(got: dict, want: dict, name: str, atol: float) -> None:
    _close(got["final"], want["final"], f"{name} final policy", atol=atol)
    _close(got["mean_reward"], want["mean_reward"], f"{name} mean reward", atol=atol)


def run_lm(model0, tok, name: str) -> dict:
    """One LM case of the reference (3 RL steps, one intra-op thread): history, checkpoints, parameters."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference was recorded with one intra-op thread
    try:
        model = copy.deepcopy(model0)
        res = lm.train(lm.LMConfig(**LM_BASE, **LMC[name]), GradedTask(), model, tok, progress=False)
    finally:
        torch.set_num_threads(threads)
    params = [p.detach().double() for p in model.parameters()]
    return {"history": {c: res.history[c].astype(float).tolist() for c in ("reward", "kl", "loss", "grad_norm")},
            "checkpoints": {c: res.checkpoints[c].astype(float).tolist() for c in ("reward", "kl")},
            "param_sum": float(sum(p.sum() for p in params)),
            "param_abs": float(sum(p.abs().sum() for p in params))}


def check_lm(got: dict, want: dict, name: str, rtol: float, atol: float) -> None:
    for col in ("reward", "kl", "loss", "grad_norm"):
        _close(got["history"][col], want["history"][col], f"{name} history {col}", rtol, atol)
    for col in ("reward", "kl"):
        _close(got["checkpoints"][col], want["checkpoints"][col], f"{name} checkpoint {col}", rtol, atol)
    _close(got["param_sum"], want["param_sum"], f"{name} sum of parameters", rtol, atol)
    _close(got["param_abs"], want["param_abs"], f"{name} sum of |parameters|", rtol, atol)


@pytest.mark.parametrize("name", sorted(TOY))
def test_toy_trainer_matches_reference(name):
    check_toy(run_toy(name), REFERENCE["toy"][name], name, TOY_TOL)


def test_toy_gaussian_matches_reference():
    check_toy(run_toy("gaussian_k2"), REFERENCE["toy"]["gaussian_k2"], "gaussian (mean, std)", TOY_TOL)


@pytest.fixture(scope="module")
def tiny():
    return load_small_lm(TINY, progress=False)


@pytest.mark.parametrize("name", sorted(LMC))
def test_lm_trainer_matches_reference(tiny, name):
    check_lm(run_lm(*tiny, name), REFERENCE["lm"][name], name, LM_RTOL, LM_ATOL)


def test_path_recordings_agree_with_the_original():
    """Every recording on another numeric path lies within the cross-path tolerance of the original
    (so the recordings are of the same algorithm, and the tolerance covers the measured spread)."""
    for path, rec in PATHS.items():
        assert set(rec["toy"]) == set(ORIGINAL["toy"]) and set(rec["lm"]) == set(ORIGINAL["lm"]), path
        for name in rec["toy"]:
            check_toy(rec["toy"][name], ORIGINAL["toy"][name], f"[{path}] {name}", CROSS_PATH_RTOL["toy_atol"])
        for name in rec["lm"]:
            check_lm(rec["lm"][name], ORIGINAL["lm"][name], f"[{path}] {name}", CROSS_PATH_RTOL["lm_rtol"],
                     CROSS_PATH_RTOL["lm_atol"])


#: the one-line mutation: the leave-one-out baseline includes the sample itself
LOO_LINE = "a = x - (x.sum(1, keepdim=True) - x) / (size - 1)"
MUTANT_LINE = "a = x - x.sum(1, keepdim=True) / (size - 1)"


def test_a_one_line_change_fails_on_any_path(tiny, monkeypatch):
    """A one-line change to the shaping path (the leave-one-out baseline counting the sample itself)
    moves the toy and LM results far outside the cross-path tolerance: the regression test catches a
    changed algorithm on every machine, not only on the path it was recorded on."""
    src = textwrap.dedent(inspect.getsource(shaping.group_advantages))
    assert src.count(LOO_LINE) == 1, "the mutated line moved: update LOO_LINE"
    namespace = dict(vars(shaping))
    exec(compile(src.replace(LOO_LINE, MUTANT_LINE), shaping.__file__, "exec"), namespace)
    monkeypatch.setattr(shaping, "group_advantages", namespace["group_advantages"])
    got = run_toy("k2_loss_rloo")
    gap = np.abs(np.asarray(got["final"]) - np.asarray(ORIGINAL["toy"]["k2_loss_rloo"]["final"])).max()
    assert gap > 100 * CROSS_PATH_RTOL["toy_atol"], f"toy: the mutation moved the final policy by only {gap:.3g}"
    with pytest.raises(AssertionError):
        check_toy(got, ORIGINAL["toy"]["k2_loss_rloo"], "mutated k2_loss_rloo", CROSS_PATH_RTOL["toy_atol"])
    got = run_lm(*tiny, "default")
    want = ORIGINAL["lm"]["default"]
    rel = abs(got["param_abs"] - want["param_abs"]) / abs(want["param_abs"])
    rel = max(rel, max(abs(a - b) / abs(b) for a, b in zip(got["history"]["loss"], want["history"]["loss"])))
    assert rel > 100 * CROSS_PATH_RTOL["lm_rtol"], f"LM: the mutation moved the run by only {rel:.3g} (relative)"
    with pytest.raises(AssertionError):
        check_lm(got, want, "mutated default", CROSS_PATH_RTOL["lm_rtol"], CROSS_PATH_RTOL["lm_atol"])


def record() -> dict:
    """Every reference case on this machine's numeric path."""
    model0, tok = load_small_lm(TINY, progress=False)
    return {"recorded_with": {"numeric_path": PATH, **runtime.cpu_model(), "torch": torch.__version__,
                              "torch_threads": 1, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "kernels": runtime.numeric_kernels()},
            "toy": {name: run_toy(name) for name in [*sorted(TOY), "gaussian_k2"]},
            "lm": {name: run_lm(model0, tok, name) for name in sorted(LMC)}}


if __name__ == "__main__":  # python tests/test_shaping_regression.py --record
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/test_shaping_regression.py --record  (adds this numeric path's recording)")
    rec = record()
    for name in rec["toy"]:
        check_toy(rec["toy"][name], ORIGINAL["toy"][name], name, CROSS_PATH_RTOL["toy_atol"])
    for name in rec["lm"]:
        check_lm(rec["lm"][name], ORIGINAL["lm"][name], name, CROSS_PATH_RTOL["lm_rtol"], CROSS_PATH_RTOL["lm_atol"])
    PATHS[PATH] = rec
    runtime.atomic_write_bytes(PATHS_FILE, (json.dumps(PATHS, indent=1, sort_keys=True) + "\n").encode())
    print(f"recorded {PATH!r} in {PATHS_FILE.name} ({len(PATHS)} path(s))")
