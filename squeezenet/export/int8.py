"""Static int8 quantization of an ONNX model with real calibration images (ONNX Runtime).

QDQ format, per-channel int8 weights, uint8 activations, calibrated by MinMax over the given
images (never the evaluation images).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def quantize_onnx_int8(fp32_path: Path, out: Path, calibration, preprocessing, images: int = 64,
                       batch: int = 8) -> dict:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from ..compression.finetune import UnlabelledImages
    ds = UnlabelledImages(calibration, preprocessing.transform(), limit=images)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(ds):
                return None
            xs = [ds[j].numpy() for j in range(self.i, min(self.i + batch, len(ds)))]
            self.i += batch
            return {"input": np.stack(xs).astype(np.float32)}

    tmp = out.with_name(f".{out.name}.tmp")
    quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    os.replace(tmp, out)
    return {"calibration": str(calibration), "calibration_images": len(ds)}
