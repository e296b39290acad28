"""Batch norm folded into the convolution before it, for export and inference.

``y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta`` is the convolution with weights
``W * s`` and bias ``(b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)`` per output
channel: one layer instead of two, the same outputs (up to float rounding) in eval mode.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, _NORMS) for m in model.modules())


def batch_norm_pairs(model: nn.Module):
    """(parent, conv name, norm name) for each norm that directly follows a convolution: the
    next child of a ``Sequential``, or an attribute ``X_bn`` beside a convolution ``X``."""
    for parent in model.modules():
        children = list(parent.named_children())
        if isinstance(parent, nn.Sequential):
            for (cn, c), (bn, b) in zip(children, children[1:]):
                if isinstance(c, _CONVS) and isinstance(b, _NORMS):
                    yield parent, cn, bn
        for name, child in children:
            norm = getattr(parent, f"{name}_bn", None)
            if isinstance(child, _CONVS) and isinstance(norm, _NORMS) and not isinstance(parent, nn.Sequential):
                yield parent, name, f"{name}_bn"


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` that computes ``bn(conv(x))`` with ``bn`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    fused = copy.deepcopy(conv)
    for name in [n for n in fused._buffers]:  # compression state describes the unfolded weights
        del fused._buffers[name]
    fused.weight = nn.Parameter(conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return fused


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every conv -> batch norm pair folded (the norm
    becomes an identity). A ``Sequential`` left holding just a convolution and that identity
    becomes the convolution itself, so a folded ``batch_norm=True`` SqueezeNet has exactly the
    plain model's state-dict keys. Models without batch norm come back as an eval-mode copy."""
    return fold_batch_norm_(copy.deepcopy(model))


def fold_batch_norm_(model: nn.Module) -> nn.Module:
    """``fold_batch_norm`` in place (the model's submodules are replaced); returns it, in eval mode."""
    model.eval()
    for parent, conv_name, bn_name in list(batch_norm_pairs(model)):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fold_conv_bn(conv, bn))
        setattr(parent, bn_name, nn.Identity())
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            kids = list(child.children()) if isinstance(child, nn.Sequential) else []
            if len(kids) == 2 and isinstance(kids[0], _CONVS) and isinstance(kids[1], nn.Identity):
                setattr(parent, name, kids[0])
    return model
