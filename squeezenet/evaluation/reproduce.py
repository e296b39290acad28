"""``squeezenet reproduce``: the SqueezeNet paper's Table 2, measured rather than copied.

Rows: AlexNet and SqueezeNet fp32 sizes (computed from the models), the published 8-bit Deep
Compression file with its measured accuracy, and our ``.sqz`` files, each decoded from disk
and evaluated: 8-bit lossless re-encoding, uniform 7-bit, and smaller files whose bits per
layer come from the sensitivity analysis (optionally fine-tuned by distillation on unlabelled
calibration images, never on the evaluation images).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..compression import CompressionConfig
from ..compression.api import compress_weights
from ..download import ASSETS, cache_dir
from ..weights import load_weights
from ..weights.sqz import ALEXNET_FP32, SQUEEZENET_FP32, load_compressed
from .evaluate import accuracy_on_tensors, preload

SHARED = Path("../shared/data")
# Paper Table 2 (ImageNet validation set, 50,000 images): (model, method, bits, size MB, top-1, top-5)
PAPER_TABLE_2 = [
    ("AlexNet", "None (baseline)", "32 bit", 240, 57.2, 80.3),
    ("AlexNet", "SVD", "32 bit", 48, 56.0, 79.4),
    ("AlexNet", "Network Pruning", "32 bit", 27, 57.2, 80.3),
    ("AlexNet", "Deep Compression", "5-8 bit", 6.9, 57.2, 80.3),
    ("SqueezeNet", "None", "32 bit", 4.8, 57.5, 80.3),
    ("SqueezeNet", "Deep Compression", "8 bit", 0.66, 57.5, 80.3),
    ("SqueezeNet", "Deep Compression", "6 bit", 0.47, 57.5, 80.3),
]
# (label, size budget in bytes or None, uniform bits or None, distillation steps, codec). Budgets
# use rate-distortion optimised quantization; 60 distillation steps keep `make demo` near ten
# minutes on 2 cores (`compress` itself defaults to 150).
DEFAULT_POINTS = [
    ("ours, lossless re-encoding", None, None, 0, "range"),
    ("ours, lossless, paper's Huffman coding", None, None, 0, "huffman"),
    ("ours, 7-bit k-means", None, 7, 0, "range"),
    ("ours <= 470 kB", 470_000, None, 60, "range"),
    ("ours <= 400 kB", 400_000, None, 60, "range"),
    ("ours <= 350 kB", 350_000, None, 60, "range"),
]


def _default(path: Path | None, candidates: list[Path], what: str) -> Path:
    if path is not None:
        return path
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"no {what} given and none found at {', '.join(map(str, candidates))}")


def reproduce(data=None, weights=None, out="reproduce", calibration=None, points=None,
              finetune_steps: int | None = None, error_feedback: bool = False, log=None) -> dict:
    """Measure Table 2 and write ``table2.md``, ``table2.json``, ``size_accuracy.png`` to ``out``."""
    log = log or (lambda *a: print(*a, file=sys.stderr))
    data = _default(data, [SHARED / "imagenet-samples"], "ImageNet validation folder (data)")
    weights = _default(weights, [SHARED / "squeezenet-deep-compression" / "compressed_SqueezeNet.net",
                                 cache_dir() / ASSETS["squeezenet1_0-deep-compression"].filename],
                       "published weights (weights; or fetch them with squeezenet.download.download())")
    if calibration is None and (SHARED / "cifar10" / "train").is_dir():
        calibration = SHARED / "cifar10" / "train"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = DEFAULT_POINTS if points is None else points
    published = load_weights(weights)
    t0 = time.perf_counter()
    images, labels = preload(data, published.preprocessing)
    log(f"{len(labels)} evaluation images from {data} ({time.perf_counter() - t0:.1f} s)")

    rows = [{"model": "AlexNet", "method": "none (fp32, computed)", "bytes": ALEXNET_FP32},
            {"model": "SqueezeNet v1.0", "method": "none (fp32, computed)", "bytes": SQUEEZENET_FP32}]
    ref = accuracy_on_tensors(published.build_model(), images, labels)
    pub_bytes = Path(weights).stat().st_size
    rows.append({"model": "SqueezeNet v1.0", "method": "published Deep Compression 8-bit (.net)", "bytes": pub_bytes,
                 "top1": ref["top1"], "top5": ref["top5"], "agreement_with_8bit": 1.0, "file": str(weights)})
    log(f"published .net: {pub_bytes:,} bytes, top-1 {ref['top1']:.3f}, top-5 {ref['top5']:.3f}")
    for label, budget, bits, steps, codec in points:
        steps = steps if finetune_steps is None else (finetune_steps if budget else 0)
        if (budget or steps) and calibration is None:
            log(f"skipping {label}: needs calibration images")
            continue
        path = out / (label.replace(",", "").replace("'", "").replace(" ", "_").replace("<=", "le") + ".sqz")
        # error feedback off: its second moments come from the calibration images, and the
        # CIFAR-10 images this command calibrates on (to keep the evaluation images unseen) are
        # not ImageNet's; fed back, they made the 400 kB file worse (agreement 87.0% -> 78.2%)
        config = CompressionConfig(density="keep", bits=8 if bits is None else bits, size_budget=budget,
                                   finetune_steps=steps, codec=codec, error_feedback=error_feedback)
        _, _, rep = compress_weights(published, config, calibration=calibration, out=path)
        t = time.perf_counter()
        state = load_compressed(path).state_dict
        decode_s = time.perf_counter() - t
        model = published.build_model()
        model.load_state_dict(state)
        acc = accuracy_on_tensors(model, images, labels)
        agree = sum(a == b for a, b in zip(acc["predictions"], ref["predictions"])) / len(labels)
        row = {"model": "SqueezeNet v1.0", "method": label, "bytes": path.stat().st_size, "top1": acc["top1"],
               "top5": acc["top5"], "agreement_with_8bit": agree, "codec": codec,
               "compress_s": rep["seconds"], "decode_s": decode_s, "finetune_steps": steps, "file": str(path)}
        rows.append(row)
        log(f"{label}: {row['bytes']:,} bytes, top-1 {acc['top1']:.3f}, top-5 {acc['top5']:.3f}, "
            f"same top-1 as 8-bit on {agree:.1%}")
    for r in rows:
        r["ratio_vs_alexnet"] = ALEXNET_FP32 / r["bytes"]
        r["mb"] = r["bytes"] / 1e6
    result = {"data": str(data), "images": len(labels), "weights": str(weights), "rows": rows,
              "paper": [dict(zip(("model", "method", "bits", "mb", "top1_pct", "top5_pct"), p)) for p in PAPER_TABLE_2]}
    ours = [r for r in rows if r["method"].startswith("ours")]
    if ours:
        best = min((r for r in ours if abs(r["top1"] - ref["top1"]) <= 0.01 and abs(r["top5"] - ref["top5"]) <= 0.01),
                   key=lambda r: r["bytes"], default=None)
        result["bytes"] = min(r["bytes"] for r in ours)
        result["smallest_within_1_point"] = best
    (out / "table2.json").write_text(json.dumps(result, indent=1))
    (out / "table2.md").write_text(format_markdown(result))
    _plot(result, out / "size_accuracy.png")
    print(format_markdown(result))
    return result


def format_markdown(result: dict) -> str:
    lines = [f"Measured on {result['images']} images of `{result['data']}` (not the 50,000-image ImageNet "
             f"validation set of the paper; one image is 0.4 points and the difference between two models here "
             f"has about +-2.5 points of noise: the agreement column is the steadier figure).", "",
             "| model | compression | bytes | MB | vs AlexNet fp32 | top-1 | top-5 | same top-1 as 8-bit |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        acc = (f"{r['top1']:.3f} | {r['top5']:.3f} | {r['agreement_with_8bit']:.1%}" if "top1" in r else "- | - | -")
        lines.append(f"| {r['model']} | {r['method']} | {r['bytes']:,} | {r['mb']:.3f} "
                     f"| {r['ratio_vs_alexnet']:.0f}x | {acc} |")
    lines += ["", "Paper, Table 2 (ImageNet validation set):", "",
              "| model | compression | weights | size | top-1 | top-5 |", "|---|---|---|---:|---:|---:|"]
    for p in result["paper"]:
        lines.append(f"| {p['model']} | {p['method']} | {p['bits']} | {p['mb']} MB "
                     f"| {p['top1_pct']}% | {p['top5_pct']}% |")
    return "\n".join(lines) + "\n"


def _plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in result["rows"] if "top1" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, marker in (("top1", "o"), ("top5", "s")):
        ax.plot([r["bytes"] / 1e3 for r in rows], [100 * r[key] for r in rows], marker,
                label=key.replace("top", "top-"))
    for r in rows:
        ax.annotate(r["method"].replace("ours ", ""), (r["bytes"] / 1e3, 100 * r["top1"]), fontsize=7,
                    xytext=(3, -10), textcoords="offset points")
    ax.axvline(470, color="grey", ls="--", lw=0.8)
    ax.text(471, ax.get_ylim()[0] + 1, "paper 6-bit: 0.47MB", fontsize=7, color="grey")
    ax.set_xlabel("file size (kB)")
    ax.set_ylabel(f"accuracy on {result['images']} images (%)")
    ax.set_title("SqueezeNet v1.0 Deep Compression: size vs accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_demo(shared: Path) -> int:
    """``make demo``: reproduce Table 2 when the shared data is present."""
    shared = Path(shared)
    data = shared / "imagenet-samples"
    weights = shared / "squeezenet-deep-compression" / "compressed_SqueezeNet.net"
    if not (data.is_dir() and weights.is_file()):
        print(f"\n(shared data not found under {shared}: skipping `squeezenet reproduce`; "
              f"pass SHARED=/path/to/data, or download the weights and give weights and data)")
        return 0
    print("\n== squeezenet reproduce: the paper's Table 2, measured ==")
    cal = shared / "cifar10" / "train"
    reproduce(data=data, weights=weights, out="reproduce", calibration=cal if cal.is_dir() else None)
    print("wrote reproduce/table2.md, reproduce/table2.json, reproduce/size_accuracy.png")
    return 0
