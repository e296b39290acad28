"""Per-layer summary like the SqueezeNet paper's Table 1: output sizes, fire layout,
parameters and multiply-accumulates (MACs)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError
from .squeezenet import Fire


@dataclass
class LayerRow:
    name: str
    kind: str
    output_size: list  # [C, H, W] or [features]
    s1x1: int | None
    e1x1: int | None
    e3x3: int | None
    params: int
    macs: int


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        return int(output[0].numel()) * per_output
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def _top_level_layers(model: nn.Module) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.Sequential):
            layers.extend(child.children())
        else:
            layers.append(child)
    return layers


@torch.no_grad()
def summarize(model: nn.Module, input_size: int = 224) -> dict:
    """Run one image of ``input_size`` x ``input_size`` through ``model`` and tabulate it.

    Returns:
        ``{"rows": [LayerRow as dict, ...], "params", "macs", "bytes", "mb", "mib", "input_size"}``
        where ``bytes`` is the fp32 size of all parameters.
    """
    if not isinstance(input_size, int) or input_size < 1:
        raise ConfigError(f"input size must be a positive integer, got {input_size!r}")
    macs: dict[nn.Module, int] = {}
    outputs: dict[nn.Module, tuple] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, i, o: macs.__setitem__(mod, _layer_macs(mod, o))))
    layers = _top_level_layers(model)
    for m in layers:
        hooks.append(m.register_forward_hook(lambda mod, i, o: outputs.__setitem__(mod, tuple(o.shape[1:]))))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, input_size, input_size))
    except RuntimeError as e:
        raise ConfigError(f"input size {input_size} is too small for this model: {e}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    rows: list[LayerRow] = []
    number = 0  # layer number as in the paper: conv1, fire2..fire9, conv10
    for m in layers:
        if isinstance(m, (nn.ReLU, nn.Identity, nn.LocalResponseNorm)):
            continue
        params = sum(p.numel() for p in m.parameters())
        layer_macs = sum(v for k, v in macs.items() if k is m or any(k is s for s in m.modules()))
        s1 = e1 = e3 = None
        if isinstance(m, Fire):
            number += 1
            name, kind = f"fire{number}", "fire" + (f"+{m.bypass_kind} bypass" if m.bypass_kind else "")
            s1, e1, e3 = m.squeeze.out_channels, m.expand1x1.out_channels, m.expand3x3.out_channels
        elif isinstance(m, nn.Conv2d):
            number += 1
            name, kind = f"conv{number}", f"conv {m.kernel_size[0]}x{m.kernel_size[1]}/{m.stride[0]}"
        elif isinstance(m, nn.Linear):
            number += 1
            name, kind = f"fc{number}", "linear"
        elif isinstance(m, nn.MaxPool2d):
            name, kind = f"maxpool{number}", f"maxpool {m.kernel_size}x{m.kernel_size}/{m.stride}"
        elif isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)):
            name, kind = f"avgpool{number}", "avgpool"
        elif isinstance(m, nn.Dropout):
            name, kind = f"dropout{number}", f"dropout {m.p}"
        else:
            name, kind = type(m).__name__.lower(), type(m).__name__
        rows.append(LayerRow(name, kind, list(outputs.get(m, ())), s1, e1, e3, params, layer_macs))
    total_params = sum(p.numel() for p in model.parameters())
    total_bytes = 4 * total_params
    return {
        "input_size": input_size,
        "params": total_params,
        "macs": sum(macs.values()),
        "bytes": total_bytes,
        "mb": total_bytes / 1e6,
        "mib": total_bytes / 2**20,
        "rows": [asdict(r) for r in rows],
    }


def format_summary(summary: dict, title: str = "") -> str:
    """Render a ``summarize`` result as a fixed-width table."""
    head = (f"{'layer':<10} {'type':<22} {'output size':>15} {'s1x1':>5} {'e1x1':>5} {'e3x3':>5} "
            f"{'params':>11} {'MACs':>14}")
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in summary["rows"]:
        size = "x".join(str(v) for v in r["output_size"])
        cell = lambda v: "" if v is None else str(v)  # noqa: E731
        lines.append(f"{r['name']:<10} {r['kind']:<22} {size:>15} {cell(r['s1x1']):>5} {cell(r['e1x1']):>5} "
                     f"{cell(r['e3x3']):>5} {r['params']:>11,} {r['macs']:>14,}")
    lines.append("-" * len(head))
    lines.append(f"total parameters {summary['params']:,}; MACs {summary['macs']:,} "
                 f"({summary['macs'] / 1e9:.3f} G) at {summary['input_size']}x{summary['input_size']}; "
                 f"fp32 size {summary['bytes']:,} bytes = {summary['mb']:.2f} MB ({summary['mib']:.2f} MiB)")
    return "\n".join(lines)
