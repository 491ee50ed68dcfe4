"""Runtime plumbing (mdkl.runtime): profiles, the atomic cache, claims, publishing notebooks."""

import importlib
import os
import sys
from dataclasses import dataclass

import nbformat
import pytest

from mdkl import machine, runtime
from mdkl.runtime import (
    atomic_write_bytes,
    by_profile,
    cache_key,
    cached,
    cached_dir,
    claim,
    publish_notebooks,
    resolve_profile,
)


# ----------------------------------------------------------------------------------------------
# profiles
# ----------------------------------------------------------------------------------------------
def test_resolve_profile_reads_env_and_defaults(monkeypatch):
    monkeypatch.delenv("MDKL_PROFILE", raising=False)
    assert resolve_profile(None) == "cpu"
    assert resolve_profile("") == "cpu"
    monkeypatch.setenv("MDKL_PROFILE", "quick")
    assert resolve_profile(None) == "quick"
    assert resolve_profile("paper") == "paper"  # an explicit name wins over the env var
    assert resolve_profile(" QUICK ") == "quick"
    monkeypatch.setenv("MDKL_PROFILE", "")
    assert resolve_profile(None) == "cpu"


def test_resolve_profile_unknown_names_the_valid_ones(monkeypatch):
    with pytest.raises(ValueError, match="unknown profile 'fast'.*quick, cpu, paper"):
        resolve_profile("fast")
    monkeypatch.setenv("MDKL_PROFILE", "gpu")
    with pytest.raises(ValueError, match="quick, cpu, paper"):
        resolve_profile(None)


def test_by_profile():
    assert by_profile("quick", quick=1, cpu=2, paper=3) == 1
    assert by_profile("cpu", quick=1, cpu=2, paper=3) == 2
    assert by_profile("paper", quick=1, cpu=2, paper=3) == 3
    assert by_profile("paper", quick=1, cpu=2) == 2  # paper falls back to cpu
    with pytest.raises(KeyError, match="no size given for profile 'quick'"):
        by_profile("quick", cpu=2)
    with pytest.raises(ValueError, match="unknown profile"):
        by_profile("huge", quick=1, cpu=2)


# ----------------------------------------------------------------------------------------------
# cache
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cfg:
    n: int = 3
    lr: float = 0.1


class _Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"calls": self.calls}


def _files(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_cached_reuses_and_recomputes_on_config_change(tmp_path):
    f = _Counter()
    assert cached("res", _Cfg(), f, cache_dir=tmp_path) == {"calls": 1}
    assert cached("res", _Cfg(), f, cache_dir=tmp_path) == {"calls": 1}  # reused
    assert f.calls == 1
    assert cached("res", _Cfg(lr=0.10000000000000002), f, cache_dir=tmp_path) == {"calls": 2}
    assert cached("res", _Cfg(n=4), f, cache_dir=tmp_path) == {"calls": 3}
    assert cached("res", {"n": 3, "lr": 0.1}, f, cache_dir=tmp_path) == {"calls": 4}  # not a _Cfg
    assert cached("res", _Cfg(), f, cache_dir=tmp_path) == {"calls": 1}  # first entry still there
    assert len(_files(tmp_path)) == 4 and all(n.startswith("res-") for n in _files(tmp_path))


def test_cached_force_recomputes_and_overwrites(tmp_path):
    f = _Counter()
    cached("res", _Cfg(), f, cache_dir=tmp_path)
    assert cached("res", _Cfg(), f, cache_dir=tmp_path, force=True) == {"calls": 2}
    assert cached("res", _Cfg(), f, cache_dir=tmp_path) == {"calls": 2}
    assert len(_files(tmp_path)) == 1


def test_cached_recomputes_when_code_changes(tmp_path, monkeypatch):
    mod_dir = tmp_path / "src"
    mod_dir.mkdir()
    src = mod_dir / "mdkl_test_dep.py"
    src.write_text("def step(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    mod = importlib.import_module("mdkl_test_dep")
    cache = tmp_path / "cache"
    f = _Counter()
    cached("res", _Cfg(), f, code=[mod.step], cache_dir=cache)
    cached("res", _Cfg(), f, code=[mod.step], cache_dir=cache)
    assert f.calls == 1
    src.write_text('"""dep"""\n\n\ndef step(x):\n    return x + 2\n')
    mod = importlib.reload(mod)
    cached("res", _Cfg(), f, code=[mod.step], cache_dir=cache)
    assert f.calls == 2
    cached("res", _Cfg(), f, code=[mod], cache_dir=cache)  # a whole module works as well
    cached("res", _Cfg(), f, code=[mod], cache_dir=cache)
    assert f.calls == 3
    # editing another function of the module: module-keyed results recompute, step-keyed do not
    src.write_text('"""dep"""\n\n\ndef step(x):\n    return x + 2\n\n\ndef other():\n    pass\n')
    mod = importlib.reload(mod)
    cached("res", _Cfg(), f, code=[mod.step], cache_dir=cache)
    assert f.calls == 3
    cached("res", _Cfg(), f, code=[mod], cache_dir=cache)
    assert f.calls == 4
    sys.modules.pop("mdkl_test_dep", None)


def test_cache_key_depends_on_code_of_mdkl_modules():
    from mdkl import kl, targets

    assert cache_key(_Cfg(), [targets]) != cache_key(_Cfg(), [kl])
    assert cache_key(_Cfg(), [targets]) == cache_key(_Cfg(), [targets])


def _copy_package(dst):
    """A copy of this checkout's mdkl package under ``dst`` (the real files are never edited)."""
    import shutil
    from pathlib import Path

    import mdkl

    shutil.copytree(Path(mdkl.__file__).parent, dst / "mdkl", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _key_in_subprocess(root, code_expr, imports="import mdkl.chem.reinvent as chem"):
    """``cache_key`` of a fixed config and ``code=[<code_expr>]`` computed by a fresh interpreter
    that imports mdkl from ``root``."""
    import subprocess

    prog = (f"{imports}\nfrom mdkl.runtime import cache_key\n"
            f"print(cache_key({{'n': 3, 'lr': 0.1}}, [{code_expr}]))")
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "random"}
    out = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, check=True,
                         cwd=str(root))
    return out.stdout.strip()


def test_editing_mara_changes_a_chemistry_run_key(tmp_path):
    # notebook 06 keys its RL runs by chem.run_rl alone: mdkl.mara comes in through chem's imports
    a, b = _copy_package(tmp_path / "a"), _copy_package(tmp_path / "b")
    mara_b = b / "mdkl" / "mara.py"
    src = mara_b.read_text()
    assert "def mara_rewards(" in src
    mara_b.write_text(src.replace("def mara_rewards(", "def mara_rewards(  # edited\n", 1))
    key_a = _key_in_subprocess(a, "chem.run_rl")
    assert key_a == _key_in_subprocess(a, "chem.run_rl")  # same code, same key
    assert _key_in_subprocess(b, "chem.run_rl") != key_a
    # a checkout at another path with the same code gives the same key
    assert _key_in_subprocess(_copy_package(tmp_path / "c"), "chem.run_rl") == key_a


def test_editing_plotting_keeps_lm_run_keys(tmp_path):
    a, b = _copy_package(tmp_path / "a"), _copy_package(tmp_path / "b")
    plot_b = b / "mdkl" / "plotting.py"
    plot_b.write_text(plot_b.read_text() + "\n\ndef new_figure_helper():\n    return 1\n")
    assert "mdkl.plotting" not in runtime.module_dependencies("mdkl.lm")
    for expr in ("'mdkl.lm'", "'mdkl.tasks.onetwo'"):  # by name: the subprocess imports nothing of mdkl.lm
        assert _key_in_subprocess(a, expr, "") == _key_in_subprocess(b, expr, "")
    assert _key_in_subprocess(a, "'mdkl.plotting'", "") != _key_in_subprocess(b, "'mdkl.plotting'", "")


def test_code_version_reads_what_is_on_disk(monkeypatch):
    from mdkl import lm
    from mdkl.chem import reinvent as chem

    before_chem, before_lm = runtime.code_version(chem.run_rl), runtime.code_version(lm)
    real = runtime._read_source
    monkeypatch.setattr(runtime, "_read_source",
                        lambda name: real(name) + ("\n# edited\n" if name == "mdkl.mara" else ""))
    assert runtime.code_version(chem.run_rl) != before_chem
    assert runtime.code_version(lm) != before_lm
    monkeypatch.setattr(runtime, "_read_source",
                        lambda name: real(name) + ("\n# edited\n" if name == "mdkl.plotting" else ""))
    assert runtime.code_version(lm) == before_lm


def _fake_package(root, files):
    pkg = root / "mdkl"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text('__version__ = "9.9"\n')
    for name, text in files.items():
        path = pkg / f"{name.replace('.', '/')}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_module_dependencies_transitive_function_level_and_relative(tmp_path):
    import subprocess

    root = _fake_package(tmp_path, {
        "a": "import os\nfrom mdkl import b, c as see\n",
        "b": "def f():\n    from mdkl.d import g  # function-level import\n    return g\n",
        "c": "import numpy as np\n",
        "d": "if True:\n    from . import e\n",
        "e": "from .f import h\n",
        "f": "def h():\n    import mdkl.g as gg\n    return gg\n",
        "g": "from mdkl import __version__\n",
        "unrelated": "import mdkl.a\n",
        "sub/__init__": "from . import inner\nfrom ..c import x\n",
        "sub/inner": "from .. import c\n",
    })
    prog = ("import sys, mdkl\nfrom mdkl.runtime import module_dependencies as md\n"
            "print(md('mdkl.a'))\nprint(md('mdkl.sub'))\nprint(md('mdkl.g'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('mdkl')))\n")
    # the fake package has no runtime module: run mdkl.runtime's code against it
    (root / "mdkl" / "runtime.py").write_text(runtime.__loader__.get_source("mdkl.runtime"))
    (root / "mdkl" / "machine.py").write_text(machine.__loader__.get_source("mdkl.machine"))  # runtime imports it
    run = subprocess.run([sys.executable, "-c", prog], env={**os.environ, "PYTHONPATH": str(root)}, cwd=str(root),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    out = run.stdout.splitlines()
    assert out[0] == str(["mdkl.a", "mdkl.b", "mdkl.c", "mdkl.d", "mdkl.e", "mdkl.f", "mdkl.g"])
    assert out[1] == str(["mdkl.c", "mdkl.sub", "mdkl.sub.inner"])
    assert out[2] == str(["mdkl.g"])  # __version__ is a name, not a module
    assert out[3] == str(["mdkl", "mdkl.machine", "mdkl.runtime"])  # nothing imported to find them


def test_module_dependencies_follow_the_subpackages():
    # a package's __init__ that re-exports its submodules pulls them in; submodule imports name the submodule
    lm_deps = runtime.module_dependencies("mdkl.lm")
    assert {"mdkl.lm", "mdkl.lm.trainer", "mdkl.lm.rollout", "mdkl.lm.smalllm", "mdkl.lm.models", "mdkl.shaping",
            "mdkl.kl", "mdkl.runtime"} <= set(lm_deps)
    assert not {m for m in lm_deps if m.startswith(("mdkl.tasks", "mdkl.chem", "mdkl.lm.diagnose"))}
    assert runtime.module_dependencies("mdkl.lm.trainer") == sorted(set(lm_deps) - {"mdkl.lm"})
    assert {"mdkl.tasks.onetwo_runs", "mdkl.lm.trainer", "mdkl.lm.smalllm"} <= set(
        runtime.module_dependencies("mdkl.tasks.onetwo_runs"))
    assert runtime.module_dependencies("mdkl.chem.stats") == ["mdkl.chem.stats", "mdkl.stats", "mdkl.stats.paired",
                                                              "mdkl.stats.tables", "mdkl.stats.verdicts"]

    def scores():
        from mdkl.chem import reward

        return reward.Scorer

    def trains():
        from mdkl.lm import trainer

        return trainer.train

    # `from mdkl.chem import reward` names the package too (its __init__ runs; it imports nothing)
    assert runtime.module_dependencies(scores) == sorted({"mdkl.chem", "mdkl.chem.aggregation", "mdkl.chem.reward",
                                                          "mdkl.chem.smiles"}
                                                         | set(runtime.module_dependencies("mdkl.runtime")))
    assert runtime.module_dependencies(trains) == lm_deps  # the package mdkl.lm and the trainer's closure
    from mdkl import lm

    assert runtime.module_dependencies(lm.train) == runtime.module_dependencies("mdkl.lm.trainer")
    assert runtime.module_dependencies(lm) == lm_deps


def test_module_dependencies_of_functions_defined_outside_mdkl():
    import mdkl
    from mdkl.chem import reinvent as chem
    from mdkl.targets import reverse_kl_target

    def helper():
        return reverse_kl_target([0.5, 0.5], [0.0, 1.0], 1.0)

    def compute():
        return chem.run_rl, helper(), mdkl.kl.k1

    def imports_inside():
        from mdkl.exact import maximize_exact_objective

        return maximize_exact_objective

    deps = runtime.module_dependencies(compute)
    assert {"mdkl.chem.reinvent", "mdkl.chem.prior", "mdkl.mara", "mdkl.targets", "mdkl.kl"} <= set(deps)
    # the RL loop takes any scorer: the rewards enter a run's key through the scorer the caller names
    assert "mdkl.chem.reward" not in deps
    assert "mdkl.lm" not in deps and "mdkl.plotting" not in deps
    assert runtime.module_dependencies(helper) == ["mdkl.targets"]
    assert runtime.module_dependencies(imports_inside) == ["mdkl.exact", "mdkl.targets"]
    assert runtime.module_dependencies(reverse_kl_target) == ["mdkl.targets"]
    assert runtime.module_dependencies(chem.RLConfig) == runtime.module_dependencies(chem)
    # the function's own source is in the key, the mdkl module alone is not
    assert runtime.code_version(helper) != runtime.code_version("mdkl.targets")
    with pytest.raises(ValueError, match="not an mdkl module"):
        runtime.module_dependencies("mdkl.nonexistent")


def test_code_version_is_deterministic_across_processes():
    import subprocess

    from mdkl.chem import reinvent as chem

    root = runtime._mdkl_dir().parent
    prog = ("import mdkl.chem.reinvent as chem, mdkl.lm as lm\nfrom mdkl.runtime import code_version\n"
            "print(code_version(chem.run_rl), code_version(lm.train, 'mdkl.plotting'))")
    outs = {subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2)}
    assert len(outs) == 1
    from mdkl import lm

    assert outs.pop().split() == [runtime.code_version(chem.run_rl), runtime.code_version(lm.train, "mdkl.plotting")]


def test_cached_exception_leaves_no_file(tmp_path):
    def boom():
        raise RuntimeError("compute failed")

    with pytest.raises(RuntimeError, match="compute failed"):
        cached("res", _Cfg(), boom, cache_dir=tmp_path)
    assert _files(tmp_path) == []


def test_atomic_write_bytes_leaves_no_temp_files(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "out.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert _files(target.parent) == ["out.bin"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runtime.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"third")
    assert target.read_bytes() == b"second"  # previous state kept
    assert _files(target.parent) == ["out.bin"]  # temp file removed


def test_cached_dir_builds_reuses_and_cleans_up_interrupted_builds(tmp_path):
    calls = []

    def build(d):
        calls.append(d)
        (d / "weights.bin").write_bytes(b"w")

    final = cached_dir("model", _Cfg(), build, cache_dir=tmp_path)
    assert (final / "weights.bin").read_bytes() == b"w"
    assert cached_dir("model", _Cfg(), build, cache_dir=tmp_path) == final and len(calls) == 1
    assert calls[0] != final  # built elsewhere, then renamed into place
    assert _files(tmp_path) == [final.name]

    def interrupted(d):
        (d / "half.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_dir("model", _Cfg(n=9), interrupted, cache_dir=tmp_path)
    assert _files(tmp_path) == [final.name]  # nothing under the new final name, no temp folder

    def rebuilt(d):
        (d / "weights.bin").write_bytes(b"new")

    again = cached_dir("model", _Cfg(), rebuilt, cache_dir=tmp_path, force=True)
    assert again == final and (final / "weights.bin").read_bytes() == b"new"
    assert _files(tmp_path) == [final.name]


# ----------------------------------------------------------------------------------------------
# claims
# ----------------------------------------------------------------------------------------------
def test_claim_output_format(capsys):
    assert claim("G_beta is unimodal at small beta", True, "ratio 3.2e12") is True
    assert claim("MARA is uniform", False) is False
    assert claim("numpy bools work", __import__("numpy").bool_(True)) is True
    out = capsys.readouterr().out
    assert out == ("[holds] G_beta is unimodal at small beta\n"
                   "    measured: ratio 3.2e12\n"
                   "[FAILS] MARA is uniform\n"
                   "[holds] numpy bools work\n")


# ----------------------------------------------------------------------------------------------
# publishing
# ----------------------------------------------------------------------------------------------
def _executed_notebook():
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("profile = None\nseed = 0\nforce = False",
                                       metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('profile = "cpu"',
                                         metadata={"tags": ["injected-parameters"], "papermill": {}})
    work = nbformat.v4.new_code_cell("print(1)", metadata={"papermill": {"duration": 0.1},
                                                           "execution": {"iopub.status.busy": "x"}})
    work.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells = [nbformat.v4.new_markdown_cell("# title"), params, injected, work]
    nb.metadata["papermill"] = {"parameters": {"profile": "cpu"}}
    return nb


def test_publish_notebooks_drops_injected_parameters(tmp_path):
    src, dst = tmp_path / "executed", tmp_path / "notebooks"
    src.mkdir()
    dst.mkdir()
    nbformat.write(_executed_notebook(), src / "01_topic.ipynb")
    nbformat.write(_executed_notebook(), src / "scratch.ipynb")  # not NN_*: not published
    out = publish_notebooks(src, dst)
    assert [p.name for p in out] == ["01_topic.ipynb"] and _files(dst) == ["01_topic.ipynb"]
    nb = nbformat.read(dst / "01_topic.ipynb", as_version=4)
    assert [c.source for c in nb.cells] == ["# title", "profile = None\nseed = 0\nforce = False",
                                            "print(1)"]
    assert nb.cells[1].metadata["tags"] == ["parameters"]
    assert nb.cells[2].outputs[0]["text"] == "1\n"  # outputs kept for readers
    assert "papermill" not in nb.metadata
    assert all("papermill" not in c.metadata and "execution" not in c.metadata for c in nb.cells)
    assert os.stat(dst / "01_topic.ipynb").st_mtime == os.stat(src / "01_topic.ipynb").st_mtime


def test_seed_everything_is_reproducible():
    import numpy as np
    import torch

    g1 = runtime.seed_everything(5)
    a = (np.random.rand(), torch.rand(1).item(), g1.random())
    g2 = runtime.seed_everything(5)
    assert (np.random.rand(), torch.rand(1).item(), g2.random()) == a


def test_progress_bar_hides_under_tqdm_disable(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert runtime.progress_bar(range(3), show=True).disable
    monkeypatch.delenv("TQDM_DISABLE")
    assert not runtime.progress_bar(range(3), show=True).disable
    assert runtime.progress_bar(range(3), show=False).disable
