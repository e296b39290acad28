"""Inference speed of squeezenet1_0 at 227x227 across runtimes (``squeezenet bench``), one table.

    python bench/bench_inference.py [--batch 1,32] [--seconds 3]
"""
import argparse

from squeezenet.cli.main import main

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", help="unused (accepted for bench/run_all.py)")
    p.add_argument("--batch", default="1,32")
    p.add_argument("--seconds", default="3")
    a = p.parse_args()
    raise SystemExit(main(["bench", "--batch", a.batch, "--seconds", a.seconds]))
