"""Inference speed of squeezenet1_0 at 227x227 across runtimes (``squeezenet bench``), one table.

With the shared data present, the published weights are timed and the int8 models (and the
auto engine's int8 candidate) are calibrated on the ImageNet samples; accuracy of those paths
is measured separately, calibrated on other images: ``python bench/bench_int8_accuracy.py``.

    python bench/bench_inference.py [--shared ../shared/data] [--batch 1,32] [--seconds 3]
"""
import argparse
from pathlib import Path

from squeezenet.cli.main import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", default="../shared/data", help="shared data folder (optional)")
    p.add_argument("--batch", default="1,32")
    p.add_argument("--seconds", default="3")
    a = p.parse_args()
    argv = ["bench", "--batch", a.batch, "--seconds", a.seconds]
    weights = Path(a.shared) / "squeezenet-deep-compression" / "compressed_SqueezeNet.net"
    calibration = Path(a.shared) / "imagenet-samples"
    if weights.is_file() and calibration.is_dir():
        argv += ["--weights", str(weights), "--calibration", str(calibration)]
    else:
        print(f"note: {a.shared} not found: random weights, int8 calibrated on random images")
    raise SystemExit(main(argv))
