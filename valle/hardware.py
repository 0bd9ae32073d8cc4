"""What the machine can do, asked once: native bfloat16 on the CPU, and the SIMD flags that decide
which kernels CTranslate2 and oneDNN pick (so results can be tied to the CPU that made them)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

# Flags Linux reports for CPUs with bf16 dot-product instructions (AVX-512 BF16, AMX, Arm BF16).
_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}
# SIMD families whose presence changes the int8 / bf16 kernels a library runs
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "neon", "asimd")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)


def cpu_simd_flags() -> list[str]:
    """The CPU's flags among :data:`SIMD_FLAGS` (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    return [f for f in SIMD_FLAGS if f in _cpu_flags()]


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively, so bf16 autocast on CPU is not an emulation.

    Read from ``/proc/cpuinfo`` (Linux); False elsewhere, which keeps CPUs without the instructions
    (where oneDNN would emulate bf16, several times slower) on float32.
    """
    return bool(_cpu_flags() & _BF16_FLAGS) and torch.backends.mkldnn.is_available()


def bf16_autocast_ok(device: torch.device) -> bool:
    """bfloat16 autocast is worth allowing on CUDA and on CPUs with native bf16."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
