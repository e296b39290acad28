"""``squeezenet reproduce``: the SqueezeNet paper's Table 2, measured rather than copied.

Rows: AlexNet and SqueezeNet fp32 sizes (computed from the models), the published 8-bit Deep
Compression file with its measured accuracy, and our ``.sqz`` files, each decoded from disk
and evaluated: 8-bit lossless re-encoding, uniform 7-bit k-means, and size-budget files made as
``squeezenet compress --size-budget B --calibration DIR`` makes them. A budget file is calibrated
on unlabelled images, so it is made twice, calibrated on either half of the evaluation images, and
each is scored on the half it did not see (``crossfold``): the held-out agreement with the 8-bit
model is the figure to read, top-1 on a few hundred images being noisy.
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
from ..utils import atomic_write_bytes
from ..weights.sqz import ALEXNET_FP32, SQUEEZENET_FP32, decode, load_compressed
from .crossfold import HeldOutViews, cross_calibrated, score

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
# (label, size budget in bytes or None, uniform bits or None, distillation steps or None for the
# default, codec). Budgets use rate-distortion optimised quantization with error feedback,
# calibrated on one half of the evaluation images and scored on the other (``crossfold``).
DEFAULT_POINTS = [
    ("ours, lossless re-encoding", None, None, 0, "range"),
    ("ours, lossless, paper's Huffman coding", None, None, 0, "huffman"),
    ("ours, 7-bit k-means", None, 7, 0, "range"),
    ("ours <= 400 kB", 400_000, None, None, "range"),
    ("ours <= 350 kB", 350_000, None, None, "range"),
    ("ours <= 300 kB", 300_000, None, None, "range"),
]
# NNCodec 2.1.3 (MPEG NNC reference software) on the same published model, dependent quantization,
# scored like the rows above: ``python bench/bench_codecs.py --quick`` (its files see no
# calibration images, so every image scores them). (qp, bytes, agreement, top-1, top-5)
NNCODEC_MEASURED = [
    (-36, 456_140, 0.936, 0.648, 0.820),
    (-32, 400_457, 0.876, 0.620, 0.820),
    (-28, 345_654, 0.798, 0.604, 0.792),
    (-24, 291_773, 0.598, 0.484, 0.728),
]


def _default(path: Path | None, candidates: list[Path], what: str) -> Path:
    if path is not None:
        return path
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"no {what} given and none found at {', '.join(map(str, candidates))}")


def reproduce(data=None, weights=None, out="reproduce", calibration=None, points=None,
              finetune_steps: int | None = None, log=None) -> dict:
    """Measure Table 2 and write ``table2.md``, ``table2.json``, ``size_accuracy.png`` to ``out``.

    Args:
        data: a labelled ImageNet validation folder.
        calibration: unlabelled images for the size-budget rows; None (the default) calibrates each
            budget twice, on either half of ``data``, and scores each file on the other half.
    """
    log = log or (lambda *a: print(*a, file=sys.stderr))
    data = _default(data, [SHARED / "imagenet-samples"], "ImageNet validation folder (data)")
    weights = _default(weights, [SHARED / "squeezenet-deep-compression" / "compressed_SqueezeNet.net",
                                 cache_dir() / ASSETS["squeezenet1_0-deep-compression"].filename],
                       "published weights (weights; or fetch them with squeezenet.download.download())")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = DEFAULT_POINTS if points is None else points
    published = load_weights(weights)
    t0 = time.perf_counter()
    held = HeldOutViews.load(data, published.preprocessing, published.build_model())
    log(f"{len(held.labels)} evaluation images ({len(held.views)} views) from {data} "
        f"({time.perf_counter() - t0:.1f} s)")

    ref = score([published.build_model()], held)
    pub_bytes = Path(weights).stat().st_size
    rows = [{"model": "AlexNet", "method": "none (fp32, computed)", "bytes": ALEXNET_FP32},
            {"model": "SqueezeNet v1.0", "method": "fp32 (the published weights decoded)", "bytes": SQUEEZENET_FP32,
             **_figures(ref), "scored_on": "all images"},
            {"model": "SqueezeNet v1.0", "method": "published Deep Compression 8-bit (.net)", "bytes": pub_bytes,
             **_figures(ref), "scored_on": "all images", "file": str(weights)}]
    log(f"published .net: {pub_bytes:,} bytes, top-1 {ref['top1']:.3f}, top-5 {ref['top5']:.3f}")
    for label, budget, bits, steps, codec in points:
        if finetune_steps is not None:
            steps = finetune_steps if budget else 0
        config = CompressionConfig(density="keep", bits=8 if bits is None else bits, size_budget=budget,
                                   finetune_steps=steps, codec=codec)
        path = out / (label.replace(",", "").replace("'", "").replace(" ", "_").replace("<=", "le") + ".sqz")
        t = time.perf_counter()
        row = _row(published, config, path, data, held, calibration if budget else None, bool(budget))
        row.update({"model": "SqueezeNet v1.0", "method": label, "codec": codec, "finetune_steps": steps,
                    "compress_s": time.perf_counter() - t, "file": str(path)})
        rows.append(row)
        log(f"{label}: {row['bytes']:,} bytes, top-1 {row['top1']:.3f}, top-5 {row['top5']:.3f}, "
            f"same top-1 as 8-bit on {row['agreement_with_8bit']:.1%} of {row['scored_on']}")
    for r in rows:
        r["ratio_vs_alexnet"] = ALEXNET_FP32 / r["bytes"]
        r["mb"] = r["bytes"] / 1e6
    result = {"data": str(data), "images": len(held.labels), "views": len(held.views), "weights": str(weights),
              "rows": rows, "nncodec": [dict(zip(("qp", "bytes", "agreement_with_8bit", "top1", "top5"), n))
                                        for n in NNCODEC_MEASURED],
              "paper": [dict(zip(("model", "method", "bits", "mb", "top1_pct", "top5_pct"), p)) for p in PAPER_TABLE_2]}
    ours = [r for r in rows if r["method"].startswith("ours")]
    if ours:
        best = min((r for r in ours if abs(r["top1"] - ref["top1"]) <= 0.01 and abs(r["top5"] - ref["top5"]) <= 0.01),
                   key=lambda r: r["bytes"], default=None)
        result["bytes"] = min(r["bytes"] for r in ours)
        result["smallest_within_1_point"] = best
    (out / "table2.json").write_text(json.dumps(result, indent=1))
    (out / "table2.md").write_text(format_markdown(result))
    plot_size_accuracy(result, out / "size_accuracy.png")
    print(format_markdown(result))
    return result


def _figures(scores: dict) -> dict:
    return {"top1": scores["top1"], "top5": scores["top5"], "agreement_with_8bit": scores["agreement"],
            "kl": scores["kl"]}


def _row(published, config: CompressionConfig, path: Path, data: Path, held: HeldOutViews, calibration,
         calibrated: bool) -> dict:
    """One file's row: cross-calibrated on ``data``'s halves when it needs calibration and none is given."""
    if calibrated and calibration is None:
        def compress(fold):
            blob, _, _ = compress_weights(published, config, calibration=fold)
            return blob, decode(blob)[1]
        r = cross_calibrated(compress, published.build_model, data, held)
        atomic_write_bytes(path, r["files"][0])  # the file calibrated on the first half
        return {"bytes": r["bytes"], "fold_bytes": r["fold_bytes"], **_figures(r),
                "scored_on": "held-out halves"}
    blob, _, _ = compress_weights(published, config, calibration=calibration, out=path)
    t = time.perf_counter()
    state = load_compressed(path).state_dict
    decode_s = time.perf_counter() - t
    model = published.build_model()
    model.load_state_dict(state)
    return {"bytes": len(blob), **_figures(score([model], held)), "decode_s": decode_s,
            "scored_on": "all images" if calibration is None else f"all images (calibrated on {calibration})"}


def format_markdown(result: dict) -> str:
    lines = [f"Measured on {result['images']} images of `{result['data']}` (not the 50,000-image ImageNet "
             f"validation set of the paper; one image is 0.4 points and the difference between two models here "
             f"has about +-2.5 points of noise). Agreement: the share of the {result['views']} views (centre crops "
             f"and mirrors) on which a file's top-1 is the 8-bit model's, standard error about 1.5 points; size-budget "
             f"files are calibrated on one half of the images and scored on the other, both halves pooled.", "",
             "| model | compression | bytes | MB | vs AlexNet fp32 | top-1 | top-5 | same top-1 as 8-bit | scored on |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        acc = (f"{r['top1']:.3f} | {r['top5']:.3f} | {r['agreement_with_8bit']:.1%} | {r['scored_on']}"
               if "top1" in r else "- | - | - | -")
        lines.append(f"| {r['model']} | {r['method']} | {r['bytes']:,} | {r['mb']:.3f} "
                     f"| {r['ratio_vs_alexnet']:.0f}x | {acc} |")
    if result.get("nncodec"):
        lines += ["", "NNCodec 2.1.3 (dependent quantization), measured on the same images by "
                  "`python bench/bench_codecs.py --quick`:", "",
                  "| NNCodec | bytes | top-1 | top-5 | same top-1 as 8-bit |", "|---|---:|---:|---:|---:|"]
        for n in result["nncodec"]:
            agree = "-" if n["agreement_with_8bit"] is None else f"{n['agreement_with_8bit']:.1%}"
            lines.append(f"| qp {n['qp']} | {n['bytes']:,} | {n['top1']:.3f} | {n['top5']:.3f} | {agree} |")
    lines += ["", "Paper, Table 2 (ImageNet validation set):", "",
              "| model | compression | weights | size | top-1 | top-5 |", "|---|---|---|---:|---:|---:|"]
    for p in result["paper"]:
        lines.append(f"| {p['model']} | {p['method']} | {p['bits']} | {p['mb']} MB "
                     f"| {p['top1_pct']}% | {p['top5_pct']}% |")
    return "\n".join(lines) + "\n"


_SHORT = {"published Deep Compression 8-bit (.net)": "published .net", "fp32 (the published weights decoded)": "fp32",
          "ours, lossless re-encoding": "lossless", "ours, lossless, paper's Huffman coding": "Huffman",
          "ours, 7-bit k-means": "7-bit"}
SIZE_TICKS_KB = (200, 300, 400, 500, 700, 1000, 2000, 5000, 10_000)


def _short(method: str) -> str:
    return _SHORT.get(method, method.replace("ours, ", "").replace("ours ", ""))


def plot_size_accuracy(result: dict, path: Path):
    """Top-1 and agreement with the 8-bit model against file size (log scale): ours, NNCodec's
    measured files, the published file and fp32; every label placed clear of the others
    (``plotting.place_labels``). Returns the figure, closed (for ``plotting.text_overlaps``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    from .plotting import place_labels
    rows = [r for r in result["rows"] if "top1" in r]
    nnc = [n for n in result.get("nncodec", []) if n.get("top1") is not None]
    groups = [("ours", [r for r in rows if r["method"].startswith("ours")], "o", "tab:blue"),
              ("published 8-bit .net / fp32", [r for r in rows if not r["method"].startswith("ours")], "s",
               "tab:grey"),
              ("NNCodec 2.1.3, dependent quantization", nnc, "^", "tab:orange")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = [(axes[0], "top1", f"top-1 on {result['images']} images (%)"),
              (axes[1], "agreement_with_8bit", f"same top-1 as the 8-bit model, {result['views']} views (%)")]
    placed = []
    for ax, key, ylabel in panels:
        points, labels = [], []
        for name, group, marker, colour in groups:
            group = [g for g in group if g.get(key) is not None]
            if not group:
                continue
            xs, ys = [g["bytes"] / 1e3 for g in group], [100 * g[key] for g in group]
            ax.plot(xs, ys, marker, color=colour, label=name, ms=6)
            points += zip(xs, ys)
            labels += [f"qp {g['qp']}" if "qp" in g else _short(g["method"]) for g in group]
        ax.axvline(470, color="grey", ls="--", lw=0.8, label="paper's 6-bit file: 0.47 MB")
        ax.set_xscale("log")
        ys = [p[1] for p in points]
        ax.set_ylim(min(ys) - 0.25 * (max(ys) - min(ys)) - 1, max(ys) + 0.2 * (max(ys) - min(ys)) + 1)
        xs = [p[0] for p in points]
        ax.set_xlim(min(xs) / 1.3, max(xs) * 1.8)
        ax.xaxis.set_major_locator(FixedLocator([t for t in SIZE_TICKS_KB if min(xs) / 1.3 <= t <= max(xs) * 1.8]))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("file size (kB, log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        placed.append((ax, points, labels))
    fig.suptitle("SqueezeNet v1.0 Deep Compression: size against accuracy (size-budget files scored on images "
                 "their calibration did not see)", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=4, frameon=False)
    for ax, points, labels in placed:
        place_labels(ax, points, labels, fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return fig


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
    reproduce(data=data, weights=weights, out="reproduce")
    print("wrote reproduce/table2.md, reproduce/table2.json, reproduce/size_accuracy.png")
    return 0
