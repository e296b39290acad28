"""ONNX files whose conv/linear weights stay compressed: each coded layer is stored as its
codebook and its level indices bit-packed at ``ceil(log2(levels + 1))`` bits a weight, and the
graph expands them with standard operators (Cast, Div, Mod, Mul, ReduceSum, Gather, Reshape).

Every input of those nodes is a constant, so ONNX Runtime folds them once when it loads the file
(its default constant folding): the weights are expanded at load, inference runs on ordinary
fp32 convolutions at the fp32 file's speed, and the file is a fraction of the fp32 export's size.
The expanded weights are exactly the decoded ``.sqz`` weights (the level of each index, zero
where pruned), so the model computes what the compressed file's model computes.

Why bit planes: an ONNX graph has no bit-field operators for widths other than 4 and 8, but
bit ``p`` of every index packed eight to a byte is one ``Div`` and one ``Mod`` away, so any width
from 1 to 13 bits costs what it says (a 5-level layer 3 bits a weight, not 8).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError
from ..utils import coded_key

MAX_BITS = 13  # at most 4,096 levels plus "pruned"


def packed_planes(symbols: np.ndarray, bits: int) -> np.ndarray:
    """Bit ``p`` of every symbol, packed eight to a byte (first symbol in the high bit):
    uint8 ``[bits, ceil(n / 8)]``."""
    symbols = np.asarray(symbols, np.int64).reshape(-1)
    return np.stack([np.packbits(((symbols >> p) & 1).astype(np.uint8)) for p in range(bits)])


def unpacked_symbols(planes: np.ndarray, n: int) -> np.ndarray:
    """Inverse of ``packed_planes`` (what the graph computes), for tests and checks."""
    bits = np.unpackbits(planes, axis=1)[:, :n].astype(np.int64)
    return (bits << np.arange(planes.shape[0])[:, None]).sum(0)


def _layer_codes(layer: dict, shared: dict) -> tuple[np.ndarray, np.ndarray]:
    """(levels: float32 [k + 1] with 0.0 first for pruned weights, or the k levels where they
    need none; symbols: int [numel] into them)."""
    whole = layer.get("tensor", False)
    codebook = shared[coded_key(layer["name"], "weight_codebook", whole)].numpy().astype(np.float32)
    index = shared[coded_key(layer["name"], "weight_index", whole)].numpy().reshape(-1).astype(np.int64)
    mask = shared[coded_key(layer["name"], "weight_mask", whole)].numpy().reshape(-1)
    zero = np.flatnonzero(codebook == 0.0)
    if mask.all() or zero.size:  # no level of its own for pruned weights where none or 0.0 is one
        return codebook, np.where(mask, index, zero[0] if zero.size else 0)
    return np.concatenate([np.zeros(1, np.float32), codebook]), np.where(mask, index + 1, 0)


class _Builder:
    """Initializers and nodes that expand one weight, named after it."""

    def __init__(self, graph) -> None:
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper, self.graph = helper, numpy_helper, graph
        self.nodes: list = []
        self.shared_made = False

    def constant(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=f"{output}/{op}", **attrs))
        return output

    def shared(self) -> None:
        if not self.shared_made:
            self.constant("squeezenet/bit_divisors", (1 << np.arange(7, -1, -1)).astype(np.int32))
            self.constant("squeezenet/two", np.array(2, np.int32))
            self.constant("squeezenet/axis0", np.array([0], np.int64))
            self.shared_made = True

    def expand(self, name: str, levels: np.ndarray, symbols: np.ndarray, shape: tuple) -> None:
        """Nodes whose output, called ``name``, is ``levels[symbols].reshape(shape)``."""
        self.shared()
        n = symbols.size
        bits = max(1, math.ceil(math.log2(levels.size)))
        planes = self.constant(f"{name}/planes", packed_planes(symbols, bits)[:, :, None])  # [bits, bytes, 1]
        codebook = self.constant(f"{name}/levels", levels)
        weights = self.constant(f"{name}/plane_values", (1 << np.arange(bits)).astype(np.int32)[:, None])
        flat = self.constant(f"{name}/flat", np.array([bits, -1], np.int64))
        end = self.constant(f"{name}/count", np.array([n], np.int64))
        target = self.constant(f"{name}/shape", np.array(shape, np.int64))
        x = self.node("Cast", [planes], f"{name}/planes_int", to=6)  # int32
        x = self.node("Div", [x, "squeezenet/bit_divisors"], f"{name}/shifted")
        x = self.node("Mod", [x, "squeezenet/two"], f"{name}/bits")
        x = self.node("Reshape", [x, flat], f"{name}/bit_rows")
        x = self.node("Mul", [x, weights], f"{name}/bit_values")
        x = self.node("ReduceSum", [x, "squeezenet/axis0"], f"{name}/padded_symbols", keepdims=0)
        x = self.node("Slice", [x, "squeezenet/axis0", end], f"{name}/symbols")
        x = self.node("Gather", [codebook, x], f"{name}/values", axis=0)
        self.node("Reshape", [x, target], name)


def compress_initializers_(proto, header: dict, shared: dict, state: dict) -> dict:
    """Replace, in ``proto`` (an fp32 export of the decoded model), each coded layer's float32
    weight initializer by its packed codes and the nodes that expand them.

    An initializer is matched to a layer by name, else by identical values; one whose values are
    not exactly the decoded weights (an exporter that folded or transposed it) stays fp32.
    Returns {"layers": coded layers packed, "fp32_layers": names left as they were, "bits": {}}.
    """
    from onnx import numpy_helper
    graph = proto.graph
    by_name = {init.name: init for init in graph.initializer}
    builder = _Builder(graph)
    packed, left, widths = [], [], {}
    for layer in header["layers"]:
        key = coded_key(layer["name"], "weight", layer.get("tensor", False))
        weight = state[key]
        if weight.dtype != torch.float32:
            left.append(layer["name"])
            continue
        target = weight.numpy()
        init = by_name.get(key) or _same_values(graph.initializer, target, numpy_helper)
        if init is None or not np.array_equal(numpy_helper.to_array(init), target):
            left.append(layer["name"])
            continue
        levels, symbols = _layer_codes(layer, shared)
        if levels.size > 1 << MAX_BITS or not np.array_equal(levels[symbols].reshape(target.shape), target):
            left.append(layer["name"])
            continue
        name, dims = init.name, tuple(init.dims)
        graph.initializer.remove(init)
        del by_name[name]
        for i, inp in enumerate(graph.input):  # older exporters list initializers as inputs too
            if inp.name == name:
                del graph.input[i]
                break
        builder.expand(name, levels, symbols, dims)
        packed.append(layer["name"])
        widths[layer["name"]] = max(1, math.ceil(math.log2(levels.size)))
    nodes = builder.nodes + list(graph.node)  # the expansion first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    if not packed:
        raise ConfigError("no coded layer's weights were found in the export; nothing to keep compressed")
    return {"layers": packed, "fp32_layers": left, "bits": widths}


def _same_values(initializers, target: np.ndarray, numpy_helper):
    for init in initializers:
        if tuple(init.dims) == target.shape and init.data_type == 1:
            if np.array_equal(numpy_helper.to_array(init), target):
                return init
    return None
