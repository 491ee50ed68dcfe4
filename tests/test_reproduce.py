"""The numeric path in cache keys (mdkl.machine) and ``make check-machine`` (mdkl.reproduce): claim
lines read from executed notebooks, committed vs rewritten result CSVs, the provenance record."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from mdkl import machine, reproduce, runtime


def _nb(path, lines):
    cells = [{"cell_type": "code", "source": "", "metadata": {}, "execution_count": 1,
              "outputs": [{"output_type": "stream", "name": "stdout", "text": text}]} for text in lines]
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_claim_lines_and_their_comparison(tmp_path):
    a = _nb(tmp_path / "a.ipynb", ["[holds] one\n    measured: 1\n", "[FAILS] two\nnoise [holds] not a claim\n",
                                   "[not tested (MARA inactive)] four\n[other] not a verdict\n"])
    b = _nb(tmp_path / "b.ipynb", ["[holds] one\n", "[holds] two\n[holds] three\n"])
    assert reproduce.claim_lines(a) == {"one": "holds", "two": "FAILS", "four": "not tested (MARA inactive)"}
    rows = {r["claim"]: r for r in reproduce.compare_claims(a, b)}
    assert rows["one"]["same"] and not rows["two"]["same"] and rows["three"]["committed"] is None


def test_compare_csv_reports_numbers_text_and_layout(tmp_path):
    committed = pd.DataFrame({"x": [1.0, 2.0], "verdict": ["holds", "FAILS"], "seconds": [3.0, 4.0]}).to_csv(index=False)
    f = tmp_path / "r.csv"
    f.write_text(committed)
    assert reproduce.compare_csv(f, committed) is None  # unchanged
    pd.DataFrame({"x": [1.0, 2.2], "verdict": ["holds", "holds"], "seconds": [9.0, 9.0]}).to_csv(f, index=False)
    row = reproduce.compare_csv(f, committed)
    assert row["max_rel_diff"] == pytest.approx(0.2 / 2.2) and row["columns"] == "x" and row["text_cells_differ"] == 1
    pd.DataFrame({"y": [1.0]}).to_csv(f, index=False)
    assert reproduce.compare_csv(f, committed)["columns"] == "layout changed"


def test_numeric_path_names_vendor_and_kernel_path(monkeypatch):
    p = machine.numeric_path()
    assert machine.cpu_model()["vendor"] in p and ("pinned-" in p or "native-" in p) and "torch" in p
    key = runtime.cache_key({"a": 1})
    monkeypatch.setattr(runtime, "numeric_path", lambda: "x86_64 AuthenticAMD native-AVX512 torch 0")
    assert runtime.cache_key({"a": 1}) != key  # another path: another key, never a reused result
    assert runtime.cache_key({"a": 1}, numeric=False) == runtime.cache_key({"a": 1}, numeric=False)


def test_cache_keys_differ_between_kernel_paths():
    code = ("import mdkl; from mdkl import runtime; import torch; torch.zeros(1).sum(); "
            "print(runtime.numeric_path()); print(runtime.cache_key({'a': 1}))")
    env_pinned = {k: v for k, v in __import__("os").environ.items() if k != "MDKL_NATIVE_KERNELS"}
    env_native = {k: v for k, v in env_pinned.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    pinned = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env_pinned, check=True)
    native = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**env_native, "MDKL_NATIVE_KERNELS": "1"}, check=True)
    assert "pinned-" in pinned.stdout and "native-" in native.stdout
    assert pinned.stdout.splitlines()[1] != native.stdout.splitlines()[1]


def test_write_csv_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(runtime, "PROVENANCE", tmp_path / "provenance.json")
    runtime.write_csv(pd.DataFrame({"a": [1]}), "thing_cpu")
    runtime.write_csv(pd.DataFrame({"a": [1]}), "thing_quick")
    rec = json.loads((tmp_path / "provenance.json").read_text())
    assert set(rec) == {"thing_cpu.csv"} and rec["thing_cpu.csv"]["numeric_path"] == machine.numeric_path()


def test_check_machine_runs(capsys):
    assert reproduce.main(["--profile", "quick"]) == 0
    out = capsys.readouterr().out
    assert "numeric path:" in out and "claim line(s) differ" in out
