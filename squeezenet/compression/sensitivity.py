"""Per-layer sensitivity to weight sharing and pruning, and bit allocation for a size budget.

Two measures, both on unlabelled calibration images (no labels, so evaluation data stays
unseen):

* ``layer`` (fast): each layer's own output error, ||conv(x, W_q) - conv(x, W)||^2 /
  ||conv(x, W)||^2, on the inputs the uncompressed model feeds it. One convolution per
  (layer, setting).
* ``network`` (slow, direct): top-1 agreement of the whole network with the uncompressed
  one when only that layer is changed.

``allocate_bits`` then lowers, step by step, the bits of the layer that loses least error per
byte saved until the encoded size fits the budget.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..weights.codecs import LayerInput, get_codec
from ..models.layers import is_tensor_layer
from .pruning import magnitude_mask, prunable_layers
from .quantization import kmeans_1d


def _quantized(weight: torch.Tensor, mask: torch.Tensor, bits: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    flat = weight.detach().reshape(-1)
    keep = mask.reshape(-1)
    c, labels = kmeans_1d(flat[keep].double().numpy(), 2 ** bits)
    out = torch.zeros_like(flat)
    out[keep] = torch.from_numpy(c[labels]).to(out.dtype)
    index = np.zeros(flat.numel(), np.int64)
    index[keep.numpy()] = labels
    return out.reshape(weight.shape), c, index


def _apply(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return F.conv2d(x, weight, module.bias, module.stride, module.padding, module.dilation, module.groups)
    return F.linear(x, weight, module.bias)


@torch.no_grad()
def capture_inputs(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each conv / linear layer receives for ``images`` (tensor layers have none)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0].detach().clone()))
             for n, m in prunable_layers(model).items() if not is_tensor_layer(m)]
    try:
        model.eval()(images)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def sensitivity(model: nn.Module, images: torch.Tensor, bits_options=(2, 3, 4, 5, 6, 7, 8),
                densities=None, metric: str = "layer") -> dict:
    """Error per layer and setting.

    Args:
        model: the uncompressed (or pruned) model; weights equal to zero count as pruned.
        images: a calibration batch, already preprocessed.
        bits_options: bit widths to try (all other layers untouched).
        densities: optional densities to try (magnitude pruning of that layer alone, unquantized).
        metric: "layer" (relative output error of the layer) or "network" (1 - top-1 agreement).
    Returns:
        ``{"bits": {layer: {b: error}}, "density": {layer: {d: error}}, "metric": metric}``
    """
    if metric not in ("layer", "network"):
        raise ConfigError(f"metric must be 'layer' or 'network', got {metric!r}")
    model.eval()
    layers = prunable_layers(model)
    inputs = capture_inputs(model, images) if metric == "layer" else None
    ref_top1 = model(images).argmax(1) if metric == "network" else None
    result = {"bits": {}, "density": {}, "metric": metric}

    def error(name: str, module: nn.Module, new_weight: torch.Tensor) -> float:
        if metric == "layer" and is_tensor_layer(module):  # no input of its own: the weights' error
            return float(((new_weight - module.weight) ** 2).sum() / (module.weight ** 2).sum().clamp_min(1e-30))
        if metric == "layer":
            x = inputs[name]
            ref = _apply(module, x, module.weight)
            return float(((_apply(module, x, new_weight) - ref) ** 2).sum() / (ref ** 2).sum().clamp_min(1e-30))
        old = module.weight.data.clone()
        module.weight.data.copy_(new_weight)
        try:
            agree = (model(images).argmax(1) == ref_top1).float().mean().item()
        finally:
            module.weight.data.copy_(old)
        return 1.0 - agree

    for name, m in layers.items():
        mask = m.weight != 0
        result["bits"][name] = {int(b): error(name, m, _quantized(m.weight, mask, int(b))[0]) for b in bits_options}
        if densities:
            result["density"][name] = {float(d): error(name, m, m.weight * magnitude_mask(m.weight, float(d)))
                                       for d in densities}
    return result


def layer_sizes(model: nn.Module, bits_options=(2, 3, 4, 5, 6, 7, 8), codebook_dtype: str = "f2") -> dict:
    """Encoded bytes of each layer at each bit width (weights equal to zero count as pruned)."""
    sizes = {}
    for name, m in prunable_layers(model).items():
        mask = (m.weight != 0).cpu()
        bias = m.bias.detach().cpu().numpy() if m.bias is not None else None
        sizes[name] = {}
        for b in bits_options:
            _, c, index = _quantized(m.weight.cpu(), mask, int(b))
            layer = LayerInput(name, tuple(m.weight.shape), c, index, mask.numpy(), bias, int(b), codebook_dtype)
            sizes[name][int(b)] = sum(get_codec("huffman").encode(layer).meta["sizes"])
    return sizes


def allocate_bits(errors: dict, sizes: dict, budget: int, overhead: int = 0) -> dict[str, int]:
    """Greedy bit allocation: start every layer at its largest width and lower, one step at a
    time, the layer with the smallest error increase per byte saved until the total fits.

    Raises:
        ValueError: if even the smallest widths do not fit ``budget``.
    """
    bits = {n: max(sizes[n]) for n in sizes}
    total = overhead + sum(sizes[n][bits[n]] for n in sizes)
    while total > budget:
        best = None
        for n in sizes:
            lower = [b for b in sizes[n] if b < bits[n]]
            if not lower:
                continue
            b = max(lower)
            saved = sizes[n][bits[n]] - sizes[n][b]
            if saved <= 0:
                continue
            cost = (errors[n][b] - errors[n][bits[n]]) / saved
            if best is None or cost < best[0]:
                best = (cost, n, b, saved)
        if best is None:
            raise ConfigError(f"cannot reach {budget} bytes: the smallest bit widths give {total} bytes")
        _, n, b, saved = best
        bits[n] = b
        total -= saved
    return bits


def estimate_overhead(model: nn.Module) -> int:
    """Bytes outside the layers (preamble, header, checksum); a generous fixed estimate."""
    return 16 + 200 * len(prunable_layers(model)) + 600


def choose_bits_for_budget(model: nn.Module, images: torch.Tensor, budget: int,
                           bits_options=(2, 3, 4, 5, 6, 7, 8)) -> tuple[dict, dict]:
    """Bits per layer under ``budget`` bytes from the layer-error sensitivity. Returns (bits, analysis)."""
    probe = copy.deepcopy(model).cpu()
    errors = sensitivity(probe, images, bits_options)["bits"]
    sizes = layer_sizes(probe, bits_options)
    bits = allocate_bits(errors, sizes, budget, estimate_overhead(probe))
    return bits, {"errors": errors, "sizes": sizes}
