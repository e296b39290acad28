"""Compression speed: compress squeezenet1_0 without retraining (target < 2 s) and decode a
compressed file to a state dict (target < 0.05 s), both codecs, on this machine, in one table.

    python bench/bench_compression.py [--shared ../shared/data] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from squeezenet.compression import CompressionConfig, compress_weights  # noqa: E402
from squeezenet.weights import decode  # noqa: E402
from squeezenet.cpu import describe  # noqa: E402
from squeezenet.models import create_model  # noqa: E402
from squeezenet.preprocessing import TORCHVISION_IMAGENET  # noqa: E402
from squeezenet.weights import LoadedWeights, load_weights  # noqa: E402


def timed(fn, repeats: int):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times), min(times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    dense = LoadedWeights("squeezenet1_0", create_model("squeezenet1_0").state_dict(), TORCHVISION_IMAGENET)
    decode(compress_weights(dense, CompressionConfig(bits=4))[0])  # warm up imports and allocator
    for codec in ("range", "huffman"):
        (data, _, _), med, best = timed(
            lambda: compress_weights(dense, CompressionConfig(bits=8, density="profile", codec=codec)), args.repeats)
        rows.append((f"compress squeezenet1_0 (dense fp32 -> pruned, 8-bit, {codec})", med, best, 2.0, len(data)))
        _, med, best = timed(lambda: decode(data), args.repeats)
        rows.append((f"decode that file to a state dict ({codec})", med, best, 0.05, len(data)))
    net = args.shared / "squeezenet-deep-compression" / "compressed_SqueezeNet.net"
    if net.is_file():
        pub = load_weights(net)
        for codec in ("range", "huffman"):
            (data, _, _), med, best = timed(lambda: compress_weights(pub, CompressionConfig(bits=8, codec=codec)),
                                            args.repeats)
            rows.append((f"compress published model (lossless re-encoding, {codec})", med, best, 2.0, len(data)))
            _, med, best = timed(lambda: decode(data), args.repeats)
            rows.append((f"decode that file to a state dict ({codec})", med, best, 0.05, len(data)))
        _, med, best = timed(lambda: load_weights(net), args.repeats)
        rows.append(("read published .net file", med, best, 0.5, net.stat().st_size))
    print(f"{describe()}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'task':<62} {'median s':>9} {'best s':>8} {'target s':>9} {'x under':>8} {'bytes':>9}")
    for name, med, best, target, size in rows:
        print(f"{name:<62} {med:>9.3f} {best:>8.3f} {target:>9.1f} {target / med:>8.1f} {size:>9,}")
    result = {"rows": [dict(task=n, median_s=m, best_s=b, target_s=t, bytes=s) for n, m, b, t, s in rows],
              "threads": torch.get_num_threads(), "cpu": describe()}
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
