"""A module standing in for an unknown architecture, rebuilt from its state dict alone."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import ConfigError
from .layers import is_coded_tensor

_BY_RANK = {2: nn.Linear, 3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}


class StateDictModule(nn.Module):
    """Holds a state dict as modules: every ``*.weight`` of rank 2-5 becomes a linear or
    convolution layer (with its ``*.bias``), other floating-point tensors of rank 2-5 (an
    LSTM's ``weight_ih_l0``) parameters, coded as tensor layers, and everything else a buffer,
    under the same keys.

    It has no forward: it exists so that compression can code a state dict whose architecture
    it was not given. Its ``state_dict()`` has the original keys, shapes and dtypes. A rank-2
    weight of another kind (an embedding) is coded as if linear; name the architecture to keep
    such tensors exact.
    """

    def forward(self, *args, **kwargs):  # pragma: no cover - never called
        raise TypeError("a StateDictModule only holds weights; build the real architecture to run it")


def _child(root: nn.Module, path: list[str]) -> nn.Module:
    m = root
    for part in path:
        if part not in m._modules:
            m.add_module(part, StateDictModule())
        m = m._modules[part]
    return m


@torch.no_grad()
def module_from_state_dict(state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A ``StateDictModule`` whose ``state_dict()`` equals ``state_dict``."""
    root = StateDictModule()
    layers = {k[:-len(".weight")] if k != "weight" else "" for k, v in state_dict.items()
              if (k == "weight" or k.endswith(".weight")) and v.dim() in _BY_RANK and v.is_floating_point()}
    for name in sorted(layers, key=len):
        w = state_dict[f"{name}.weight" if name else "weight"]
        b = state_dict.get(f"{name}.bias" if name else "bias")
        if name == "":
            raise ConfigError("a bare weight at the top level: give the architecture")
        parts = name.split(".")
        parent = _child(root, parts[:-1])
        if parts[-1] in parent._modules:  # a module that also holds children: keep its tensors raw
            continue
        cls = _BY_RANK[w.dim()]
        with torch.device("meta"):
            m = (cls(w.shape[1], w.shape[0], bias=b is not None) if cls is nn.Linear
                 else cls(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=b is not None))
        m.weight = nn.Parameter(w.detach().clone(), requires_grad=w.requires_grad)
        if b is not None:
            m.bias = nn.Parameter(b.detach().clone())
        parent.add_module(parts[-1], m)
    for key, value in state_dict.items():
        owner = _find(root, key)
        if owner is not None:
            continue
        *path, leaf = key.split(".")
        parent = _child(root, path)
        if is_coded_tensor(value):  # a parameter, so compression codes it as a tensor layer
            parent.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=False))
        else:
            parent.register_buffer(leaf, value.detach().clone())
    out_keys = list(root.state_dict())
    if sorted(out_keys) != sorted(state_dict):
        raise ConfigError("this state dict cannot be held as modules (a key is both a tensor and a module)")
    return root


def _find(root: nn.Module, key: str):
    *path, leaf = key.split(".")
    m = root
    for part in path:
        m = m._modules.get(part)
        if m is None:
            return None
    return m if (leaf in m._parameters or leaf in m._buffers) else None
