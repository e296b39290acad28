"""What the compression subcommands do, kept out of the argument parser."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import FormatError
from .format import MAGIC, compress_model, save_compressed, size_report
from .pipeline import CompressionConfig, parse_layer_spec, prune_stage_, share_stage_
from .pruning import prunable_layers

SQUEEZENET_FP32 = 4 * 1_248_424
ALEXNET_FP32 = 4 * 60_965_224


def calibration_batch(folder, preprocessing, n: int = 16) -> torch.Tensor:
    """``n`` preprocessed images drawn deterministically from a folder of unlabelled images."""
    from .finetune import UnlabelledImages
    ds = UnlabelledImages(folder, preprocessing.transform(), limit=n)
    return torch.stack([ds[i] for i in range(len(ds))])


def compress_weights(weights, *, out=None, bits=8, density="auto", size_budget: int | None = None,
                     calibration=None, finetune_steps: int = 0, finetune_lr: float = 1e-4,
                     finetune_batch: int = 16, codebook_dtype: str = "auto", log=print) -> tuple[bytes, dict]:
    """Full compression without labels: prune, choose bits (fixed or for a budget), share
    weights, optionally fine-tune centroids by distillation, Huffman-code, write.

    Returns (file bytes, report). ``report["bytes"]`` is the exact file size.
    """
    from ..weights import LoadedWeights, load_weights
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    if (size_budget or finetune_steps) and calibration is None:
        raise ValueError("--size-budget and --finetune-steps need --calibration DIR (unlabelled images)")
    start = time.perf_counter()
    teacher = lw.build_model()
    model = lw.build_model()
    config = CompressionConfig(density=density, bits=bits, codebook_dtype=codebook_dtype)
    achieved = prune_stage_(model, config)
    names = list(prunable_layers(model))
    kept = sum(int(m.weight_mask.sum()) for m in prunable_layers(model).values())
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    log(f"pruned: {kept:,} of {total:,} weights kept ({kept / total:.1%})")
    report = {"weights": str(lw.path), "model": lw.model_name, "kept_weights": kept, "total_weights": total,
              "density": achieved}
    if size_budget:
        from .sensitivity import choose_bits_for_budget
        images = calibration_batch(calibration, lw.preprocessing)
        layer_bits, analysis = choose_bits_for_budget(model, images, size_budget)
        log(f"bits chosen for {size_budget:,} bytes: {sorted(layer_bits.values())}")
    else:
        layer_bits = config.layer_bits(names)
    info = share_stage_(model, layer_bits, codebook_dtype)
    report.update({"bits": info["bits"], "codebook_dtype": info["codebook_dtype"],
                   "lossless_layers": sum(info["lossless"].values())})
    if finetune_steps:
        from .finetune import UnlabelledImages, distill_shared_
        ds = UnlabelledImages(calibration, lw.preprocessing.transform(), limit=finetune_steps * finetune_batch)
        loader = torch.utils.data.DataLoader(ds, batch_size=finetune_batch, shuffle=True, num_workers=1,
                                             generator=torch.Generator().manual_seed(0))
        losses = distill_shared_(model, teacher, loader, finetune_steps, finetune_lr)
        report["finetune"] = {"steps": finetune_steps, "first_loss": losses[0], "last_loss": losses[-1]}
        log(f"distillation: KL {losses[0]:.4f} -> {losses[-1]:.4f} over {finetune_steps} steps")
    data = compress_model(model, lw.model_name, model_kwargs=lw.model_kwargs,
                          preprocessing=lw.preprocessing.to_dict(), class_names=lw.class_names,
                          codebook_dtype=info["codebook_dtype"])
    if out is not None:
        save_compressed(out, data)
        report["out"] = str(out)
    report["bytes"] = len(data)
    report["seconds"] = time.perf_counter() - start
    report["ratio_vs_squeezenet_fp32"] = SQUEEZENET_FP32 / len(data)
    report["ratio_vs_alexnet_fp32"] = ALEXNET_FP32 / len(data)
    return data, report


def compress_command(args) -> dict:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    bits = args.bits if args.bits is not None else (args.bits_per_layer or 8)
    if args.data is not None:
        from .retrain import compress_with_retraining
        if args.size_budget:
            raise ValueError("--size-budget is not combined with --data retraining; give --bits")
        report = compress_with_retraining(args.weights, args.data, args.out, bits=bits,
                                          density="profile" if args.density == "auto" else args.density,
                                          retrain_epochs=args.retrain_epochs, config=args.config,
                                          max_steps=args.max_steps or 0, lr=args.retrain_lr, log=log)
        log(f"wrote {args.out}: {report['bytes']:,} bytes, {report['ratio_vs_fp32']:.1f}x smaller than fp32; "
            f"top-1 {report['top1']:.4f} ({report['top1_lost'] * 100:+.2f} points lost)")
        return report
    _, report = compress_weights(args.weights, out=args.out, bits=bits, density=args.density,
                                 size_budget=args.size_budget, calibration=args.calibration,
                                 finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
                                 codebook_dtype=args.codebook_dtype, log=log)
    log(f"wrote {args.out}: {report['bytes']:,} bytes ({report['ratio_vs_squeezenet_fp32']:.1f}x smaller than "
        f"fp32 SqueezeNet, {report['ratio_vs_alexnet_fp32']:.0f}x smaller than fp32 AlexNet) in {report['seconds']:.1f} s")
    return report


def net_size_report(path) -> dict:
    """Byte accounting of the published ``.net`` format."""
    from .caffe_net import CODEBOOK_SIZE, encode_positions, read_caffe_net
    layers = read_caffe_net(path)
    rows = []
    comp = {"header": 4 * len(layers), "codebooks": 0, "biases": 0, "weight_codes": 0, "position_codes": 0}
    for l in layers:
        n = int(np.count_nonzero(l.indices))
        numel = int(np.prod(l.shape))
        pos = np.flatnonzero(l.indices)
        gaps, _ = encode_positions(pos, l.indices[pos])
        entries = gaps.size
        row = {"layer": l.module, "weights": numel, "kept": n, "density": n / numel, "bits": 8,
               "codebook": 4 * CODEBOOK_SIZE, "bias": 4 * l.shape[0], "code_tables": 0, "weight_codes": entries,
               "position_codes": (entries + 1) // 2, "fillers": entries - n}
        row["bytes"] = row["codebook"] + row["bias"] + row["weight_codes"] + row["position_codes"]
        comp["codebooks"] += row["codebook"]
        comp["biases"] += row["bias"]
        comp["weight_codes"] += row["weight_codes"]
        comp["position_codes"] += row["position_codes"]
        rows.append(row)
    size = Path(path).stat().st_size
    assert sum(comp.values()) == size
    return {"bytes": size, "format": "published .net", "model": "squeezenet1_0", "components": comp, "layers": rows,
            "kept_weights": sum(r["kept"] for r in rows), "ratio_vs_squeezenet_fp32": SQUEEZENET_FP32 / size,
            "ratio_vs_alexnet_fp32": ALEXNET_FP32 / size}


def size_of_file(path) -> dict:
    """Size report of a ``.sqz`` or published ``.net`` file, detected by content."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        from .format import MAX_FILE
        if path.stat().st_size > MAX_FILE:
            raise FormatError(f"{path}: too large to be a compressed model")
        rep = size_report(path.read_bytes(), path)
        rep["format"] = "squeezenet-compressed"
        return rep
    return net_size_report(path)


def format_size_report(rep: dict) -> str:
    head = (f"{'layer':<24} {'weights':>8} {'kept':>8} {'dens':>6} {'bits':>4} {'codebook':>8} {'bias':>6} "
            f"{'tables':>6} {'w-codes':>8} {'p-codes':>8} {'bytes':>8}")
    lines = [f"{rep.get('format')} model {rep['model']}", head, "-" * len(head)]
    for r in rep["layers"]:
        lines.append(f"{r['layer']:<24} {r['weights']:>8,} {r['kept']:>8,} {r['density']:>6.1%} {r['bits']:>4} "
                     f"{r['codebook']:>8,} {r['bias']:>6,} {r['code_tables']:>6,} {r['weight_codes']:>8,} "
                     f"{r['position_codes']:>8,} {r['bytes']:>8,}")
    lines.append("-" * len(head))
    lines.append("components: " + ", ".join(f"{k} {v:,}" for k, v in rep["components"].items()))
    lines.append(f"total {rep['bytes']:,} bytes ({rep['bytes'] / 1e6:.3f} MB); "
                 f"{rep['ratio_vs_squeezenet_fp32']:.1f}x smaller than fp32 SqueezeNet (4,993,696 bytes), "
                 f"{rep['ratio_vs_alexnet_fp32']:.0f}x smaller than fp32 AlexNet (243,860,896 bytes)")
    return "\n".join(lines)
