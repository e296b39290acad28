"""``make demo``: the project's main job on this machine.

Prints squeezenet1_0 beside AlexNet (the paper's 50x claim, measured), then, when the shared
data is present, runs ``squeezenet reproduce`` (the paper's Table 2, measured).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .models import create_model
from .models.summary import format_summary, summarize


def compare_to_alexnet() -> dict:
    """Parameters and fp32 sizes of squeezenet1_0 and AlexNet with their ratio."""
    sq = summarize(create_model("squeezenet1_0"), 227)
    ax = summarize(create_model("alexnet"), 227)
    print(format_summary(sq, "squeezenet1_0 at 227x227"))
    print()
    print(format_summary(ax, "alexnet (Caffe layout) at 227x227"))
    ratio = ax["params"] / sq["params"]
    print(f"\nAlexNet / SqueezeNet: {ax['params']:,} / {sq['params']:,} parameters = {ratio:.1f}x fewer "
          f"(paper: 50x); fp32 {ax['mb']:.1f} MB vs {sq['mb']:.2f} MB")
    return {"alexnet_params": ax["params"], "squeezenet_params": sq["params"], "ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path("../shared/data"), help="shared data folder")
    args = p.parse_args(argv)
    compare_to_alexnet()
    try:
        from .evaluation.reproduce import run_demo
    except ImportError:
        return 0
    return run_demo(args.shared)


if __name__ == "__main__":
    raise SystemExit(main())
