"""Static int8 quantization with real calibration images.

Two recipes, both per-channel int8 weights and uint8 activations calibrated on the given
images (never the evaluation images):

* ONNX Runtime QDQ (``quantize_onnx_int8``): a portable int8 ONNX file, MinMax calibration.
* OpenVINO through NNCF (``quantize_openvino_int8``): an OpenVINO IR with NNCF's default
  CPU preset (fast bias correction, overflow fix on the first layer). The most accurate
  full-int8 model we measured (``python bench/bench_int8_accuracy.py``).

Why ``reduce_range``: CPUs without VNNI multiply uint8 x int8 pairs with ``vpmaddubsw``, which
saturates at int16 when two products of 8-bit operands are summed (255 * 127 * 2 > 32767).
On this AVX2 machine full 8-bit weights cost about 12 points of top-1 agreement with fp32;
7-bit weights (``reduce_range``) avoid the overflow. It is the default where the CPU lacks
VNNI (an exported file may run elsewhere; 7 bits are safe everywhere).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..cpu import has_vnni
from ..data.unlabelled import UnlabelledImages


def cpu_has_vnni() -> bool:
    """True when the CPU has an int8 dot-product instruction set (AVX512-VNNI, AVX-VNNI, AMX)."""
    return has_vnni()


def calibration_arrays(calibration, preprocessing, images: int = 64) -> np.ndarray:
    """``images`` preprocessed calibration images (a deterministic subset) as float32 [N, 3, H, W]."""
    if isinstance(calibration, np.ndarray):
        return np.ascontiguousarray(calibration[:images], dtype=np.float32)
    ds = UnlabelledImages(calibration, preprocessing.transform(), limit=images)
    return np.stack([ds[i].numpy() for i in range(len(ds))]).astype(np.float32)


def quantize_onnx_int8(fp32_path: Path, out: Path, calibration, preprocessing=None, images: int = 64,
                       batch: int = 8, reduce_range: bool | None = None) -> dict:
    """QDQ int8 ONNX from ``fp32_path`` calibrated on a folder (or an array) of images.

    Args:
        reduce_range: 7-bit weights; default: when this CPU lacks VNNI (see module docstring).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    xs = calibration_arrays(calibration, preprocessing, images)
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(xs):
                return None
            self.i += batch
            return {"input": xs[self.i - batch:self.i]}

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, reduce_range=reduce_range)
    os.replace(tmp, out)
    return {"calibration": _describe(calibration), "calibration_images": len(xs), "reduce_range": reduce_range}


def quantize_openvino_int8(fp32_path: Path, out_xml: Path, calibration, preprocessing=None,
                           images: int = 64, metadata: dict | None = None) -> dict:
    """OpenVINO IR (``out_xml`` + ``.bin``) quantized by NNCF with its default CPU preset.

    NNCF runs in a child process, which keeps its progress output, logging setup and threads
    out of the caller's process. (It was moved there while chasing a SIGSEGV seen in the test
    suite; that alone did not stop it: see docs/robustness.md.)
    """
    xs = calibration_arrays(calibration, preprocessing, images)
    out_xml = Path(out_xml)
    with tempfile.TemporaryDirectory(prefix="squeezenet-nncf-") as tmp:
        np.save(Path(tmp) / "calibration.npy", xs)
        (Path(tmp) / "metadata.json").write_text(json.dumps(metadata or {}))
        proc = subprocess.run([sys.executable, "-m", "squeezenet.export._nncf_worker", str(fp32_path), str(out_xml),
                               str(Path(tmp) / "calibration.npy"), str(Path(tmp) / "metadata.json")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 3:
        raise ImportError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "nncf missing")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"NNCF quantization of {fp32_path} failed (exit {proc.returncode}):\n{tail}")
    return {"calibration": _describe(calibration), "calibration_images": len(xs), "quantizer": "nncf"}


def _describe(calibration) -> str:
    return "array" if isinstance(calibration, np.ndarray) else str(calibration)
