"""Runtime plumbing (mdkl.runtime): profiles, the atomic cache, claims, publishing notebooks."""

import importlib
import os
import sys
from dataclasses import dataclass

import nbformat
import pytest

from mdkl import runtime
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
