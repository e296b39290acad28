"""Deep Compression without retraining: prune, share weights, Huffman-code, write.

The retraining stages (masked retraining, centroid fine-tuning with labels or by
distillation) live in ``squeezenet.compression.finetune`` and the training loop.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .format import compress_model
from .pruning import PruneConfig, prunable_layers, prune_
from .quantization import place_shared_weights_, share_weights_


def parse_layer_spec(spec: str | float | int | dict | None, layers: list[str], what: str,
                     cast=float) -> dict:
    """Parse ``"0.5"`` (every layer) or ``"features.3.*=0.5,classifier.1=0.2"`` into layer -> value.

    Patterns are shell globs over module names; later entries win. Unknown patterns fail.
    """
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    if isinstance(spec, (int, float)):
        return {n: cast(spec) for n in layers}
    out: dict = {}
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            try:
                value = cast(part)
            except ValueError:
                raise ValueError(f"{what}: cannot read {part!r} (expected a number or PATTERN=VALUE)") from None
            out.update({n: value for n in layers})
            continue
        pattern, _, text = part.partition("=")
        try:
            value = cast(text)
        except ValueError:
            raise ValueError(f"{what}: cannot read value {text!r} for {pattern!r}") from None
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pattern.strip())]
        if not hits:
            raise ValueError(f"{what}: pattern {pattern!r} matches no layer; layers are {', '.join(layers)}")
        out.update({n: value for n in hits})
    return out


@dataclass
class CompressionConfig:
    """Settings of one compression run.

    Attributes:
        density: "auto" (the default profile for dense weights, none for already-sparse
            ones), "profile", "keep" (no pruning), a float, or a layer spec / dict.
        bits: bits per layer, an int or a layer spec / dict (1..8).
        codebook_dtype: "f4" (exact), "f2" (half the codebook bytes) or "auto": f4 for layers
            whose weights were already shared (kept exactly), f2 where k-means changed them
            (its error dwarfs half-precision rounding).
        kmeans_iters: Lloyd iterations.
        codec: "range" (context-modelled range coding, file version 2) or "huffman" (the
            paper's coding, version 1).
    """
    density: str | float | dict = "auto"
    bits: int | str | dict = 8
    codebook_dtype: str = "auto"
    kmeans_iters: int = 30
    sensitivity: float | None = None
    codec: str = "range"

    def layer_bits(self, layers: list[str]) -> dict[str, int]:
        bits = parse_layer_spec(self.bits, layers, "bits", int)
        full = {n: bits.get(n, 8) for n in layers}
        for n, b in full.items():
            if not 1 <= b <= 8:
                raise ValueError(f"bits must be in 1..8, got {b} for {n}")
        return full


def overall_density(model: nn.Module) -> float:
    layers = prunable_layers(model).values()
    total = sum(m.weight.numel() for m in layers)
    return sum(int((m.weight != 0).sum()) for m in layers) / max(total, 1)


def prune_stage_(model: nn.Module, config: CompressionConfig) -> dict[str, float]:
    """Prune in place per ``config.density`` (or ``config.sensitivity``); returns density per layer."""
    names = list(prunable_layers(model))
    density = config.density
    if density == "auto":
        density = "keep" if overall_density(model) < 0.6 else "profile"
    if config.sensitivity is not None:
        return prune_(model, PruneConfig(sensitivity=config.sensitivity))
    if density == "keep":
        return prune_(model, PruneConfig(density={n: 1.0 for n in names}))
    if density == "profile":
        return prune_(model, PruneConfig())
    spec = parse_layer_spec(density, names, "density")
    for n, d in spec.items():
        if not 0.0 < d <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {d} for {n}")
    return prune_(model, PruneConfig(density=spec))


def share_stage_(model: nn.Module, bits: dict[str, int], codebook_dtype: str = "auto", iters: int = 30) -> dict:
    """Weight sharing in place with the given bits per layer; picks codebook storage per layer
    and rounds f2 codebooks in the model too, so the model equals what the file will hold."""
    layers = prunable_layers(model)
    names = list(layers)
    exact = {n: int(torch.unique(layers[n].weight[layers[n].weight_mask]).numel()) <= 2 ** bits[n] for n in names}
    centroids = share_weights_(model, bits, iters)
    if codebook_dtype == "auto":
        dtypes = {n: "f4" if exact[n] else "f2" for n in names}
    elif codebook_dtype in ("f4", "f2"):
        dtypes = {n: codebook_dtype for n in names}
    else:
        raise ValueError(f"codebook dtype must be auto, f4 or f2, got {codebook_dtype!r}")
    with torch.no_grad():
        for n in names:
            if dtypes[n] == "f2":
                layers[n].weight_codebook.copy_(layers[n].weight_codebook.half().float())
                place_shared_weights_(layers[n])
    return {"bits": bits, "centroids": centroids, "codebook_dtype": dtypes, "lossless": exact}


def prune_and_share_(model: nn.Module, config: CompressionConfig) -> dict:
    """Prune (per ``config.density``) and share weights (per ``config.bits``) in place."""
    achieved = prune_stage_(model, config)
    info = share_stage_(model, config.layer_bits(list(prunable_layers(model))), config.codebook_dtype,
                        config.kmeans_iters)
    info["density"] = achieved
    return info


def compress_loaded(weights, config: CompressionConfig | None = None) -> tuple[bytes, nn.Module, dict]:
    """Compress ``LoadedWeights`` without retraining; returns (file bytes, shared model, info)."""
    config = config or CompressionConfig()
    start = time.perf_counter()
    model = weights.build_model()
    info = prune_and_share_(model, config)
    data = compress_model(model, weights.model_name, model_kwargs=weights.model_kwargs,
                          preprocessing=weights.preprocessing.to_dict(), class_names=weights.class_names,
                          codebook_dtype=info["codebook_dtype"], codec=config.codec)
    info["seconds"] = time.perf_counter() - start
    info["bytes"] = len(data)
    return data, model, info
