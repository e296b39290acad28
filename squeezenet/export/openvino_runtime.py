"""Every OpenVINO compile of ours, and the signal-stack repair it needs (docs/robustness.md).

A leaf module: ``exporting`` (the OpenVINO check after export) and ``engine`` (the OpenVINO
engines) both compile through ``compile_openvino``.
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading


def compile_openvino(path: str | os.PathLike, config: dict):
    """``openvino.Core().compile_model`` on the CPU; every OpenVINO compile of ours goes through
    here, because the compile can leave a soon-freed signal stack on the main thread."""
    import openvino as ov
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    reset_main_thread_alt_stack()
    return compiled


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


_ALT_STACK: ctypes.Array | None = None


def reset_main_thread_alt_stack() -> int | None:
    """Give the main thread an alternate signal stack that is never freed; returns its address.

    OpenVINO's CPU plugin installs its own alternate stack on the calling thread while it
    compiles a model and, when those calls nest, leaves one on it that it later unmaps; the next
    signal handled on that stack (SIGCHLD when a child process exits) killed the process with
    SIGSEGV (docs/robustness.md). Called by ``compile_openvino``. Linux, main thread only.
    """
    global _ALT_STACK
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    if _ALT_STACK is None:
        _ALT_STACK = ctypes.create_string_buffer(64 * 1024)
    stack = _StackT(ctypes.addressof(_ALT_STACK), 0, ctypes.sizeof(_ALT_STACK))
    if ctypes.CDLL(None, use_errno=True).sigaltstack(ctypes.byref(stack), None) != 0:
        return None
    return stack.ss_sp


def current_alt_stack() -> int | None:
    """Address of this thread's alternate signal stack (None if disabled or not Linux)."""
    if sys.platform != "linux":
        return None
    old = _StackT()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(old))
    return None if old.ss_flags & 2 else old.ss_sp  # 2 = SS_DISABLE
