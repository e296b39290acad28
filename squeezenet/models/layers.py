"""Which tensors carry the weights that Deep Compression codes."""
from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import torch
import torch.nn as nn

from ..utils import coded_key  # noqa: F401  (re-exported: the key naming is shared with the file layer)

# Convolutions (grouped and depthwise included: their weights are ordinary tensors) and linear
# layers, coded with their biases. Batch norm, biases of other modules and 1-D tensors are stored
# exactly; other parameters of 2-5 dimensions are coded as ``TensorLayer``s.
CODED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
TENSOR_DIMS = (2, 5)


class _OwnerBuffers(MutableMapping):
    """A tensor layer's coding buffers by their layer names (``weight_mask``), kept on the owner
    under the parameter's (``weight_ih_l0_mask``)."""

    def __init__(self, owner: nn.Module, param: str):
        self._owner, self._param = owner, param

    def _key(self, name: str) -> str:
        if not name.startswith("weight_"):
            raise KeyError(name)
        return coded_key(self._param, name, whole=True)

    def __getitem__(self, name: str):
        return self._owner._buffers[self._key(name)]

    def __setitem__(self, name: str, value) -> None:
        self._owner._buffers[self._key(name)] = value

    def __delitem__(self, name: str) -> None:
        del self._owner._buffers[self._key(name)]

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name.startswith("weight_") and self._key(name) in self._owner._buffers

    def __iter__(self) -> Iterator[str]:
        prefix = self._param + "_"
        return iter(["weight_" + k[len(prefix):] for k in self._owner._buffers if k.startswith(prefix)])

    def __len__(self) -> int:
        return sum(1 for _ in self)


class TensorLayer:
    """A floating-point parameter of 2-5 dimensions owned by a module that is not a conv or
    linear layer (``nn.LSTM``'s ``weight_ih_l0``, ``nn.MultiheadAttention``'s ``in_proj_weight``,
    an embedding table), seen as a coded layer without a bias.

    Compression reads and writes it as it does a linear layer (``weight``, ``weight_mask``,
    ``weight_codebook``, ...; ``register_buffer``); its coding buffers live on the owner as
    ``<param>_mask``, ``<param>_codebook``, ..., so the model's state dict and checkpoints carry
    them. Not a module: nothing hooks its inputs (error feedback leaves it out).
    """

    bias = None

    def __init__(self, owner: nn.Module, param: str):
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "param", param)
        object.__setattr__(self, "_buffers", _OwnerBuffers(owner, param))

    @property
    def weight(self) -> nn.Parameter:
        return self.owner._parameters[self.param]

    def register_buffer(self, name: str, value: torch.Tensor) -> None:
        self.owner.register_buffer(self._buffers._key(name), value)

    def __getattr__(self, name: str):  # only reached for names the class does not have
        try:
            return self._buffers[name]
        except KeyError:
            raise AttributeError(f"tensor layer {self.param!r} has no {name!r}") from None

    def __setattr__(self, name: str, value) -> None:
        if name not in self._buffers:
            raise AttributeError(f"tensor layer {self.param!r}: register {name!r} with register_buffer first")
        self._buffers[name] = value

    def __repr__(self) -> str:
        return f"TensorLayer({type(self.owner).__name__}.{self.param}, {tuple(self.weight.shape)})"


def is_coded_tensor(p: torch.Tensor | None) -> bool:
    """Whether a tensor outside a conv / linear layer is coded (a floating-point one of 2-5 dimensions)."""
    return p is not None and p.is_floating_point() and TENSOR_DIMS[0] <= p.dim() <= TENSOR_DIMS[1]


def owns_weight(m: nn.Module) -> bool:
    """Whether a conv / linear module's ``weight`` and ``bias`` are parameters of its own.

    Not so where a parametrization (``torch.nn.utils.parametrizations.weight_norm``,
    ``spectral_norm``, ``orthogonal``, ``register_parametrization``) or a weight-norm hook (the
    older ``torch.nn.utils.weight_norm``: ``weight_g``, ``weight_v``) computes them: the state
    dict then holds the originals, and those are what is coded.
    """
    return isinstance(m._parameters.get("weight"), nn.Parameter) and "bias" in m._parameters


def prunable_layers(model: nn.Module) -> dict:
    """The coded layers in definition order: conv / linear modules by module name, other
    floating-point parameters of 2-5 dimensions as ``TensorLayer``s by parameter name.

    A tensor is coded once, whatever names it has: one that a conv / linear layer uses (an
    embedding tied to the output layer) is coded as that layer's weight, one shared by two
    layers as the first one's (the other names are aliases in the file). A conv / linear module
    whose weight a parametrization or hook computes is not a module layer: its originals
    (``parametrizations.weight.original0``, ``weight_v``, ...) are tensor layers.
    """
    modules = [(name, m) for name, m in model.named_modules() if isinstance(m, CODED_TYPES) and owns_weight(m)]
    seen: set[int] = set()
    firsts = set()
    for name, m in modules:
        if id(m.weight) not in seen:
            seen.add(id(m.weight))
            firsts.add(name)
    out: dict = {}
    for name, m in model.named_modules():
        layer_module = isinstance(m, CODED_TYPES) and owns_weight(m)
        if layer_module and name in firsts:
            out[name] = m
        for pname, p in m._parameters.items():
            if layer_module and pname in ("weight", "bias"):
                continue
            if is_coded_tensor(p) and id(p) not in seen:
                seen.add(id(p))
                out[f"{name}.{pname}" if name else pname] = TensorLayer(m, pname)
    return out


def is_tensor_layer(layer) -> bool:
    """Whether a coded layer is a parameter of its own (``TensorLayer``), not a conv / linear module."""
    return isinstance(layer, TensorLayer)


def storage_key(t: torch.Tensor) -> tuple | None:
    """What identifies a tensor by its memory rather than its name: two state-dict entries with
    the same key are one tensor (a tied embedding, a parameter registered twice). ``None`` for
    tensors without memory of their own to compare (empty, or on the meta device)."""
    if t.numel() == 0 or t.device.type == "meta":
        return None
    return (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
            t.dtype)


def state_aliases(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Entries of a state dict that repeat an earlier entry's tensor: alias key -> the first key."""
    first: dict[tuple, str] = {}
    aliases = {}
    for k, v in state.items():
        key = storage_key(v)
        if key is None:
            continue
        if key in first:
            aliases[k] = first[key]
        else:
            first[key] = k
    return aliases
