"""``make bench``: every benchmark of the project, one after the other, each printing its table.

    python bench/run_all.py [--shared ../shared/data]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_codecs.py", "bench_models.py", "bench_compression.py", "bench_inference.py", "bench_int8_accuracy.py",
           "bench_train.py", "bench_scale.py", "bench_onnx.py"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", default="../shared/data")
    args = p.parse_args()
    status = 0
    for name in BENCHES:
        if not (HERE / name).exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        status |= subprocess.call([sys.executable, str(HERE / name), "--shared", args.shared])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
