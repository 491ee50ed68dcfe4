"""``make gpu-check``: every trainer on the GPU against the CPU, in one short script.

``python -m mdkl.checks.gpu [--out DIR] [--device cuda] [--quick] [--only toy,small_lm,...]``

Per trainer, two kinds of rows:

* **agreement** of one training step on identical inputs (same batch, same initial weights,
  computed once on the CPU and once on the device), within a stated tolerance:
  the toy's :func:`mdkl.shaping.policy_loss` and its gradient (float64, relative 1e-9);
  the small LM's per-token log-probs, shaped loss and gradient for one RL step on fixed sampled
  completions (float32; log-probs 1e-3 nats, loss and gradient relative 1e-3); the same for
  SmolLM2 with LoRA; the chemistry LSTM's DAP loss gradient (float32 with cuDNN's TF32 LSTM
  kernels: relative 2e-2); the creative-QA judge's ratings (1e-2) and MiniLM embeddings (1e-4);
* **throughput** of a few real steps of each trainer with ``device=<device>`` (RL steps/s,
  completion tokens/s, reward calls/s, prior molecules/s), with the CPU's for comparison where it is
  cheap, and the peak GPU memory (``torch.cuda.max_memory_allocated``);

plus the TRL extension's ``accelerate launch`` on one GPU for 3 steps. It needs no network and
little data: the toy, the from-scratch small LM (pretrained on the device), and a few thousand MOSES
SMILES (``--smiles FILE``, written beforehand with ``--write-smiles FILE`` on a machine with the
``molsets`` wheel, else read from the wheel). SmolLM2, MiniLM, the chemistry scorer and TRL are
checked only where their packages are installed (else a ``skip`` row says why).

Without CUDA it prints "no GPU" and exits 0. ``--device cpu`` runs every check CPU against CPU (a
dry run of this script where there is no GPU; the tests use it). The table is printed and written to
``DIR/gpu_check.json`` and ``.csv`` (default ``data/results``); the exit status is 1 if any
agreement check fails or errors.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mdkl.runtime import RESULTS_DIR, ROOT, atomic_write_bytes, resolve_device

__all__ = ["CHECKS", "run_checks", "main"]

CHECKS = ("toy", "small_lm", "smollm2", "creative", "chem", "trl")
SMILES_FILE = ROOT / "data" / "gpu_check_smiles.txt"


class Skip(Exception):
    """A check that cannot run here (a package or data file is missing)."""


def _row(check, quantity, *, cpu=None, device=None, diff=None, tol=None, status=None, note=""):
    if status is None:
        status = "info" if tol is None else ("pass" if diff is not None and diff <= tol else "FAIL")
    return {"check": check, "quantity": quantity, "cpu": cpu, "device": device, "diff": diff, "tol": tol,
            "status": status, "note": note}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||a|| (a on the CPU, b moved there), 0 when both are 0."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    na = float(a.norm())
    return float((a - b).norm()) / na if na > 0 else float((a - b).norm())


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().cpu()
                      for p in params])


class _Peak:
    """Peak GPU memory (GiB) allocated inside the block (None on the CPU)."""

    def __init__(self, device):
        self.device, self.gib = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gib = torch.cuda.max_memory_allocated(self.device) / 2**30
        return False


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# ----------------------------------------------------------------------------------------------
# toy
# ----------------------------------------------------------------------------------------------
def check_toy(device, quick: bool) -> list[dict]:
    from mdkl.shaping import advantages, policy_loss, shape_rewards
    from mdkl.toy import ToyConfig, train_categorical

    cfg = ToyConfig(beta=0.1, kl="reverse", mara="auto", tau=1.0, n_seeds=8, batch_size=64, lr=0.05)
    k = 20
    g = torch.Generator().manual_seed(0)
    logits0 = torch.randn(cfg.n_seeds, k, generator=g, dtype=torch.float64)
    rewards = torch.rand(k, generator=g, dtype=torch.float64).round(decimals=1)
    log_ref = torch.log_softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    x = torch.multinomial(torch.softmax(logits0, -1), cfg.batch_size, replacement=True, generator=g)

    def step(dev):  # the toy trainer's step (train_toy) on given samples
        logits = logits0.to(dev).clone().requires_grad_(True)
        xs, s, b = x.to(dev), cfg.n_seeds, cfg.batch_size
        group = torch.arange(s, device=dev).repeat_interleave(b)
        logp = torch.log_softmax(logits, -1).gather(1, xs)
        r, lref = rewards.to(dev)[xs], log_ref.to(dev)[xs]
        shaped, lref_kl, _ = shape_rewards(cfg.shaping, r.flatten(), logp.flatten(), lref.flatten(), group)
        adv = advantages(cfg.shaping, r.flatten(), shaped, group).view(s, b)
        loss = policy_loss(cfg.shaping, logp, lref_kl.view(s, b), adv).sum()
        loss.backward()
        return loss.detach(), logits.grad

    (l_c, g_c), (l_d, g_d) = step(torch.device("cpu")), step(device)
    rows = [_row("toy", "one step: loss (rel diff)", cpu=float(l_c), device=float(l_d.cpu()),
                 diff=_rel(l_c, l_d), tol=1e-9),
            _row("toy", "one step: gradient (rel norm diff)", diff=_rel(g_c, g_d), tol=1e-9)]
    steps = 50 if quick else 500
    run = cfg.replace(steps=steps, log_every=steps)
    a = train_categorical(run.replace(device=str(device)), rewards.numpy(), log_ref.exp().numpy())
    b = train_categorical(run.replace(device=str(device)), rewards.numpy(), log_ref.exp().numpy())
    rows.append(_row("toy", "two seeded runs on the device agree (max |diff|)",
                     diff=float(np.abs(a.final - b.final).max()), tol=0.0))
    _, t_c = _timed(lambda: train_categorical(run.replace(device="cpu"), rewards.numpy(), log_ref.exp().numpy()))
    with _Peak(device) as peak:
        _, t_d = _timed(lambda: train_categorical(run.replace(device=str(device)), rewards.numpy(),
                                                  log_ref.exp().numpy()))
    rows.append(_row("toy", f"RL steps/s ({cfg.n_seeds} seeds x {cfg.batch_size})", cpu=steps / t_c,
                     device=steps / t_d, note=f"peak GPU memory {peak.gib:.3f} GiB" if peak.gib is not None else ""))
    return rows


# ----------------------------------------------------------------------------------------------
# language models: one RL step on given completions, then a few trainer steps
# ----------------------------------------------------------------------------------------------
def _lm_step(cfg, model0, tok, p_ids, p_mask, c_ids, c_mask, r, dev, lora: bool):
    """Loss, per-token log-probs and gradient of one RL step of :func:`mdkl.lm.train` (steps 2-4 of
    its loop) on given completions, on ``dev`` (a copy of ``model0``)."""
    from mdkl.lm.rollout import sequence_logprobs
    from mdkl.shaping import advantages, policy_loss, shape_rewards

    model = copy.deepcopy(model0).to(dev)
    G = cfg.group_size
    group = torch.arange(p_ids.shape[0], device=dev).repeat_interleave(G)
    p_ids, p_mask, c_ids, c_mask, r = (t.to(dev) for t in (p_ids, p_mask, c_ids, c_mask, r))
    with torch.inference_mode():
        if lora:
            with model.disable_adapter():
                tok_ref = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True)
        else:
            tok_ref = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True)
    tok_ref = tok_ref.clone().double()
    tok_logp = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask, prompt_repeats=G, per_token=True)
    logp, logp_ref = tok_logp.sum(-1), tok_ref.sum(-1)
    shaped, logp_ref_kl, anchored = shape_rewards(cfg.shaping, r, logp, logp_ref, group, lengths=c_mask.sum(-1))
    adv = advantages(cfg.shaping, r, shaped, group)
    loss = policy_loss(cfg.shaping, tok_logp.double(), logp_ref_kl, adv, token_logp_ref=tok_ref,
                       completion_mask=c_mask, anchored=anchored)
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), tok_logp.detach(), _flat_grad(params)


def _lm_rows(name, cfg, model, tok, task, device, steps: int, cpu_steps: int, lora: bool) -> list[dict]:
    from mdkl.lm import trainer as lm
    from mdkl.lm.rollout import sample_completions, tokenize_prompts

    # fixed inputs: completions sampled once on the CPU, rewards from the task
    ids, mask = tokenize_prompts(tok, task.prompts(tok))
    rows_ = torch.arange(cfg.prompts_per_step) % ids.shape[0]
    p_ids, p_mask = ids[rows_], mask[rows_]
    gen = torch.Generator().manual_seed(0)
    base = copy.deepcopy(model).cpu()
    if lora:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(0)
        base = get_peft_model(base, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                               target_modules=list(cfg.lora_targets)))
        with torch.no_grad():  # a non-zero adapter, so the policy differs from the reference
            for n, p in base.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.01, generator=gen)
    c_ids, c_mask = sample_completions(base, p_ids, p_mask, cfg.max_new_tokens, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id, generator=gen, prompt_repeats=cfg.group_size)
    texts = tok.batch_decode(c_ids, skip_special_tokens=True)
    r = lm.task_rewards(task, texts, rows_.repeat_interleave(cfg.group_size)).double()
    r = r + 0.1 * torch.rand(r.shape, generator=gen, dtype=torch.float64)  # spread: every shaping term fires
    l_c, lp_c, g_c = _lm_step(cfg, base, tok, p_ids, p_mask, c_ids, c_mask, r, torch.device("cpu"), lora)
    l_d, lp_d, g_d = _lm_step(cfg, base, tok, p_ids, p_mask, c_ids, c_mask, r, device, lora)
    out = [_row(name, "one RL step: per-token log-probs (max |diff|, nats)",
                diff=float((lp_c - lp_d.cpu()).abs().max()), tol=1e-3),
           _row(name, "one RL step: loss (rel diff)", cpu=float(l_c), device=float(l_d.cpu()),
                diff=_rel(l_c, l_d), tol=1e-3),
           _row(name, "one RL step: gradient (rel norm diff)", diff=_rel(g_c, g_d), tol=1e-3)]
    # a few real trainer steps on the device (fp32, then bf16 autocast), and on the CPU
    batch = f"{cfg.prompts_per_step}x{cfg.group_size}"
    results = {}
    for label, c in (("fp32", cfg.replace(device=str(device))),
                     ("bf16", cfg.replace(device=str(device), autocast="bf16"))):
        if label == "bf16" and device.type != "cuda":
            continue
        with _Peak(device) as peak:
            results[label] = lm.benchmark(c, task, model, tok, steps=steps, warmup=1)
        results[label]["peak"] = peak.gib
    cpu_b = lm.benchmark(cfg.replace(device="cpu"), task, model, tok, steps=cpu_steps, warmup=1) if cpu_steps else {}
    for label, b in results.items():
        mem = f"; peak GPU memory {b['peak']:.2f} GiB" if b["peak"] is not None else ""
        out.append(_row(name, f"RL steps/s ({label}, batch {batch})", cpu=cpu_b.get("steps_per_s"),
                        device=b["steps_per_s"], note=f"{b['n_params']:,} parameters{mem}"))
        out.append(_row(name, f"completion tokens/s ({label})", cpu=cpu_b.get("tokens_per_s"), device=b["tokens_per_s"]))
    return out


def check_small_lm(device, quick: bool) -> list[dict]:
    from mdkl.lm.trainer import LMConfig
    from mdkl.tasks.onetwo import OneTwoTask
    from mdkl.lm.smalllm import SmallLMConfig, load_small_lm, small_lm_dir

    small = SmallLMConfig(device=str(device))
    if quick:
        small = SmallLMConfig(n_docs=400, steps=40, hidden_size=32, n_layers=2, n_heads=2, intermediate_size=64,
                              vocab_size=300, batch_size=16, max_len=64, device=str(device))
    (model, tok), sec = _timed(lambda: load_small_lm(small, progress=False))
    rows = [_row("small_lm", "pretraining on the device (s; 0 if cached)", device=sec,
                 note=f"{small.steps} steps x {small.batch_size} docs; {small_lm_dir(small, progress=False).name}")]
    cfg = LMConfig(model="small", beta=0.05, kl="forward", kl_placement="loss", mara="auto",
                   prompts_per_step=4 if quick else 8, group_size=8, max_new_tokens=16, eval_samples=8)
    return rows + _lm_rows("small_lm", cfg, model, tok, OneTwoTask(), device, steps=3 if quick else 10,
                           cpu_steps=2 if quick else 5, lora=False)


def check_smollm2(device, quick: bool) -> list[dict]:
    from mdkl.lm.trainer import LMConfig
    from mdkl.lm.models import load_smollm2, smollm2_gguf_path
    from mdkl.tasks.onetwo import OneTwoTask

    try:
        smollm2_gguf_path()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise Skip(str(e)) from None
    model, tok = load_smollm2()
    tok.padding_side = "left"
    # the paper profile's creative-QA batch (16 prompts x 8) with LoRA r=8, as notebooks 05 / 07
    cfg = LMConfig(model="smollm2", beta=0.05, kl="reverse", kl_placement="reward", mara="auto",
                   prompts_per_step=2 if quick else 16, group_size=8, max_new_tokens=20, lora_r=8, eval_samples=8)
    return _lm_rows("smollm2", cfg, model.eval(), tok, OneTwoTask(), device, steps=2 if quick else 5,
                    cpu_steps=0, lora=True)


def check_creative(device, quick: bool) -> list[dict]:
    from mdkl.lm import models
    from mdkl.tasks import creative

    try:
        models.smollm2_gguf_path()
        models.minilm_dir()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise Skip(str(e)) from None
    qs = creative.load_prompts("test", n=8)["prompt"].tolist()
    answers = ["A lighthouse that hums lullabies.", "Blue.", "", "Sheldon the turtle.", "I cannot help.",
               "A garden of glass bells.", "asdf qwer", "Moonlit jam on toast."]
    n = 16 if quick else 256
    q, a = [qs[i % len(qs)] for i in range(n)], [answers[i % len(answers)] for i in range(n)]
    r_c = creative.get_judge("cpu").score(q[:16], a[:16])
    with _Peak(device) as peak:
        judge = creative.get_judge(str(device))
        r_d, sec = _timed(lambda: judge.score(q, a))
    rows = [_row("creative", "judge ratings (max |diff|)", diff=float(np.abs(r_c - r_d[:16]).max()), tol=1e-2),
            _row("creative", "judge answers/s", device=n / sec,
                 note=f"peak GPU memory {peak.gib:.2f} GiB" if peak.gib is not None else "")]
    e_c = models.embed(a[:16], device="cpu")
    e_d, sec = _timed(lambda: models.embed(a, device=str(device)))
    rows += [_row("creative", "MiniLM embeddings (max |diff|)", diff=float(np.abs(e_c - e_d[:16]).max()), tol=1e-4),
             _row("creative", "MiniLM texts/s", device=n / sec)]
    return rows


# ----------------------------------------------------------------------------------------------
# chemistry
# ----------------------------------------------------------------------------------------------
def write_smiles(path: Path, n: int = 4000, seed: int = 0) -> Path:
    """Write ``n`` MOSES training SMILES (seeded subset, from the ``molsets`` wheel) to ``path``,
    one per line: the chemistry check's data on a machine without the wheel."""
    from mdkl.chem.smiles import load_moses

    atomic_write_bytes(Path(path), ("\n".join(load_moses(n, seed)) + "\n").encode())
    return Path(path)


def _smiles(path: Path | None, n: int) -> list[str]:
    if path is not None and Path(path).exists():
        return [s for s in Path(path).read_text().split() if s][:n]
    try:
        from mdkl.chem.smiles import load_moses

        return load_moses(n, 0)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise Skip(f"no SMILES: pass --smiles FILE (write it with --write-smiles FILE where molsets is installed); {e}")


class _StandInScorer:
    """Length-based reward in [0, 1] for the RL throughput row when the real scorer is missing."""

    n_invalid = n_nan = 0

    def reset(self):
        pass

    def score(self, smiles):
        return {"reward": np.array([min(len(s) / 60.0, 1.0) for s in smiles]), "canonical": list(smiles),
                "valid": np.ones(len(smiles), dtype=bool)}


def check_chem(device, quick: bool, smiles_path: Path | None) -> list[dict]:
    from mdkl.chem import prior as chem_prior, reinvent as chem

    smiles = _smiles(smiles_path, 500 if quick else 4000)
    vocab = chem_prior.Vocabulary.from_smiles(smiles)
    data = [vocab.encode(s) for s in smiles]
    size = dict(embedding=64, hidden=256, layers=1) if quick else dict(embedding=256, hidden=512, layers=3)
    torch.manual_seed(0)
    prior = chem_prior.SmilesLSTM(len(vocab), **size).eval()
    # DAP loss gradient on one fixed batch (sampled on the CPU), CPU vs device
    g = torch.Generator().manual_seed(0)
    seqs = chem_prior.sample(prior, 64, g, 128)
    r = torch.rand(64, generator=g)

    def dap_grad(dev):
        agent = copy.deepcopy(prior).to(dev).train()
        with torch.no_grad():
            lp_prior = chem_prior.log_likelihood(copy.deepcopy(prior).to(dev), seqs.to(dev))
        loss = chem.dap_loss(chem_prior.log_likelihood(agent, seqs.to(dev)), lp_prior, r.to(dev), 128.0)
        loss.backward()
        return loss.detach(), _flat_grad(agent.parameters())

    (l_c, g_c), (l_d, g_d) = dap_grad(torch.device("cpu")), dap_grad(device)
    rows = [_row("chem", "DAP loss (rel diff)", cpu=float(l_c), device=float(l_d.cpu()), diff=_rel(l_c, l_d), tol=2e-2),
            _row("chem", "DAP gradient (rel norm diff)", diff=_rel(g_c, g_d), tol=2e-2)]
    # prior training throughput (the loop of chem_prior.train_prior) on the device
    model = copy.deepcopy(prior).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = chem_prior.minibatches([len(d) for d in data], 128, torch.Generator().manual_seed(0))[: 5 if quick else 30]
    with _Peak(device) as peak:
        t = time.perf_counter()
        for idx in batches:
            x = _pad(data, idx).to(device)
            loss = -chem_prior.log_likelihood(model, x).sum() / (x[:, 1:] != 0).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        sec = time.perf_counter() - t
    mols = sum(len(b) for b in batches)
    rows.append(_row("chem", f"prior training molecules/s (LSTM {size['layers']}x{size['hidden']}, batch 128)",
                     device=mols / sec, note=f"peak GPU memory {peak.gib:.2f} GiB" if peak.gib is not None else ""))
    # RL: run_rl on the device with the real scorer (CPU worker processes) if it loads
    calls = 128 if quick else 1280
    try:
        from mdkl.chem.reward import RewardConfig, Scorer

        scorer, note = Scorer(RewardConfig("synth")), "SYNTH scorer in CPU worker processes"
    except Exception as e:  # noqa: BLE001 - any missing piece of the scorer: use the stand-in
        scorer, note = _StandInScorer(), f"stand-in length reward (scorer unavailable: {type(e).__name__})"
    try:
        with _Peak(device) as peak:
            out, sec = _timed(lambda: chem.run_rl(prior, vocab, scorer, chem.RLConfig(reward_calls=calls,
                                                                                      device=str(device))))
    finally:
        getattr(scorer, "close", lambda: None)()
    t = out["timing"]
    rows.append(_row("chem", "RL reward calls/s (batch 64)", device=calls / sec,
                     note=f"{note}; s sampling/scoring/update {t['sampling']:.1f}/{t['scoring']:.1f}/{t['update']:.1f}"
                          + (f"; peak GPU memory {peak.gib:.2f} GiB" if peak.gib is not None else "")))
    return rows


def _pad(data, idx) -> torch.Tensor:
    seqs = [data[i] for i in idx]
    x = torch.zeros(len(seqs), max(len(s) for s in seqs), dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = torch.as_tensor(s)
    return x


# ----------------------------------------------------------------------------------------------
# TRL extension under accelerate, one process
# ----------------------------------------------------------------------------------------------
def check_trl(device, quick: bool) -> list[dict]:
    import importlib.util

    if importlib.util.find_spec("trl") is None or importlib.util.find_spec("accelerate") is None:
        raise Skip("trl / accelerate not installed")
    from mdkl.lm.smalllm import SmallLMConfig, small_lm_dir

    model_dir = small_lm_dir(SmallLMConfig(device=str(device)), progress=False)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "mdkl.tasks.onetwo_trl", "--model", str(model_dir),
               "--output_dir", out, "--max_steps", "3", "--per_device_train_batch_size", "8", "--num_generations", "8",
               "--max_completion_length", "16", "--beta", "0.05", "--kl", "forward", "--kl_placement", "loss",
               "--mara", "auto", "--tau_percentile", "90", "--report_to", "none", "--save_strategy", "no",
               "--logging_steps", "1", "--bf16", "false", "--n_prompts", "64"]
        if device.type != "cuda":
            cmd += ["--use_cpu", "true"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        res, sec = _timed(lambda: subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT))
    ok = res.returncode == 0 and "train_runtime" in res.stdout
    tail = " ".join((res.stderr or res.stdout).strip().splitlines()[-2:])[-300:]
    return [_row("trl", "accelerate launch -m mdkl.tasks.onetwo_trl --max_steps 3 (s)", device=sec,
                 status="pass" if ok else "FAIL", note="" if ok else f"exit {res.returncode}: {tail}")]


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def run_checks(device, only=CHECKS, quick: bool = False, smiles: Path | None = None) -> list[dict]:
    """Rows of every check in ``only`` on ``device`` (a check that errors gives one ``ERROR`` row,
    one that cannot run here a ``skip`` row)."""
    fns = {"toy": check_toy, "small_lm": check_small_lm, "smollm2": check_smollm2, "creative": check_creative,
           "chem": lambda d, q: check_chem(d, q, smiles), "trl": check_trl}
    rows = []
    for name in only:
        t = time.perf_counter()
        try:
            rows += fns[name](device, quick)
        except Skip as e:
            rows.append(_row(name, "skipped", status="skip", note=str(e)[:300]))
        except Exception as e:  # noqa: BLE001 - report and go on with the other checks
            rows.append(_row(name, "error", status="ERROR", note=f"{type(e).__name__}: {e}"[:500]))
        print(f"  {name}: {time.perf_counter() - t:.1f} s", flush=True)
    return rows


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_table(rows: list[dict]) -> str:
    cols = ["check", "quantity", "cpu", "device", "diff", "tol", "status", "note"]
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    width = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    width[-1] = len(cols[-1])  # notes run on
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, width)).rstrip()  # noqa: E731
    return "\n".join([line(cols)] + [line(x) for x in cells])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mdkl.checks.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="device checked against the CPU (default cuda; 'cpu' = dry run)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for gpu_check.json / .csv")
    ap.add_argument("--only", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--smiles", type=Path, default=SMILES_FILE, help="SMILES file of the chemistry check")
    ap.add_argument("--write-smiles", type=Path, default=None, metavar="FILE",
                    help="write 4,000 MOSES SMILES to FILE (needs molsets) and exit")
    args = ap.parse_args(argv)
    if args.write_smiles is not None:
        print(f"wrote {write_smiles(args.write_smiles)}")
        return 0
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        ap.error(f"unknown checks {unknown}: choose from {', '.join(CHECKS)}")
    if str(args.device).startswith("cuda") and not torch.cuda.is_available():
        print(f"no GPU: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda}); nothing to check. Run `make gpu-check` on a machine with an NVIDIA GPU, "
              f"or `python -m mdkl.checks.gpu --device cpu --quick` for a dry run of the script.")
        return 0
    device = resolve_device(args.device)
    try:  # no weight-loading progress bars in the table's output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a requirement
        pass
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu-check: {device} ({name}) against the CPU; torch {torch.__version__}", flush=True)
    rows = run_checks(device, only, args.quick, args.smiles)
    print(format_table(rows))
    meta = {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "quick": args.quick, "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    atomic_write_bytes(out / "gpu_check.json", json.dumps({"meta": meta, "rows": rows}, indent=1).encode())
    import pandas as pd

    atomic_write_bytes(out / "gpu_check.csv", pd.DataFrame(rows).to_csv(index=False).encode())
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.csv'}")
    return 1 if any(r["status"] in ("FAIL", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
