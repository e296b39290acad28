"""Accuracy of the int8 engines (and of ``auto``) against fp32, calibrated on other images.

Two-fold cross-calibration on the ImageNet samples: the images are split in two halves by
position; each half is evaluated by an engine calibrated on the other half, so no image is
ever evaluated by a model calibrated on it, and all images count. One table, side by side.

    python bench/bench_int8_accuracy.py [--shared ../shared/data] [--weights FILE] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from squeezenet.data.imagenet import MAPPING_FILE, ImageNetFolder  # noqa: E402
from squeezenet.evaluation.evaluate import evaluate_weights  # noqa: E402
from squeezenet.weights import load_weights  # noqa: E402

ENGINES = ("torch", "onnxruntime-int8", "openvino-int8", "auto")


def split_folds(data: Path, root: Path) -> list[Path]:
    """Two validation folders of symlinks (even and odd positions) with the mapping file."""
    samples = ImageNetFolder(data).samples
    folds = [root / "fold0", root / "fold1"]
    for k, fold in enumerate(folds):
        (fold / "val").mkdir(parents=True)
        os.symlink((data / MAPPING_FILE).resolve(), fold / MAPPING_FILE)
        for i, (path, _) in enumerate(samples):
            if i % 2 == k:
                d = fold / "val" / path.parent.name
                d.mkdir(exist_ok=True)
                os.symlink(path.resolve(), d / path.name)
    return folds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shared", default="../shared/data", help="the shared data folder (default ../shared/data)")
    p.add_argument("--weights", default=None, help="weights (default: the published Deep Compression model)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    data = Path(a.shared) / "imagenet-samples"
    weights = Path(a.weights or Path(a.shared) / "squeezenet-deep-compression" / "compressed_SqueezeNet.net")
    if not data.is_dir() or not weights.is_file():
        print(f"skipped: needs {data} and {weights}")
        return 0
    lw = load_weights(weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folds = split_folds(data, Path(tmp))
        for engine in ENGINES:
            start = time.perf_counter()
            top1 = top5 = n = 0
            chosen = []
            for k in (0, 1):
                r = evaluate_weights(lw, folds[1 - k], engine=engine, workers=0, progress=False,
                                     calibration=folds[k] if engine != "torch" else None)
                top1 += r["top1"] * r["images"]
                top5 += r["top5"] * r["images"]
                n += r["images"]
                agreement = r.get("engine_choice", {}).get("int8_agreement", {})
                chosen.append(r["engine"] + "".join(f" ({k} agreed {v:.0%})" for k, v in agreement.items()))
            rows.append({"engine": engine, "top1": top1 / n, "top5": top5 / n, "images": n,
                         "chosen": chosen, "seconds": time.perf_counter() - start})
            print(f"  {engine}: top-1 {top1 / n:.4f} top-5 {top5 / n:.4f} ({', '.join(chosen)})", file=sys.stderr)
    fp32 = rows[0]
    print(f"int8 accuracy, 2-fold cross-calibration on {fp32['images']} ImageNet samples, {weights.name}")
    print(f"{'engine':<18} {'top-1':>7} {'top-5':>7} {'d top-1':>8} {'d top-5':>8}  chosen per fold")
    for r in rows:
        r["delta_top1"] = r["top1"] - fp32["top1"]
        r["delta_top5"] = r["top5"] - fp32["top5"]
        print(f"{r['engine']:<18} {r['top1']:>7.3f} {r['top5']:>7.3f} {100 * r['delta_top1']:>+7.1f}p "
              f"{100 * r['delta_top5']:>+7.1f}p  {'; '.join(r['chosen'])}")
    auto = rows[-1]
    if a.json:
        print(json.dumps({"weights": str(weights), "images": fp32["images"], "top1": auto["top1"], "top5": auto["top5"],
                          "fp32_top1": fp32["top1"], "fp32_top5": fp32["top5"], "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
