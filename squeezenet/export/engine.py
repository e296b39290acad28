"""Inference engines behind ``eval`` / ``predict``: the same weights through PyTorch, ONNX
Runtime or OpenVINO (fp32 or static int8), with the choice visible.

``auto`` exports the model, times each available fp32 path on this machine for a few batches
and keeps the fastest. Given calibration images it also builds the int8 paths, quantized on
three quarters of those images, and admits one only if its top-1 agrees with fp32 on the
held-out quarter at least ``min_agreement`` of the time; the admitted int8 path competes on
speed with the fp32 ones. Without calibration images int8 is never chosen.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..weights import LoadedWeights
from .exporting import export_weights
from .int8 import calibration_arrays, quantize_onnx_int8, quantize_openvino_int8
from .openvino_runtime import compile_openvino
from .timing import time_interleaved

ENGINES = ("auto", "torch", "torch-channels-last", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-bf16",
           "openvino-int8")


class Engine:
    """Callable: float tensor [N, 3, H, W] -> logits tensor [N, classes]."""
    name = "engine"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchEngine(Engine):
    def __init__(self, lw: LoadedWeights, channels_last: bool = False) -> None:
        self.model = lw.build_inference_model()
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
    """OpenVINO on the CPU at the precision its name promises.

    OpenVINO's own default is bf16 wherever the CPU has AVX-512 BF16 or AMX (2e-3 from fp32 on
    SqueezeNet), so the precision is always set: "f32" for ``openvino`` (and for the float
    parts of ``openvino-int8``), "bf16" for ``openvino-bf16`` (fp32 where the CPU lacks bf16).
    """

    def __init__(self, path: Path, name: str = "openvino", threads: int | None = None, hint: str = "LATENCY",
                 precision: str = "f32") -> None:
        self.path = Path(path)
        self.compiled = compile_openvino(path, {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": precision,
                                                "INFERENCE_NUM_THREADS": threads or (os.cpu_count() or 1)})
        self.request = self.compiled.create_infer_request()
        self.name = name
        hint_type = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint_type.get_type_name() if hasattr(hint_type, "get_type_name") else str(hint_type)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer({0: x.contiguous().numpy()})
        return torch.from_numpy(np.array(next(iter(out.values()))))


def _export_openvino_int8(lw: LoadedWeights, calibration, images: int = 64) -> Path:
    fp32 = _export_tmp(lw, False, None)
    out = fp32.with_name("model.int8.xml")
    quantize_openvino_int8(fp32, out, calibration, lw.preprocessing, images)
    return out


def _export_tmp(lw: LoadedWeights, int8: bool, calibration, calibration_images: int = 64) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="squeezenet-engine-"))
    out = folder / ("model.int8.onnx" if int8 else "model.onnx")
    export_weights(lw, "onnx", out, int8=int8, calibration=calibration, calibration_images=calibration_images)
    return out


def make_engine(lw: LoadedWeights, engine: str | None = "auto", calibration=None, log=None,
                min_agreement: float = 0.85, calibration_images: int = 128) -> Engine:
    """Build the named engine for ``lw`` (None: torch, or ONNX Runtime for an ONNX file).

    ``auto`` times the fp32 engines and keeps the fastest; with ``calibration`` (a folder of
    images never used for evaluation) int8 engines that agree with fp32 on held-out calibration
    images at least ``min_agreement`` of the time compete too. The returned engine carries
    ``choice``: the timings and agreements behind the decision.
    """
    if engine is None:
        engine = "onnxruntime" if lw.kind == "onnx" else "torch"
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if lw.kind == "onnx":
        return _onnx_file_engine(lw, engine)
    if engine == "torch":
        return TorchEngine(lw)
    if engine == "torch-channels-last":
        return TorchEngine(lw, channels_last=True)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(_export_tmp(lw, False, None))
    if engine == "openvino":
        return OpenVinoEngine(_export_tmp(lw, False, None))
    if engine == "openvino-bf16":
        return OpenVinoEngine(_export_tmp(lw, False, None), "openvino-bf16", precision="bf16")
    if engine == "openvino-int8":
        if calibration is None:
            raise ConfigError("engine openvino-int8 needs calibration images (not the images evaluated)")
        return OpenVinoEngine(_export_openvino_int8(lw, calibration, calibration_images), "openvino-int8")
    if engine == "onnxruntime-int8":
        if calibration is None:
            raise ConfigError("engine onnxruntime-int8 needs calibration images (not the images evaluated)")
        return OnnxRuntimeEngine(_export_tmp(lw, True, calibration, calibration_images), "onnxruntime-int8")
    candidates = [TorchEngine(lw), TorchEngine(lw, channels_last=True)]
    onnx_path = None
    try:
        onnx_path = _export_tmp(lw, False, None)
        candidates.append(OnnxRuntimeEngine(onnx_path))
        candidates.append(OpenVinoEngine(onnx_path))
    except ImportError:
        pass
    agreements = {}
    if calibration is not None:
        if onnx_path is None:
            raise ImportError("int8 engines need the onnx and onnxruntime packages")
        candidates += _int8_candidates(lw, onnx_path, calibration, calibration_images, min_agreement, agreements,
                                       log)
    x = torch.randn(8, 3, lw.preprocessing.crop, lw.preprocessing.crop)
    # interleaved rounds and the median latency: on a shared machine the load drifts, and a
    # path timed alone in a slow moment would lose for reasons that are not its own
    with torch.inference_mode():
        measured = time_interleaved({e.name: e for e in candidates}, x, seconds=0.5, rounds=3)
    timings = {name: r["p50_ms"] / 1e3 for name, r in measured.items()}
    best = min(candidates, key=lambda e: timings[e.name])
    best.choice = {"images_per_s": {k: 8 / v for k, v in timings.items()}, "int8_agreement": agreements,
                   "min_agreement": min_agreement, "chosen": best.name}
    if log:
        log("engine auto: " + ", ".join(f"{k} {8 / v:.0f} images/s" for k, v in timings.items()) + f" -> {best.name}")
    return best


def _onnx_file_engine(lw: LoadedWeights, engine: str) -> Engine:
    """An ONNX file runs as it is: with ONNX Runtime (``auto``, ``onnxruntime``) or OpenVINO."""
    if engine in ("auto", "onnxruntime"):
        return OnnxRuntimeEngine(Path(lw.path))
    if engine in ("openvino", "openvino-bf16"):
        return OpenVinoEngine(Path(lw.path), engine, precision="bf16" if engine == "openvino-bf16" else "f32")
    raise ConfigError(f"{lw.path}: an ONNX file runs with --engine auto, onnxruntime, openvino or openvino-bf16 "
                      f"(it holds no PyTorch weights for {engine})")


def _int8_candidates(lw: LoadedWeights, fp32: Path, calibration, images: int, min_agreement: float,
                     agreements: dict, log) -> list[Engine]:
    """int8 engines quantized on 3/4 of the calibration images, kept if they agree with fp32 on the rest."""
    xs = calibration_arrays(calibration, lw.preprocessing, images)
    if len(xs) < 8:
        raise ConfigError(f"{calibration}: int8 needs at least 8 calibration images, found {len(xs)}")
    held_out = np.arange(len(xs)) % 4 == 3
    quant, check = xs[~held_out], xs[held_out]
    model = lw.build_inference_model()
    with torch.inference_mode():
        reference = model(torch.from_numpy(check)).argmax(1)
    out = []
    # OpenVINO + NNCF is the int8 recipe that kept closest to fp32 in our measurements
    # (bench/bench_int8_accuracy.py); ONNX Runtime's QDQ model is the fallback without it.
    builders = {"openvino-int8": lambda: OpenVinoEngine(_q(quantize_openvino_int8, fp32, "model.int8.xml", quant),
                                                       "openvino-int8"),
                "onnxruntime-int8": lambda: OnnxRuntimeEngine(_q(quantize_onnx_int8, fp32, "model.int8.onnx", quant),
                                                             "onnxruntime-int8")}
    for name, build in builders.items():
        try:
            engine = build()
        except ImportError as e:
            if log:
                log(f"engine auto: {name} unavailable ({e})")
            continue
        agree = float((engine(torch.from_numpy(check)).argmax(1) == reference).float().mean())
        agreements[name] = agree
        if log:
            log(f"engine auto: {name} top-1 agrees with fp32 on {agree:.1%} of {len(check)} held-out "
                f"calibration images ({'admitted' if agree >= min_agreement else 'rejected'}, "
                f"threshold {min_agreement:.0%})")
        if agree >= min_agreement:
            out.append(engine)
            break
    return out


def _q(quantize, fp32: Path, name: str, xs: np.ndarray) -> Path:
    path = fp32.with_name(name)
    quantize(fp32, path, xs)
    return path
