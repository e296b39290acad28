"""ONNX with compressed weights against the fp32 export, one run: bytes, top-1, agreement with
the decoded model, ONNX Runtime load time and images/s, the .sqz itself and the torch-free reader.

The compressed file is made here: the published Deep Compression SqueezeNet compressed to
``--budget`` bytes, calibrated on the even half of the shared ImageNet samples; top-1 and
agreement are measured on the odd half, which no calibration saw (125 images: one image is
0.8 points, so the top-1 figures carry about +-4 points of noise; the agreement between two
exports of one model is exact, not a sample). Run: ``python bench/bench_onnx.py [--json]``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_codecs import split_folds  # noqa: E402
from squeezenet import reader  # noqa: E402
from squeezenet.compression import CompressionConfig, compress_weights  # noqa: E402
from squeezenet.cpu import describe as cpu_name  # noqa: E402
from squeezenet.evaluation.evaluate import preload  # noqa: E402
from squeezenet.export import export_weights  # noqa: E402
from squeezenet.export.engine import OnnxRuntimeEngine, TorchEngine  # noqa: E402
from squeezenet.export.timing import time_interleaved  # noqa: E402
from squeezenet.weights import load_weights  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder (default ../shared/data)")
    p.add_argument("--weights", type=Path, default=None, help="weights to compress (default: the published .net)")
    p.add_argument("--data", type=Path, default=None, help="ImageNet folder (default: the shared samples)")
    p.add_argument("--budget", type=int, default=350_000, help="bytes of the .sqz file (default 350000)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per path (default 3 s)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    args.weights = args.weights or args.shared / "squeezenet-deep-compression" / "compressed_SqueezeNet.net"
    args.data = args.data or args.shared / "imagenet-samples"
    for path in (args.weights, args.data):
        if not path.exists():
            print(f"skipped: {path} not found (the shared data)", file=sys.stderr)
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows, extra = run(args, Path(tmp))
    print(f"CPU: {cpu_name()}, {torch.get_num_threads()} threads")
    print(f"{'file':<34}{'bytes':>12}{'vs fp32 ONNX':>14}{'top-1':>8}{'agrees':>9}{'load ms':>9}{'images/s':>10}")
    for r in rows:
        print(f"{r['file']:<34}{r['bytes']:>12,}{r['ratio']:>14.3f}{r['top1']:>8.3f}{r['agreement']:>9.1%}"
              f"{r['load_ms']:>9.0f}{r['images_per_s']:>10.0f}")
    print(f"top-1 and agreement on {extra['images']} held-out images (about +-4 points of noise on top-1); "
          f"reader.read {extra['reader_s']:.2f} s, bit-identical to the torch decode: {extra['reader_identical']}")
    if args.json:
        packed = next(r for r in rows if "compressed" in r["file"])
        print(json.dumps({"bytes": packed["bytes"], "ratio": packed["ratio"], "top1": packed["top1"],
                          "images_per_s": packed["images_per_s"], "cpu": cpu_name(), "rows": rows, **extra}))
    return 0


def run(args, tmp: Path) -> tuple[list[dict], dict]:
    calib, held_out = split_folds(args.data, tmp / "folds")
    sqz = tmp / "m.sqz"
    compress_weights(args.weights, CompressionConfig(size_budget=args.budget), calibration=calib, out=sqz)
    lw = load_weights(sqz)
    fp32, packed = tmp / "fp32.onnx", tmp / "compressed.onnx"
    export_weights(lw, "onnx", fp32)
    export_weights(lw, "onnx", packed, compressed_weights=True)
    images, labels = preload(args.data, lw.preprocessing)
    keep = torch.arange(len(labels)) % 2 == 1  # the odd half: split_folds calibrated on the even one
    images, labels = images[keep], labels[keep]
    engines = {"decoded .sqz, PyTorch": (sqz, lambda: TorchEngine(lw)),
               "fp32 ONNX, ONNX Runtime": (fp32, lambda: OnnxRuntimeEngine(fp32)),
               "compressed ONNX, ONNX Runtime": (packed, lambda: OnnxRuntimeEngine(packed))}
    built, load_ms = {}, {}
    for name, (_, make) in engines.items():
        start = time.perf_counter()
        built[name] = make()
        load_ms[name] = 1e3 * (time.perf_counter() - start)
    with torch.inference_mode():
        preds = {n: torch.cat([e(images[i:i + 25]) for i in range(0, len(images), 25)]).argmax(1)
                 for n, e in built.items()}
        speed = time_interleaved(built, images[:8], seconds=args.seconds)
    ref = preds["decoded .sqz, PyTorch"]
    fp32_bytes = fp32.stat().st_size
    rows = [{"file": name, "bytes": path.stat().st_size, "ratio": path.stat().st_size / fp32_bytes,
             "top1": float((preds[name] == labels).float().mean()),
             "agreement": float((preds[name] == ref).float().mean()),
             "load_ms": load_ms[name], "images_per_s": speed[name]["images_per_s"]}
            for name, (path, _) in engines.items()]
    start = time.perf_counter()
    arrays = reader.read(sqz)
    reader_s = time.perf_counter() - start
    identical = all(np.array_equal(arrays[k], v.numpy()) for k, v in lw.state_dict.items())
    return rows, {"images": int(keep.sum()), "reader_s": reader_s, "reader_identical": identical}


if __name__ == "__main__":
    sys.exit(main())
