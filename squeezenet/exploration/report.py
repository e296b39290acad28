"""CSV, JSON, plots (the paper's Figure 3 layout; a bar chart for bypass) and a Markdown report."""
from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

from ..models.squeezenet import squeezenet_from_metaparameters
from .paper import PAPER, WIDTH_KEYS


def paper_width() -> dict:
    """base_e / incr_e / freq as the metaparameter generator defaults them (the paper's)."""

    params = inspect.signature(squeezenet_from_metaparameters).parameters
    return {k: params[k].default for k in WIDTH_KEYS}


def write_outputs(sweep: str, rows: list[dict], out: Path) -> list[str]:
    out = Path(out)
    files = []
    keys = ["id", "sweep", "value", "params", "bytes", "mb", "macs", "top1", "top5", "best_top1", "epochs",
            "seconds", "train_images"]
    with open(out / f"{sweep}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    files.append(str(out / f"{sweep}.csv"))
    (out / f"{sweep}.json").write_text(json.dumps(rows, indent=1))
    files.append(str(out / f"{sweep}.json"))
    files.append(plot(sweep, rows, out / f"{sweep}.png"))
    (out / f"{sweep}.md").write_text(markdown(sweep, rows))
    files.append(str(out / f"{sweep}.md"))
    return files


def plot(sweep: str, rows: list[dict], path: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if sweep == "bypass":
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        names = [str(r["value"]) for r in rows]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [100 * r["top1"] for r in rows], 0.4, label="top-1 (ours)")
        ax.bar([i + 0.2 for i in x], [100 * r["top5"] for r in rows], 0.4, label="top-5 (ours)")
        for i, r in enumerate(rows):
            ax.annotate(f"{100 * r['top1']:.1f}", (i - 0.2, 100 * r["top1"]), ha="center", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(list(x), names)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("Bypass variants (paper Table 3 layout)", fontsize=10)
        ax.legend(loc="lower right")
    else:
        # Top-1 and top-5 on their own axes: on one axis the gap between them flattens both curves.
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
        mb = [r["mb"] for r in rows]
        for ax, key, style in ((axes[0], "top1", "o-"), (axes[1], "top5", "s--")):
            ax.plot(mb, [100 * r[key] for r in rows], style)
            for r in rows:
                ax.annotate(f"{r['value']}", (r["mb"], 100 * r[key]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.set_xlabel("model size (MB, fp32)")
            ax.set_ylabel(f"{key[:3]}-{key[3:]} accuracy (%)")
            ax.grid(alpha=0.3)
        label = "squeeze ratio SR" if sweep == "sr" else "fraction of 3x3 filters (pct3x3)"
        fig.suptitle(f"Accuracy vs model size, sweeping the {label}\n(paper Figure 3 layout; points labelled "
                     f"by value)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _fixed_settings(rows: list[dict]) -> list[str]:
    """The metaparameters every point shares (the width may be narrower than the paper's)."""
    if not rows:
        return []
    kws = [r.get("model_kwargs") or {} for r in rows]
    shared = {k: v for k, v in kws[0].items() if all(kw.get(k) == v for kw in kws)}
    paper = paper_width()
    width = {k: shared.get(k, d) for k, d in paper.items()}
    note = "" if width == paper else (" (narrower than the paper's "
                                      + "/".join(str(v) for v in paper.values()) + ")")
    train = rows[0].get("train_images", "all")
    return [f"Fixed for every point: base_e {width['base_e']}, incr_e {width['incr_e']}, freq {width['freq']}{note}; "
            f"training images per epoch: {train}.", ""]


def markdown(sweep: str, rows: list[dict]) -> str:
    lines = [f"# Sweep: {sweep}", "",
             "Measured here on CIFAR-10 (32x32 stem, short CPU budget) -- a different dataset and budget from "
             "the paper's ImageNet runs; compare trends, not values.", "",
             *_fixed_settings(rows),
             "| point | params | fp32 MB | MACs | top-1 | top-5 | epochs | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['id']} | {r['params']:,} | {r['mb']:.2f} | {r['macs']:,} | {r['top1']:.4f} "
                     f"| {r['top5']:.4f} | {r['epochs']} | {r['seconds']:.0f} |")
    lines += ["", "Paper (ImageNet):", ""]
    for p in PAPER[sweep]:
        value, mb, t1, t5 = p
        lines.append(f"- {sweep} = {value}: " + ", ".join(x for x in (
            f"{mb} MB" if mb else "", f"top-1 {t1}%" if t1 else "", f"top-5 {t5}%" if t5 else "") if x))
    return "\n".join(lines) + "\n"
