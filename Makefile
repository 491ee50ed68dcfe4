# mdkl: regenerate every result of "KL-Regularized RL is Designed to Mode Collapse".
#   make all            create .venv if needed, run every notebook (PROFILE=cpu by default)
#   make test           .venv, unit tests, nbval of every notebook under the quick profile
#   make help           this list
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PROFILE ?= cpu
PROFILES := quick cpu paper
ifeq ($(filter $(PROFILE),$(PROFILES)),)
$(error unknown PROFILE '$(PROFILE)': use one of: $(PROFILES), e.g. `make all PROFILE=quick`)
endif

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ENV_STAMP := $(VENV)/.mdkl-installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
EXECUTED := $(patsubst notebooks/%.ipynb,executed/$(PROFILE)/%.ipynb,$(NOTEBOOKS))
MDKL_SOURCES := $(wildcard mdkl/*.py mdkl/*/*.py)
NB_TIMEOUT ?= 3600

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONPATH := $(CURDIR)
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# One numeric kernel path on x86-64 machines (AVX2), so seeded runs repeat bit for bit on one kind of
# CPU (mdkl/__init__.py sets the same defaults for `python -m mdkl...` and notebooks run by hand;
# benchmarks/bench_kernels.py measures the speed cost). MDKL_NATIVE_KERNELS=1 opts out: every
# library then picks its kernels by the CPU (`make test` also checks the notebooks' claims that way).
MDKL_NATIVE_KERNELS ?=
ifneq ($(MDKL_NATIVE_KERNELS),1)
ifneq ($(filter x86_64 amd64,$(shell uname -m)),)
ATEN_CPU_CAPABILITY ?= avx2
MKL_CBWR ?= AVX2
ONEDNN_MAX_CPU_ISA ?= AVX2
export ATEN_CPU_CAPABILITY MKL_CBWR ONEDNN_MAX_CPU_ISA
endif
endif

.PHONY: all help env test unit nbval nbval-native lab publish readme onetwo-paths naming-paths bench gpu-check check-machine chem-prior chem-calibrate chem-calibrate-v2 clean-cache clean $(notdir $(basename $(NOTEBOOKS)))

help: ## show this help
	@echo "mdkl make targets (PROFILE=quick|cpu|paper, default cpu):"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'
	@echo "  NN_topic       run one notebook, e.g. make 03_probability_ratios PROFILE=quick"
	@echo "notebooks: $(notdir $(NOTEBOOKS))"

all: $(EXECUTED) ## create the environment if needed, then run every notebook (writes executed/$(PROFILE)/, figures/, data/)
	@echo "all notebooks executed under PROFILE=$(PROFILE): see executed/$(PROFILE)/ and figures/"

env: $(ENV_STAMP) ## create .venv with pip and install the pinned requirements

$(ENV_STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $@

# One rule from notebook to executed notebook; papermill names the failing cell and make stops.
executed/$(PROFILE)/%.ipynb: notebooks/%.ipynb $(MDKL_SOURCES) | $(ENV_STAMP)
	@mkdir -p $(@D)
	@echo "== $< (PROFILE=$(PROFILE))"
	@start=$$(date +%s); \
	MDKL_PROFILE=$(PROFILE) TQDM_DISABLE=1 $(PY) -m papermill $< $@.tmp.ipynb -k python3 --cwd notebooks \
	  -p profile $(PROFILE) --execution-timeout $(NB_TIMEOUT) --log-level WARNING \
	  || { rm -f $@.tmp.ipynb; echo "FAILED: $< (see the cell named above)"; exit 1; }; \
	mv $@.tmp.ipynb $@; secs=$$(( $$(date +%s) - start )); echo "   done in $$secs s"; \
	echo "$*,$(PROFILE),$$secs,$$(date -u +%FT%TZ)" >> $(@D)/timings.csv

$(notdir $(basename $(NOTEBOOKS))): %: executed/$(PROFILE)/%.ipynb

# Notebook 06's one-off slow step (train the SMILES prior, canonicalize its training set) runs
# first, outside the notebook's own time; cached under data/cache, so a no-op once done.
chem-prior: $(ENV_STAMP) ## train (or reuse) the chemistry prior of PROFILE (run before notebook 06)
	$(PY) -m mdkl.chem prior --profile $(PROFILE)

executed/$(PROFILE)/06_chemistry.ipynb: | chem-prior chem-calibrate-v2

# Calibration of the reward analogue on REINVENT-only runs (after the prior; 12 runs, each cached:
# ~8 min once on 2 cores). Writes data/results/chem_<profile>_calibration_runs.csv; writes the frozen
# reward configuration data/chem_reward_<profile>.json only if it is missing (a committed one is
# checked against the runs, never overwritten); quick reuses cpu's. Notebook 06 shows v1 from its committed runs.
chem-calibrate: chem-prior ## calibrate the chemistry reward analogue on the prior of PROFILE (REINVENT only; run before notebook 06)
	$(PY) -m mdkl.chem.calibration --profile $(PROFILE)

# Calibration of the second reward analogue (v2: the paper's geometric mean, a potency that binds; 10 REINVENT-only
# runs, ~6 min once on 2 cores). Freezes data/chem_reward_<profile>_v2.json only if missing (a committed one is checked).
# `make all` runs it before notebook 06.
chem-calibrate-v2: chem-prior ## calibrate the v2 chemistry reward analogue (REINVENT only; never overwrites a frozen file)
	$(PY) -m mdkl.chem.calibration_v2 --profile $(PROFILE)

# The training notebooks' checked claims must also hold on another numeric path: the CPU's native
# kernels (MDKL_NATIVE_KERNELS=1, pin variables removed) are another path on every machine and the
# closest stand-in for another CPU kind; their runs are cached under their own keys.
TRAINING_NOTEBOOKS := $(filter notebooks/05_% notebooks/06_% notebooks/07_%,$(NOTEBOOKS))
NATIVE := env -u ATEN_CPU_CAPABILITY -u MKL_CBWR -u ONEDNN_MAX_CPU_ISA MDKL_NATIVE_KERNELS=1

test: $(ENV_STAMP) ## unit tests (pytest) + notebook validation (nbval, quick profile; 05-07 also on native kernels)
	MDKL_PROFILE=quick $(PY) -m pytest tests $(NOTEBOOKS) -q -rs --durations=15 \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg \
	  --nbval-cell-timeout $(NB_TIMEOUT)
	@echo "== checked claims of $(notdir $(TRAINING_NOTEBOOKS)) on the CPU's native kernels (another numeric path)"
	$(NATIVE) MDKL_PROFILE=quick $(PY) -m pytest $(TRAINING_NOTEBOOKS) -q -rs --durations=5 \
	  --nbval-lax --nbval-current-env --nbval-sanitize-with nbval_sanitize.cfg \
	  --nbval-cell-timeout $(NB_TIMEOUT)

nbval-native: $(ENV_STAMP) ## nbval of the training notebooks (05-07) on the CPU's native kernels only
	$(NATIVE) MDKL_PROFILE=quick $(PY) -m pytest $(TRAINING_NOTEBOOKS) -q --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with nbval_sanitize.cfg --nbval-cell-timeout $(NB_TIMEOUT)

unit: $(ENV_STAMP) ## unit tests only
	$(PY) -m pytest tests -q

nbval: $(ENV_STAMP) ## notebook validation only (quick profile)
	MDKL_PROFILE=quick $(PY) -m pytest $(NOTEBOOKS) -q --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with nbval_sanitize.cfg --nbval-cell-timeout $(NB_TIMEOUT)

publish: ## after `make all` (cpu): copy executed notebooks back into notebooks/ (outputs for readers)
	@test "$(PROFILE)" = cpu || { echo "publish only the default profile (PROFILE=cpu)"; exit 1; }
	$(PY) -m mdkl.runtime publish executed/cpu notebooks

readme: $(ENV_STAMP) ## regenerate README.md's results table from the committed notebooks, data/results/ and data/timings.csv
	$(PY) -m mdkl.checks.readme

onetwo-paths: $(ENV_STAMP) ## notebook 05's grid on the native kernels: its headline verdicts beside the committed ones, and one-seed swaps (~21 min)
	$(NATIVE) $(PY) -m mdkl.checks.onetwo_paths

naming-paths: $(ENV_STAMP) ## notebook 07's naming-task Table 1 on the native kernels: its verdicts beside the committed ones (~13 min)
	$(NATIVE) $(PY) -m mdkl.checks.naming_paths

bench: $(ENV_STAMP) ## run the benchmark scripts under benchmarks/
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b; done

# One short script: each trainer's training step on the GPU against the CPU (same inputs, stated
# tolerances), throughput and peak GPU memory, the TRL extension under accelerate on one GPU.
# Without a GPU it says so and exits 0. GPU_CHECK_ARGS, e.g. --quick or --only toy,small_lm.
GPU_CHECK_ARGS ?=
gpu-check: $(ENV_STAMP) ## check every trainer on the GPU against the CPU (writes data/results/gpu_check.json)
	TQDM_DISABLE=1 $(PY) -m mdkl.checks.gpu $(GPU_CHECK_ARGS)

# Where a difference comes from: the CPU and kernel path, the path the committed results were computed
# on, and this machine's claim lines and result CSVs beside the committed ones (after `make all`).
check-machine: $(ENV_STAMP) ## print this machine's numeric path and compare its results with the committed ones
	$(PY) -m mdkl.reproduce --profile $(PROFILE)

lab: $(ENV_STAMP) ## JupyterLab on the notebooks, under PROFILE (the notebooks read $$MDKL_PROFILE)
	MDKL_PROFILE=$(PROFILE) $(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean-cache: ## delete cached results (data/cache) and executed notebooks
	rm -rf data/cache executed

clean: clean-cache ## also delete the environment
	rm -rf $(VENV)
