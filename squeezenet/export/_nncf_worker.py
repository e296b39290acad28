"""Child process of ``quantize_openvino_int8``: NNCF post-training quantization of one model.

    python -m squeezenet.export._nncf_worker FP32.onnx OUT.xml CALIBRATION.npy METADATA.json

Exit 3 when nncf or openvino is missing. The parent captures stdout (NNCF's progress bars)
and reports the tail of stderr on failure.
"""
from __future__ import annotations

import json
import logging
import sys

import numpy as np


def main(argv: list[str]) -> int:
    fp32, out_xml, calibration, metadata = argv
    try:
        import nncf
        import openvino as ov
    except ImportError as e:
        print(f"OpenVINO int8 needs the nncf and openvino packages ({e})", file=sys.stderr)
        return 3

    xs = np.load(calibration)
    model = ov.Core().read_model(fp32)
    nncf.set_log_level(logging.ERROR)
    quantized = nncf.quantize(model, nncf.Dataset([xs[i:i + 1] for i in range(len(xs))]), subset_size=len(xs))
    for key, value in json.loads(open(metadata).read()).items():
        quantized.set_rt_info(value, key.split("."))
    ov.save_model(quantized, out_xml, compress_to_fp16=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
