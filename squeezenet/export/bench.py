"""``squeezenet bench``: inference speed of the runtimes a user would pick, side by side.

Paths: torchvision eager fp32 (the baseline users start from), our PyTorch path
(channels_last), ONNX Runtime fp32 and int8 (static QDQ, per-channel), OpenVINO at its default
precision, running the QDQ int8 model and running NNCF's int8 model, and our ``auto`` engine.
Without ``calibration`` the int8 models are calibrated on random inputs (their *speed* is
representative, their accuracy is not) and ``auto`` can only choose among fp32 paths; with
real calibration images ``auto`` may admit int8 after its agreement check (accuracy:
``python bench/bench_int8_accuracy.py``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from ..cpu import cpu_name
from ..export.engine import OnnxRuntimeEngine, OpenVinoEngine, TorchEngine, make_engine
from ..export.exporting import export_weights
from ..models import create_model
from ..preprocessing import CAFFE_IMAGENET
from ..weights import LoadedWeights, load_weights
from .int8 import quantize_openvino_int8
from .timing import time_interleaved


def run_bench(model: str = "squeezenet1_0", batches=(1, 32), seconds: float = 3.0, threads: int | None = None,
              log=print, calibration=None, weights=None) -> dict:
    """Time every available path at each batch size; ratios against ONNX Runtime fp32 and the fastest."""

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if weights is not None:
        lw = load_weights(weights)
        model = lw.model_name
        net = lw.build_inference_model()
    else:
        net = create_model(model)
        lw = LoadedWeights(model, net.state_dict(), CAFFE_IMAGENET)
    size = lw.preprocessing.crop
    folder = Path(tempfile.mkdtemp(prefix="squeezenet-bench-"))
    fp32 = folder / "m.onnx"
    export_weights(lw, "onnx", fp32)
    if calibration is None:  # int8 speed models only: calibrated on random images
        calib = folder / "calib"
        calib.mkdir()
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    else:
        calib = calibration
    int8 = folder / "m.int8.onnx"
    export_weights(lw, "onnx", int8, int8=True, calibration=calib, calibration_images=64)
    nncf_int8 = folder / "m.nncf.xml"
    quantize_openvino_int8(fp32, nncf_int8, calib, lw.preprocessing, images=64)
    paths = {}
    if model in ("squeezenet1_0", "squeezenet1_1"):
        tv = getattr(torchvision.models, model)(weights=None).eval()
        tv.load_state_dict(net.state_dict())
        paths["torchvision eager fp32"] = lambda x, m=tv: m(x)
    ours = TorchEngine(lw, channels_last=True)
    paths["ours: torch channels_last fp32"] = ours
    paths["onnxruntime fp32"] = OnnxRuntimeEngine(fp32, threads=threads)
    paths["onnxruntime int8"] = OnnxRuntimeEngine(int8, threads=threads)
    ovd = OpenVinoEngine(fp32, threads=threads)
    paths[f"openvino default ({ovd.precision})"] = ovd
    paths["openvino int8 (QDQ model)"] = OpenVinoEngine(int8, threads=threads)
    paths["openvino int8 (NNCF)"] = OpenVinoEngine(nncf_int8, threads=threads)
    auto = make_engine(lw, "auto", calibration=calibration)
    paths[f"ours: auto engine (-> {auto.name})"] = auto
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size)
        with torch.inference_mode():
            results = time_interleaved(paths, x, seconds)
        for name, r in results.items():
            log(f"batch {b:>3} {name:<44} {r['images_per_s']:8.1f} images/s")
        ort = results["onnxruntime fp32"]["images_per_s"]
        fastest = max(r["images_per_s"] for r in results.values())
        for name, r in results.items():
            rows.append({"path": name, "batch": b, **r, "vs_onnxruntime_fp32": r["images_per_s"] / ort,
                         "vs_fastest": r["images_per_s"] / fastest})
    return {"model": model, "input_size": size, "threads": threads, "cpu": cpu_name(), "rows": rows,
            "calibration": str(calibration) if calibration else None, "auto_choice": getattr(auto, "choice", None),
            "images_per_s": max(r["images_per_s"] for r in rows if r["path"].startswith("ours: auto"))}


def format_bench(result: dict) -> str:
    calib = result.get("calibration")
    size = result["input_size"]
    calibration = (f"int8 calibrated on {calib}" if calib
                   else "int8 calibrated on random images (speed only; auto stays fp32)")
    lines = [f"{result['model']} at {size}x{size}, {result['threads']} threads, {result['cpu']}; {calibration}",
             f"{'path':<46} {'batch':>5} {'images/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
             f"{'vs ORT fp32':>11} {'vs fastest':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['path']:<46} {r['batch']:>5} {r['images_per_s']:>9.1f} {r['p50_ms']:>8.1f} "
                     f"{r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['vs_onnxruntime_fp32']:>10.2f}x "
                     f"{r['vs_fastest']:>9.2f}x")
    return "\n".join(lines)
