"""One probe of the CPU's instruction sets, read once: figures and defaults depend on it.

Machines that run this project differ (AVX2 only; AVX-512 with VNNI and BF16; AMX), and
OpenVINO, oneDNN and our own defaults behave differently on each.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name, to print beside every figure measured on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def has_vnni() -> bool:
    """An int8 dot-product instruction set (AVX512-VNNI, AVX-VNNI, AMX-INT8)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def has_native_bf16() -> bool:
    """bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def describe() -> str:
    """``"<model name> (AVX2, AVX-512, VNNI, BF16)"``: what a benchmark table should name."""
    flags = cpu_flags()
    feats = [name for name, present in (("AVX2", "avx2" in flags), ("AVX-512", "avx512f" in flags),
                                        ("VNNI", has_vnni()), ("BF16", has_native_bf16()),
                                        ("AMX", "amx_tile" in flags)) if present]
    return f"{cpu_name()} ({', '.join(feats) or 'no AVX2'})"
