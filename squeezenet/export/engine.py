"""Inference engines behind ``eval`` / ``predict``: the same weights through PyTorch or ONNX
Runtime (fp32 or static int8), with the choice visible.

``auto`` exports the model, times each available fp32 path on this machine for a few batches
and keeps the fastest. int8 paths are never chosen silently: they need calibration images,
and their accuracy must be measured (``squeezenet eval --engine onnxruntime-int8``).
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..weights import LoadedWeights

ENGINES = ("auto", "torch", "torch-channels-last", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8")


class Engine:
    """Callable: float tensor [N, 3, H, W] -> logits tensor [N, classes]."""
    name = "engine"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(Engine):
    def __init__(self, lw: LoadedWeights, channels_last: bool = False) -> None:
        self.model = lw.build_model()
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.name = "torch-channels-last" if channels_last else "torch"

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class OnnxRuntimeEngine(Engine):
    def __init__(self, path: Path, name: str = "onnxruntime", threads: int | None = None) -> None:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: x.contiguous().numpy()})[0])


class OpenVinoEngine(Engine):
    """OpenVINO on the CPU at its default inference precision (bf16 where the CPU has it, else fp32)."""

    def __init__(self, path: Path, name: str = "openvino", threads: int | None = None, hint: str = "LATENCY") -> None:
        import openvino as ov
        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": hint,
                                                             "INFERENCE_NUM_THREADS": threads or (os.cpu_count() or 1)})
        self.request = self.compiled.create_infer_request()
        self.name = name
        hint_type = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint_type.get_type_name() if hasattr(hint_type, "get_type_name") else str(hint_type)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer({0: x.contiguous().numpy()})
        return torch.from_numpy(np.array(next(iter(out.values()))))


def _export_tmp(lw: LoadedWeights, int8: bool, calibration) -> Path:
    from .exporting import export_weights
    folder = Path(tempfile.mkdtemp(prefix="squeezenet-engine-"))
    out = folder / ("model.int8.onnx" if int8 else "model.onnx")
    export_weights(lw, "onnx", out, int8=int8, calibration=calibration)
    return out


def make_engine(lw: LoadedWeights, engine: str = "auto", calibration=None, log=None) -> Engine:
    """Build the named engine for ``lw``; ``auto`` times the fp32 engines and keeps the fastest."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "torch":
        return TorchEngine(lw)
    if engine == "torch-channels-last":
        return TorchEngine(lw, channels_last=True)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(_export_tmp(lw, False, None))
    if engine == "openvino":
        return OpenVinoEngine(_export_tmp(lw, False, None))
    if engine == "openvino-int8":
        if calibration is None:
            raise ValueError("engine openvino-int8 needs --calibration DIR (images not used for evaluation)")
        return OpenVinoEngine(_export_tmp(lw, True, calibration), "openvino-int8")
    if engine == "onnxruntime-int8":
        if calibration is None:
            raise ValueError("engine onnxruntime-int8 needs --calibration DIR (images not used for evaluation)")
        return OnnxRuntimeEngine(_export_tmp(lw, True, calibration), "onnxruntime-int8")
    candidates = [TorchEngine(lw), TorchEngine(lw, channels_last=True)]
    try:
        onnx_path = _export_tmp(lw, False, None)
        candidates.append(OnnxRuntimeEngine(onnx_path))
        candidates.append(OpenVinoEngine(onnx_path))
    except ImportError:
        pass
    x = torch.randn(8, 3, lw.preprocessing.crop, lw.preprocessing.crop)
    timings = {}
    for e in candidates:
        e(x)  # warm up
        # best of repeated runs: the minimum is the least noisy estimate on a shared machine
        runs = []
        budget = time.perf_counter() + 1.0
        while len(runs) < 3 or (time.perf_counter() < budget and len(runs) < 20):
            t = time.perf_counter()
            e(x)
            runs.append(time.perf_counter() - t)
        timings[e.name] = min(runs)
    best = min(candidates, key=lambda e: timings[e.name])
    if log:
        log("engine auto: " + ", ".join(f"{k} {8 / v:.0f} images/s" for k, v in timings.items()) + f" -> {best.name}")
    return best
