"""The pinned numeric kernel path (``mdkl.NUMERIC_KERNEL_ENV``) and fixed thread counts: what makes
seeded runs repeat bit for bit on every x86-64 machine, whatever instruction sets its CPU has."""

import os
import platform
import subprocess
import sys

import pytest
import torch

import mdkl
from mdkl import runtime

X86 = platform.machine().lower() in ("x86_64", "amd64")


def _run(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in mdkl.NUMERIC_KERNEL_ENV}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(not X86, reason="the AVX2 pin applies to x86-64 only")
def test_import_pins_avx2_before_any_torch_operation():
    out = _run("import torch, mdkl; from mdkl import runtime; k = runtime.numeric_kernels(); "
               "print(k['aten_capability'], k['MKL_CBWR'], k['ONEDNN_MAX_CPU_ISA'], k['pinned'])")
    assert out == "AVX2 AVX2 AVX2 True"


@pytest.mark.skipif(not X86, reason="the AVX2 pin applies to x86-64 only")
def test_user_override_is_kept_and_reported():
    out = _run("import mdkl; from mdkl import runtime; k = runtime.numeric_kernels(); "
               "print(k['ATEN_CPU_CAPABILITY'], k['pinned'])", ATEN_CPU_CAPABILITY="default")
    assert out == "default False"


@pytest.mark.skipif(not X86, reason="the AVX2 pin applies to x86-64 only")
def test_torch_used_before_mdkl_warns_with_the_fix():
    code = ("import warnings, torch; x = torch.ones(3) @ torch.ones(3); import mdkl; from mdkl import runtime\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always'); runtime.seed_everything(0)\n"
            "print(any('Import mdkl before' in str(m.message) for m in w))")
    cap = _run("import torch; print(torch.backends.cpu.get_cpu_capability())")
    out = _run(code)
    assert out == ("False" if cap == "AVX2" else "True")  # an AVX2-only CPU is pinned anyway


def test_this_process_is_pinned():
    assert runtime.numeric_kernels()["pinned"]  # conftest imports mdkl before torch computes


def test_fixed_threads_sets_and_restores():
    before = torch.get_num_threads()
    with runtime.fixed_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        runtime.fixed_threads(0)

