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


def calibration_batch(folder, preprocessing, n: int = 16, seed: int = 0) -> torch.Tensor:
    """``n`` preprocessed images drawn deterministically from a folder of unlabelled images."""
    from .finetune import UnlabelledImages
    ds = UnlabelledImages(folder, preprocessing.transform(), limit=n, seed=seed)
    return torch.stack([ds[i] for i in range(len(ds))])


def calibration_views(folder, preprocessing, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` preprocessed images from a folder, half of them mirrored (more views per image)."""
    x = calibration_batch(folder, preprocessing, n, seed)
    return torch.where((torch.arange(x.shape[0]) % 2 == 1).view(-1, 1, 1, 1), x.flip(3), x)


def compress_weights(weights, *, out=None, bits=None, density="auto", size_budget: int | None = None,
                     calibration=None, finetune_steps: int | None = None, finetune_lr: float = 1e-4,
                     finetune_batch: int = 16, codebook_dtype: str = "auto", codec: str = "range",
                     calibration_images: int = 256, log=print) -> tuple[bytes, dict]:
    """Full compression without labels: prune, quantize (fixed bits or for a budget), optionally
    fine-tune centroids by distillation, entropy-code, write.

    With ``codec="range"`` (the default) a size budget is met by rate-distortion optimised
    quantization (``rdquant``) and the file is version 2; ``codec="huffman"`` is the paper's
    k-means + Huffman coding (version 1), its budget met by bit allocation.

    Returns (file bytes, report). ``report["bytes"]`` is the exact file size.

    Raises:
        ValueError: on bad options or a budget no quantization fits.
    """
    from ..weights import LoadedWeights, load_weights
    from .format import MAX_FILE, compress_model
    if codec not in ("range", "huffman"):
        raise ValueError(f"codec must be 'range' or 'huffman', got {codec!r}")
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    if finetune_steps is None:
        # 150 steps of 16 views: most of what distillation recovers, and compress stays within
        # 10 minutes on 2 cores (about 2.3 s a step for SqueezeNet v1.0 at 227 px)
        finetune_steps = 150 if size_budget and codec == "range" else 0
    if (size_budget or finetune_steps) and calibration is None:
        raise ValueError("a size budget and centroid fine-tuning need calibration images (unlabelled)")
    if size_budget is not None and not 0 < size_budget <= MAX_FILE:
        raise ValueError(f"size budget must be a positive number of bytes, got {size_budget}")
    if size_budget and bits is not None:
        raise ValueError("give bits or a size budget, not both")
    start = time.perf_counter()
    teacher = lw.build_model()
    model = lw.build_model()
    config = CompressionConfig(density=density, bits=8 if bits is None else bits, codebook_dtype=codebook_dtype)
    achieved = prune_stage_(model, config)
    names = list(prunable_layers(model))
    kept = sum(int(m.weight_mask.sum()) for m in prunable_layers(model).values())
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    log(f"pruned: {kept:,} of {total:,} weights kept ({kept / total:.1%})")
    report = {"weights": str(lw.path), "model": lw.model_name, "codec": codec, "kept_weights": kept,
              "total_weights": total, "density": achieved}
    bias_dtype = "f4"

    def serialize(m, cb_dtype="f2"):
        return compress_model(m, lw.model_name, model_kwargs=lw.model_kwargs, preprocessing=lw.preprocessing.to_dict(),
                              class_names=lw.class_names, codebook_dtype=cb_dtype, codec=codec, bias_dtype=bias_dtype)

    if size_budget and codec == "range":
        from .rdquant import fisher_sensitivity, quantize_for_budget_
        bias_dtype = "f2"  # at a budget, 2 bytes a bias buy more than the rounding costs
        with torch.no_grad():  # the file will hold half-precision biases: tune with them
            for m in prunable_layers(model).values():
                if m.bias is not None:
                    m.bias.copy_(m.bias.half().float())
        images = calibration_views(calibration, lw.preprocessing, calibration_images)
        sens = fisher_sensitivity(model, images)
        log(f"sensitivity from {images.shape[0]} calibration images; fitting {size_budget:,} bytes")
        # Distilled centroids pack a few bytes longer or shorter: leave them 16 bytes a layer.
        margin = 16 * len(names) if finetune_steps else 0
        info = quantize_for_budget_(model, sens, max(size_budget - margin, 1), serialize)
        cb_dtype = "f2"
        report.update({"slope": info["lam"], "levels": info["levels"], "kept_weights": info["kept_weights"]})
        log(f"quantized: {info['kept_weights']:,} weights kept, levels per layer {min(info['levels'].values())}.."
            f"{max(info['levels'].values())}, {info['bytes']:,} bytes")
    else:
        if size_budget:
            from .sensitivity import choose_bits_for_budget
            images = calibration_batch(calibration, lw.preprocessing)
            layer_bits, _ = choose_bits_for_budget(model, images, size_budget)
            log(f"bits chosen for {size_budget:,} bytes: {sorted(layer_bits.values())}")
        else:
            layer_bits = config.layer_bits(names)
        info = share_stage_(model, layer_bits, codebook_dtype)
        cb_dtype = info["codebook_dtype"]
        report.update({"bits": info["bits"], "codebook_dtype": info["codebook_dtype"],
                       "lossless_layers": sum(info["lossless"].values())})
    if finetune_steps:
        from .finetune import UnlabelledImages, distill_shared_
        # Random crops and mirrors: a few hundred calibration images then give thousands of views.
        ds = UnlabelledImages(calibration, lw.preprocessing.transform(augment=True), limit=finetune_steps * finetune_batch)
        loader = torch.utils.data.DataLoader(ds, batch_size=finetune_batch, shuffle=True, num_workers=1,
                                             generator=torch.Generator().manual_seed(0))
        before = {n: m.weight_codebook.detach().clone() for n, m in prunable_layers(model).items()}
        losses = distill_shared_(model, teacher, loader, finetune_steps, finetune_lr)
        _round_to_file_precision_(model, cb_dtype, bias_dtype)
        report["finetune"] = {"steps": finetune_steps, "first_loss": losses[0], "last_loss": losses[-1]}
        log(f"distillation: KL {losses[0]:.4f} -> {losses[-1]:.4f} over {finetune_steps} steps")
        data = serialize(model, cb_dtype)
        if size_budget and len(data) > size_budget:
            # Packed codebooks are a few bytes longer or shorter once centroids move; where that
            # crosses the budget, put back the centroids that fitted (their biases stay tuned).
            _restore_codebooks_(model, before)
            log(f"distilled centroids took {len(data) - size_budget} bytes too many: kept the biases only")
            report["finetune"]["centroids_kept"] = False
            data = serialize(model, cb_dtype)
    else:
        data = serialize(model, cb_dtype)
    if size_budget and len(data) > size_budget:  # the budget is a hard limit, whatever happened above
        raise ValueError(f"the file came out at {len(data):,} bytes, over the budget of {size_budget:,}")
    if out is not None:
        save_compressed(out, data)
        report["out"] = str(out)
    report["bytes"] = len(data)
    report["seconds"] = time.perf_counter() - start
    report["ratio_vs_squeezenet_fp32"] = SQUEEZENET_FP32 / len(data)
    report["ratio_vs_alexnet_fp32"] = ALEXNET_FP32 / len(data)
    return data, report


@torch.no_grad()
def _restore_codebooks_(model, codebooks: dict) -> None:
    from .quantization import place_shared_weights_
    for name, m in prunable_layers(model).items():
        m.weight_codebook.copy_(codebooks[name])
        place_shared_weights_(m)


@torch.no_grad()
def _round_to_file_precision_(model, cb_dtype, bias_dtype: str) -> None:
    """Round fine-tuned centroids and biases to what the file stores, so model == file."""
    from .quantization import place_shared_weights_
    for name, m in prunable_layers(model).items():
        dt = cb_dtype.get(name, "f4") if isinstance(cb_dtype, dict) else cb_dtype
        if dt == "f2":
            m.weight_codebook.copy_(m.weight_codebook.half().float())
            place_shared_weights_(m)
        if bias_dtype == "f2" and m.bias is not None:
            m.bias.copy_(m.bias.half().float())


def compress_command(args) -> dict:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    bits = args.bits if args.bits is not None else args.bits_per_layer
    if args.data is not None:
        bits = 8 if bits is None else bits
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
                                 codebook_dtype=args.codebook_dtype, codec=args.codec, log=log)
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
