"""What the compression subcommands do: parse, call ``squeezenet.compression``, print."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..compression import CompressionConfig, RetrainConfig
from ..compression.api import compress_weights
from ..compression.retrain import compress_with_retraining
from ..errors import ConfigError, FormatError
from ..weights import load_weights
from ..weights.caffe_net import CODEBOOK_SIZE, encode_positions, read_caffe_net
from ..weights.sqz import ALEXNET_FP32, MAGIC, MAX_FILE, SQUEEZENET_FP32, size_report


def model_kwargs_arg(text: str | None) -> dict:
    """``--model-kwargs`` JSON into a dict, with a one-line error otherwise."""
    if not text:
        return {}
    try:
        kw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-kwargs is not valid JSON: {e}") from None
    if not isinstance(kw, dict):
        raise ConfigError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    return kw


def weights_with_model(path, model: str | None, model_kwargs: str | None):
    """``load_weights(path)``, given the architecture ``--model`` names where the file has none."""
    lw = load_weights(path)
    if model:
        lw = lw.with_architecture(model, model_kwargs_arg(model_kwargs))
    elif model_kwargs:
        raise ConfigError("--model-kwargs needs --model")
    return lw


def compress_command(args) -> dict:
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    bits = args.bits if args.bits is not None else args.bits_per_layer
    config = CompressionConfig(density=args.density, bits=8 if bits is None else bits, size_budget=args.size_budget,
                               codebook_dtype=args.codebook_dtype, codec=args.codec,
                               finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
                               fold_batch_norm=args.fold_batch_norm, output=args.output, quantizer=args.quantizer,
                               error_feedback=args.error_feedback, effort=args.effort)
    lw = weights_with_model(args.weights, args.model, args.model_kwargs)
    if args.data is not None:
        given = [flag for flag, value, default in (("--calibration", args.calibration, None),
                                                   ("--finetune-steps", args.finetune_steps, None),
                                                   ("--finetune-lr", args.finetune_lr, 1e-4)) if value != default]
        if given:
            raise ConfigError(f"{', '.join(given)}: distillation on unlabelled inputs; with --data the model "
                              "retrains on the labelled images instead (--retrain-epochs, --retrain-lr)")
        retraining = RetrainConfig(args.data, epochs=args.retrain_epochs, lr=args.retrain_lr,
                                   max_steps=args.max_steps or 0, recipe=args.config)
        report = compress_with_retraining(lw, config, retraining, args.out, log=log)
        log(f"wrote {args.out}: {report['bytes']:,} bytes, {report['ratio']:.1f}x smaller than fp32; "
            f"top-1 {report['top1']:.4f} ({report['top1_lost'] * 100:+.2f} points lost)")
        return report
    given = [flag for flag, value in (("--retrain-epochs", args.retrain_epochs != 1), ("--retrain-lr", args.retrain_lr),
                                      ("--config", args.config), ("--max-steps", args.max_steps)) if value]
    if given:
        raise ConfigError(f"{', '.join(given)} need --data (labelled images to retrain on)")
    if (args.size_budget or args.finetune_steps) and args.calibration is None:
        raise ConfigError("--size-budget and --finetune-steps need --calibration (a folder of unlabelled images, "
                          "a .pt/.npy/.npz file of inputs, or package.module:function)")
    _, _, report = compress_weights(lw, config, calibration=args.calibration, out=args.out, log=log,
                                    progress=False if args.json else None)
    log(f"wrote {args.out}: {report['bytes']:,} bytes, {report['ratio']:.1f}x smaller than the model's fp32 "
        f"weights ({report['fp32_bytes']:,} bytes) in {report['seconds']:.1f} s")
    return report


def net_size_report(path) -> dict:
    """Byte accounting of the published ``.net`` format."""
    layers = read_caffe_net(path)
    rows = []
    comp = {"header": 4 * len(layers), "codebooks": 0, "biases": 0, "weight_codes": 0, "position_codes": 0}
    for layer in layers:
        n = int(np.count_nonzero(layer.indices))
        numel = int(np.prod(layer.shape))
        pos = np.flatnonzero(layer.indices)
        gaps, _ = encode_positions(pos, layer.indices[pos])
        entries = gaps.size
        row = {"layer": layer.module, "weights": numel, "kept": n, "density": n / numel, "bits": 8,
               "codebook": 4 * CODEBOOK_SIZE, "bias": 4 * layer.shape[0], "code_tables": 0, "weight_codes": entries,
               "position_codes": (entries + 1) // 2, "fillers": entries - n}
        row["bytes"] = row["codebook"] + row["bias"] + row["weight_codes"] + row["position_codes"]
        comp["codebooks"] += row["codebook"]
        comp["biases"] += row["bias"]
        comp["weight_codes"] += row["weight_codes"]
        comp["position_codes"] += row["position_codes"]
        rows.append(row)
    size = Path(path).stat().st_size
    if sum(comp.values()) != size:  # read_caffe_net checked the layout: a mismatch is a bug here
        raise RuntimeError(f"size accounting gives {sum(comp.values())} bytes for a file of {size}")
    fp32 = sum(r["weights"] * 4 + r["bias"] for r in rows)
    return {"bytes": size, "format": "published .net", "model": "squeezenet1_0", "components": comp, "layers": rows,
            "kept_weights": sum(r["kept"] for r in rows), "fp32_bytes": fp32, "ratio": fp32 / size,
            "ratio_vs_squeezenet_fp32": SQUEEZENET_FP32 / size,
            "ratio_vs_alexnet_fp32": ALEXNET_FP32 / size}


def size_of_file(path) -> dict:
    """Size report of a ``.sqz`` or published ``.net`` file, detected by content."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
    if head == MAGIC:
        if path.stat().st_size > MAX_FILE:
            raise FormatError(f"{path}: too large to be a compressed model")
        rep = size_report(path.read_bytes(), path)
        rep["format"] = "squeezenet-compressed"
        return rep
    return net_size_report(path)


def format_size_report(rep: dict) -> str:
    head = (f"{'layer':<24} {'weights':>8} {'kept':>8} {'dens':>6} {'bits':>4} {'codebook':>8} {'bias':>6} "
            f"{'tables':>6} {'w-codes':>8} {'p-codes':>8} {'bytes':>8}")
    model = rep["model"] or "(state dict, architecture not recorded)"
    lines = [f"{rep.get('format')} model {model}", head, "-" * len(head)]
    for r in rep["layers"]:
        lines.append(f"{r['layer']:<24} {r['weights']:>8,} {r['kept']:>8,} {r['density']:>6.1%} {r['bits']:>4} "
                     f"{r['codebook']:>8,} {r['bias']:>6,} {r['code_tables']:>6,} {r['weight_codes']:>8,} "
                     f"{r['position_codes']:>8,} {r['bytes']:>8,}")
    lines.append("-" * len(head))
    lines.append("components: " + ", ".join(f"{k} {v:,}" for k, v in rep["components"].items()))
    total = (f"total {rep['bytes']:,} bytes ({rep['bytes'] / 1e6:.3f} MB); {rep['ratio']:.1f}x smaller than "
             f"the model's own fp32 weights ({rep['fp32_bytes']:,} bytes)")
    if rep["model"] == "squeezenet1_0" and rep.get("num_classes", 1000) == 1000:  # the paper's comparison
        total += f", {rep['ratio_vs_alexnet_fp32']:.0f}x smaller than fp32 AlexNet (243,860,896 bytes)"
    lines.append(total)
    return "\n".join(lines)
