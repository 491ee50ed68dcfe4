"""Device plumbing on the CPU: every trainer and evaluator takes ``device='cpu'`` explicitly and gives
bit for bit the result of the default ('auto', which is the CPU here); a config asking for CUDA on a
machine without it fails at once with the fix (:func:`mdkl.runtime.resolve_device`), not inside a
forward pass; cache keys record the resolved device; ``python -m mdkl.checks.gpu`` says "no GPU" and
exits 0, and its CPU-against-CPU dry run passes."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mdkl import lm, runtime
from mdkl.chem import prior as chem_prior, reinvent as chem
from mdkl.lm import models
from mdkl.tasks import creative, onetwo
from mdkl.chem.reinvent import RLConfig
from mdkl.chem.prior import PriorConfig, SmilesLSTM, Vocabulary
from mdkl.lm.smalllm import SmallLMConfig, load_small_lm, small_lm_dir
from mdkl.toy import GaussianPolicy, ToyConfig, train_categorical, train_toy

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
TINY = SmallLMConfig(n_docs=400, steps=40, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64,
                     vocab_size=300, batch_size=16, max_len=64)
LM_TINY = dict(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=8, eval_samples=8, eval_every=2,
               lr=1e-3, beta=0.05, kl="forward", kl_placement="loss", mara="auto")
SMILES = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN(CC)CC", "O=C(O)c1ccccc1", "CC(C)Cc1ccc(C)cc1"]


# ---------------------------------------------------------------------------------------------
# the one resolver
# ---------------------------------------------------------------------------------------------
def test_resolve_device_auto_and_cpu():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.resolve_device("auto").type == want and runtime.resolve_device(None).type == want
    assert runtime.resolve_device("cpu") == runtime.resolve_device(" CPU ") == torch.device("cpu")
    assert runtime.device_key("cpu") == "cpu" and runtime.device_key() == want


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "", "mps", "meta", 3])
def test_resolve_device_rejects_unknown_strings_naming_the_choices(bad):
    with pytest.raises(ValueError, match="'auto'.*'cpu'.*'cuda'"):
        runtime.resolve_device(bad)


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_resolve_device_cuda_without_cuda_names_the_fix(name):
    with pytest.raises(ValueError, match="CUDA is not available.*device='auto' or 'cpu'"):
        runtime.resolve_device(name)


def test_cache_key_records_the_resolved_device_not_auto(monkeypatch):
    auto, cpu = ToyConfig(), ToyConfig(device="cpu")
    assert runtime.cache_key(auto) == runtime.cache_key(cpu)  # same run on this machine: same result
    assert '"device": "cpu"' in json.dumps(runtime._jsonable({"k": auto}))
    real = runtime.resolve_device  # a machine with a GPU: 'auto' resolves to CUDA
    monkeypatch.setattr(runtime, "resolve_device", lambda name="auto": torch.device("cuda") if name in ("auto", None)
                        else real(name))
    assert runtime.cache_key(auto) != runtime.cache_key(cpu)
    assert '"device": "cuda"' in json.dumps(runtime._jsonable({"k": auto}))


# ---------------------------------------------------------------------------------------------
# device='cpu' is the default, bit for bit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [dict(), dict(mara="auto", tau=1.0, anchor="random", kl="reverse",
                                                kl_placement="reward")])
def test_toy_trainer_cpu_equals_default(extra):
    cfg = ToyConfig(beta=0.1, steps=40, n_seeds=3, batch_size=16, lr=0.05, log_every=10, **extra)
    a = train_categorical(cfg, [1.0, 1.0, 0.5, 0.0], [0.1, 0.4, 0.3, 0.2])
    b = train_categorical(cfg.replace(device="cpu"), [1.0, 1.0, 0.5, 0.0], [0.1, 0.4, 0.3, 0.2])
    assert np.array_equal(a.history, b.history) and np.array_equal(a.mean_reward, b.mean_reward)
    g = [train_toy(cfg.replace(device=d), GaussianPolicy(3), lambda x: -(x - 1.0) ** 2, lambda x: -0.5 * x**2)
         for d in ("auto", "cpu")]
    assert np.array_equal(g[0].history, g[1].history)


def test_small_lm_pretraining_cpu_equals_default(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)
    ma, _ = load_small_lm(TINY, progress=False)
    mb, _ = load_small_lm(SmallLMConfig(**{**TINY.__dict__, "device": "cpu"}), force=True, progress=False)
    assert small_lm_dir(TINY, progress=False) == small_lm_dir(TINY.__class__(**{**TINY.__dict__, "device": "cpu"}),
                                                               progress=False)
    for (n, p), (_, q) in zip(ma.named_parameters(), mb.named_parameters()):
        assert torch.equal(p, q), n


@pytest.fixture(scope="module")
def tiny():
    return load_small_lm(TINY, progress=False)


def test_lm_trainer_cpu_equals_default(tiny):
    model0, tok = tiny
    runs = []
    for d in ("auto", "cpu"):
        model = copy.deepcopy(model0)
        res = lm.train(lm.LMConfig(device=d, **LM_TINY), onetwo.OneTwoTask(), model, tok, progress=False)
        runs.append((res, [p.detach().clone() for p in model.parameters()]))
    (a, pa), (b, pb) = runs
    cols = ["reward", "kl", "loss", "grad_norm", "completion_tokens"]
    assert a.history[cols].equals(b.history[cols]) and a.checkpoints[["reward", "kl"]].equals(b.checkpoints[["reward", "kl"]])
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert lm.benchmark(lm.LMConfig(device="cpu", **LM_TINY), onetwo.OneTwoTask(), model0, tok, steps=1)["device"] == "cpu"


def _prior():
    torch.manual_seed(0)
    v = Vocabulary.from_smiles(SMILES)
    return SmilesLSTM(len(v), 8, 16, 1), v


class _LenScorer:
    n_invalid = n_nan = 0

    def reset(self):
        pass

    def score(self, smiles):
        return {"reward": np.array([min(len(s) / 20.0, 1.0) for s in smiles]), "canonical": list(smiles),
                "valid": np.ones(len(smiles), dtype=bool)}


def test_chem_agent_cpu_equals_default():
    model, v = _prior()
    logs = [chem.run_rl(model, v, _LenScorer(), RLConfig(batch_size=4, reward_calls=12, mara="alg1", tau=0.5,
                                                          max_len=20, device=d))["log"] for d in ("auto", "cpu")]
    assert logs[0].equals(logs[1])
    assert next(model.parameters()).device.type == "cpu"  # the caller's prior is left where it was
    q = [chem_prior.prior_quality(model, v, 8, [], seed=1, max_len=20)["log_likelihood"] for _ in range(2)]
    assert np.array_equal(q[0], q[1])


def test_chem_prior_training_cpu_equals_default(tmp_path, monkeypatch):
    from mdkl.chem.smiles import moses_path

    try:
        moses_path("train")
    except ModuleNotFoundError:
        pytest.skip("molsets wheel (MOSES SMILES) not installed")
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)
    cfg = PriorConfig(n_train=200, epochs=1, embedding=8, hidden=16, layers=1, batch_size=32, threads=1)
    a = chem_prior.train_prior(cfg, progress=False)
    sa = torch.load(a / "model.pt", weights_only=True)  # read before the forced rebuild replaces it
    b = chem_prior.train_prior(PriorConfig(**{**cfg.__dict__, "device": "cpu"}), force=True, progress=False)
    assert a == b  # one cache entry: the key records the resolved device
    m, _, loaded = chem_prior.load_prior(b)
    assert loaded.device == "cpu" and all(torch.equal(sa[k], v) for k, v in m.state_dict().items())
    assert json.loads((b / "stats.json").read_text())["device"] == "cpu"


def test_creative_evaluators_cpu_equal_default(monkeypatch):
    pytest.importorskip("sentence_transformers")
    try:
        models.minilm_dir()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("all-MiniLM-L6-v2 wheel not installed")
    texts = ["a red fox", "", "blue whale song"]
    assert np.array_equal(models.embed(texts), models.embed(texts, device="cpu"))
    assert models.load_minilm() is models.load_minilm("cpu")
    assert creative.get_scorer() is creative.get_scorer("cpu")
    assert runtime.cache_key(creative.CreativeTask()) == runtime.cache_key(creative.CreativeTask(device="cpu"))


# ---------------------------------------------------------------------------------------------
# device='cuda' without CUDA: at once, with the fix
# ---------------------------------------------------------------------------------------------
@NO_CUDA
def test_cuda_request_fails_at_once_in_every_trainer(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "CACHE_DIR", tmp_path)
    msg = "CUDA is not available"
    with pytest.raises(ValueError, match=msg):
        train_categorical(ToyConfig(device="cuda"), [1.0, 0.0], [0.5, 0.5])
    with pytest.raises(ValueError, match=msg):
        train_toy(ToyConfig(device="cuda"), GaussianPolicy(1), lambda x: x, lambda x: x)
    with pytest.raises(ValueError, match=msg):
        small_lm_dir(SmallLMConfig(device="cuda"), progress=False)
    with pytest.raises(ValueError, match=msg):
        lm.validate_config(lm.LMConfig(device="cuda"))
    model, tok = tiny
    with pytest.raises(ValueError, match=msg):
        lm.train(lm.LMConfig(device="cuda", **LM_TINY), onetwo.OneTwoTask(), copy.deepcopy(model), tok, progress=False)
    with pytest.raises(ValueError, match=msg):
        lm.train_cached(lm.LMConfig(device="cuda", **LM_TINY), onetwo.OneTwoTask(), small=TINY, progress=False)
    prior, v = _prior()
    with pytest.raises(ValueError, match=msg):
        chem.run_rl(prior, v, _LenScorer(), RLConfig(device="cuda"))
    with pytest.raises(ValueError, match=msg):
        chem_prior.train_prior(PriorConfig(n_train=10, device="cuda"), progress=False)
    with pytest.raises(ValueError, match=msg):
        creative.get_judge("cuda")
    with pytest.raises(ValueError, match=msg):
        creative.CreativeTask(device="cuda").rewards(["x"], prompt_index=[0])
    with pytest.raises(ValueError, match=msg):
        models.embed(["x"], device="cuda")
    with pytest.raises(ValueError, match=msg):
        models.load_smollm2(device="cuda")


@NO_CUDA
def test_bf16_autocast_needs_cuda():
    with pytest.raises(ValueError, match="autocast='bf16' needs a CUDA device.*'auto'"):
        lm.validate_config(lm.LMConfig(autocast="bf16"))
    assert lm.autocast_dtype(lm.LMConfig(autocast="auto")) is None  # off on the CPU
    with pytest.raises(ValueError, match="unknown autocast"):
        lm.validate_config(lm.LMConfig(autocast="fp8"))


# ---------------------------------------------------------------------------------------------
# make gpu-check
# ---------------------------------------------------------------------------------------------
def _gpu_check(*args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "mdkl.checks.gpu", "--out", str(tmp_path), *args], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


@NO_CUDA
def test_gpu_check_without_gpu_says_so_and_exits_0(tmp_path):
    out = _gpu_check(tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("no GPU") and "make gpu-check" in out.stdout
    assert not (tmp_path / "gpu_check.json").exists()  # no table that could pass for a GPU result


@pytest.mark.slow  # ~1.5 min: the toy, small-LM and chemistry checks end to end
def test_gpu_check_dry_run_on_the_cpu_passes(tmp_path):
    out = _gpu_check("--device", "cpu", "--quick", "--only", "toy,small_lm,chem", tmp_path=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = [r for r in res["rows"] if r["tol"] is not None]
    assert {r["check"] for r in checks} == {"toy", "small_lm", "chem"}
    assert all(r["status"] == "pass" for r in checks), checks
    assert all(r["diff"] == 0.0 for r in checks)  # CPU against CPU: identical
    assert res["meta"]["device"] == "cpu" and (tmp_path / "gpu_check.csv").exists()
