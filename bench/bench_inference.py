"""Inference speed of squeezenet1_0 at 227x227 across runtimes (``squeezenet bench``), one table.

    python bench/bench_inference.py [--batch 1,32] [--seconds 3]
"""
import sys

from squeezenet.cli.main import main

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--shared")]
    args = [a for i, a in enumerate(args) if i == 0 or not sys.argv[1:][i - 1].startswith("--shared")]
    raise SystemExit(main(["bench", *args]))
