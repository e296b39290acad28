"""Magnitude pruning (Han et al., "Learning both Weights and Connections", NIPS 2015).

Pure functions compute masks; ``prune_`` applies them in place and stores each mask as a
``weight_mask`` buffer on its module, so masks travel with ``state_dict()`` and checkpoints.
``apply_masks_`` (the training loop's ``after_step``) keeps pruned weights at zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.layers import coded_key, is_tensor_layer, prunable_layers
from ..models.squeezenet import Fire

# Paper Table 1 / the published file (squeeze, expand1x1, expand3x3) per fire module.
SQUEEZENET_FIRE_DENSITY = {
    2: (1.0, 1.0, 0.33), 3: (1.0, 1.0, 0.33), 4: (1.0, 1.0, 0.33), 5: (1.0, 1.0, 0.33),
    6: (1.0, 0.5, 0.33), 7: (0.5, 1.0, 0.33), 8: (1.0, 0.5, 0.30), 9: (0.5, 1.0, 0.30),
}
FIRST_CONV_DENSITY = 1.0
CLASSIFIER_DENSITY = 0.20
BYPASS_DENSITY = 0.5
# Han et al. 2015, Table 4 (AlexNet): conv1..conv5, fc6..fc8.
ALEXNET_DENSITY = [0.84, 0.38, 0.35, 0.37, 0.37, 0.09, 0.09, 0.25]
# Any other model (``default_density``): layers under SMALL_LAYER weights stay dense.
SMALL_LAYER = 10_000
OTHER_DENSITY = 0.33


def default_density(model: nn.Module) -> dict[str, float]:
    """The default per-layer density profile.

    Rule: SqueezeNet-family models (any with Fire modules) take the paper's per-fire profile
    by fire position (fire2..fire9; a model with other fire counts repeats the last entry),
    100% for conv1, 50% for 1x1 bypass convolutions and 20% for the classifier conv10.
    AlexNet takes Han et al.'s Table 4 densities. Any other model: its first and last layer,
    every layer under 10,000 weights (small layers save few bytes and carry much of the
    accuracy: depthwise convolutions, classifiers of few classes) and every tensor layer
    (recurrent and attention matrices, embedding tables: pruned without retraining, they lose
    what a conv layer keeps) dense, 33% everywhere else.
    """
    layers = prunable_layers(model)
    names = list(layers)
    fires = [(n, m) for n, m in model.named_modules() if isinstance(m, Fire)]
    out: dict[str, float] = {}
    if fires:
        for i, (fname, _) in enumerate(fires):
            s, e1, e3 = SQUEEZENET_FIRE_DENSITY[min(i + 2, 9)]
            out.update({f"{fname}.squeeze": s, f"{fname}.expand1x1": e1, f"{fname}.expand3x3": e3,
                        f"{fname}.bypass": BYPASS_DENSITY})
        out = {k: v for k, v in out.items() if k in layers}
        out[names[0]] = FIRST_CONV_DENSITY
        out[names[-1]] = CLASSIFIER_DENSITY
        return {n: out.get(n, 1.0) for n in names}
    if type(model).__name__ == "AlexNet" and len(names) == len(ALEXNET_DENSITY):
        return dict(zip(names, ALEXNET_DENSITY))
    return {n: (1.0 if i in (0, len(names) - 1) or layers[n].weight.numel() < SMALL_LAYER
                or is_tensor_layer(layers[n]) else OTHER_DENSITY)
            for i, n in enumerate(names)}


def magnitude_mask(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density * numel)`` largest-magnitude weights (ties: lowest index first).

    Weights that are already zero are never kept, so pruning never un-prunes.
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    flat = weight.detach().reshape(-1).abs()
    nonzero = flat != 0
    n_nonzero = int(nonzero.sum())
    k = min(int(round(density * flat.numel())), n_nonzero)
    if k == n_nonzero:  # every nonzero weight kept (a dense layer at density 1): no order needed
        return nonzero.reshape(weight.shape)
    if k == 0:
        return torch.zeros_like(nonzero).reshape(weight.shape)
    # The k-th largest magnitude, then the weights above it and, of those equal to it, the first
    # ones by position: what a stable descending sort keeps, without sorting (3 s of a 22M-weight
    # model's start).
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    mask = flat > threshold
    ties = torch.nonzero(flat == threshold).reshape(-1)[:k - int(mask.sum())]
    mask[ties] = True
    return mask.reshape(weight.shape)


def threshold_mask(weight: torch.Tensor, sensitivity: float) -> torch.Tensor:
    """Han et al. 2015: keep weights with |w| > sensitivity * std(w)."""
    if sensitivity < 0:
        raise ConfigError(f"sensitivity must be non-negative, got {sensitivity}")
    w = weight.detach()
    return w.abs() > sensitivity * w.float().std()


@dataclass
class PruneConfig:
    """Pruning settings.

    Attributes:
        density: layer name -> fraction kept; missing layers use ``default_density``.
        sensitivity: if set, prune by |w| > sensitivity * std instead of by density.
        skip: layer names left dense.
    """
    density: dict = field(default_factory=dict)
    sensitivity: float | None = None
    skip: tuple = ()


def get_mask(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "weight_mask", None)


@torch.no_grad()
def prune_(model: nn.Module, config: PruneConfig | None = None) -> dict[str, float]:
    """Prune ``model`` in place; masks become ``weight_mask`` buffers. Returns density per layer."""
    config = config or PruneConfig()
    layers = prunable_layers(model)
    unknown = set(config.density) - set(layers)
    if unknown:
        raise ConfigError(f"density given for unknown layers: {', '.join(sorted(unknown))}; "
                         f"layers are: {', '.join(layers)}")
    profile = default_density(model)
    achieved = {}
    for name, m in layers.items():
        if name in config.skip:
            mask = m.weight != 0
        elif config.sensitivity is not None:
            mask = threshold_mask(m.weight, config.sensitivity)
        else:
            mask = magnitude_mask(m.weight, config.density.get(name, profile[name]))
        old = get_mask(m)
        if old is not None:
            mask &= old
        set_mask_(m, mask)
        achieved[name] = float(mask.float().mean())
    return achieved


def set_mask_(module: nn.Module, mask: torch.Tensor) -> None:
    """Store ``mask`` as the module's ``weight_mask`` buffer and zero the pruned weights."""
    mask = mask.to(dtype=torch.bool, device=module.weight.device)
    if "weight_mask" in module._buffers:
        module.weight_mask = mask
    else:
        module.register_buffer("weight_mask", mask)
    module.weight.data.mul_(mask)


def remove_masks_(model: nn.Module) -> None:
    """Drop the ``weight_mask`` buffers (the pruned weights stay zero; pruning with density 1.0
    recovers the masks from them)."""
    for m in prunable_layers(model).values():
        m._buffers.pop("weight_mask", None)


@torch.no_grad()
def apply_masks_(model: nn.Module) -> None:
    """Zero every pruned weight again (call after each optimizer step)."""
    for m in prunable_layers(model).values():
        mask = get_mask(m)
        if mask is not None:
            m.weight.mul_(mask)


def mask_gradients_(model: nn.Module) -> None:
    """Zero gradients of pruned weights, so momentum cannot move them either."""
    for m in prunable_layers(model).values():
        mask = get_mask(m)
        if mask is not None and m.weight.grad is not None:
            m.weight.grad.mul_(mask)


def attach_masks_(model: nn.Module, state_dict: dict) -> None:
    """Register ``weight_mask`` buffers for masks present in ``state_dict`` (before loading it)."""
    for name, m in prunable_layers(model).items():
        key = coded_key(name, "weight_mask", is_tensor_layer(m))
        if key in state_dict:
            set_mask_(m, state_dict[key])
