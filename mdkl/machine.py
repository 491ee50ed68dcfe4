"""The machine a run computes on: CPU vendor and model, the kernel path in force (mdkl's pinned
AVX2 path or the CPU's native kernels, ``MDKL_NATIVE_KERNELS=1``) and the numeric path they make.

Seeded runs repeat bit for bit on one numeric path. Across CPU vendors even the pinned path differs
in the last bits (MKL's conditional numerical reproducibility is an Intel guarantee; AMD CPUs take
other MKL code paths), and training grows those bits into different runs: what must agree on every
x86-64 machine is the verdicts, not the bits. Cache keys include :func:`numeric_path`
(:func:`mdkl.runtime.cache_key`); ``make check-machine`` (:mod:`mdkl.reproduce`) prints it and compares
a machine's results with the committed ones.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["numeric_kernels", "cpu_model", "numeric_path", "check_numeric_kernels"]


def numeric_kernels() -> dict[str, Any]:
    """The CPU kernel path in force: ATen's instruction set (``torch.backends.cpu``), the
    ``ATEN_CPU_CAPABILITY`` / ``MKL_CBWR`` / ``ONEDNN_MAX_CPU_ISA`` variables, torch's intra-op
    thread count and whether it matches the path ``mdkl`` pins on x86-64
    (:data:`mdkl.NUMERIC_KERNEL_ENV`: AVX2, so seeded runs repeat bit for bit on every machine)."""
    import torch

    from mdkl import NUMERIC_KERNEL_ENV

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    cap = torch.backends.cpu.get_cpu_capability()
    env = {k: os.environ.get(k) for k in NUMERIC_KERNEL_ENV}
    pinned = (not x86) or (cap == "AVX2" and all(os.environ.get(k) == v for k, v in NUMERIC_KERNEL_ENV.items()))
    return {"aten_capability": cap, **env, "torch_threads": torch.get_num_threads(), "pinned": pinned}


@functools.lru_cache(maxsize=1)
def cpu_model() -> dict[str, str]:
    """The CPU's vendor and model name as the operating system reports them (``/proc/cpuinfo`` on
    Linux, ``platform.processor()`` elsewhere): e.g. ``{"vendor": "GenuineIntel", "model": "Intel(R)
    Xeon(R) Processor"}``. Unknown fields read ``"unknown"``."""
    vendor, model = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key == "model name" and not model:
                model = value.strip()
            if vendor and model:
                break
    except OSError:
        pass
    return {"vendor": vendor or platform.processor() or "unknown", "model": model or platform.processor() or "unknown",
            "machine": platform.machine().lower() or "unknown"}


def numeric_path() -> str:
    """One string naming the numeric path a seeded CPU run takes here, e.g.
    ``"x86_64 GenuineIntel pinned-AVX2 torch 2.13.0"`` or ``"x86_64 AuthenticAMD native-AVX512 torch
    2.13.0"``: the architecture, the CPU vendor, whether mdkl's kernel pin is in force (and the ATen
    capability it runs) and the torch version. Runs on the same path repeat bit for bit; across
    paths only their verdicts are meant to agree. The CPU vendor is part of it even under the pin:
    MKL's conditional numerical reproducibility (``MKL_CBWR``) is an Intel guarantee, and AMD CPUs
    take other MKL code paths, so pinned runs still differ in their last bits across vendors.
    :func:`mdkl.runtime.cache_key` includes it, so switching paths recomputes instead of reusing a result."""
    import torch

    k = numeric_kernels()
    cpu = cpu_model()
    return (f"{cpu['machine']} {cpu['vendor']} {'pinned' if k['pinned'] else 'native'}-{k['aten_capability']} "
            f"torch {torch.__version__}")


def check_numeric_kernels() -> None:
    """Warn (once per call site) when the x86-64 kernel path is not mdkl's pinned AVX2 path: then
    seeded results may differ in their last bits from the committed ones, and training amplifies
    that. The usual cause is a torch operation that ran before ``import mdkl``."""
    k = numeric_kernels()
    if not k["pinned"]:
        import warnings

        warnings.warn(f"numeric kernels not pinned (ATen {k['aten_capability']}, "
                      f"ATEN_CPU_CAPABILITY={k['ATEN_CPU_CAPABILITY']}): seeded results may differ from the "
                      f"committed ones. Import mdkl before running any torch operation, or export "
                      f"ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2", RuntimeWarning,
                      stacklevel=2)
