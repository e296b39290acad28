"""Read a ``.sqz`` file with numpy and constriction only: no torch, no torchvision.

For deployment where PyTorch is not installed (a small server, a converter, another runtime)::

    from squeezenet.reader import read
    weights = read("model.sqz")          # {"features.0.weight": np.ndarray, ...}

The arrays are bit for bit what ``squeezenet.weights.load_compressed`` gives as tensors (both
decode through ``weights.container`` and the same layer codecs), with every check of the torch
reader except the comparison against a buildable architecture: the header's own description
of the tensors is checked instead. ``bfloat16`` tensors, which numpy cannot hold, come back
as float32 arrays with the same values (exact). The format is documented in docs/format.md.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import FormatError
from .utils import coded_key
from .weights import container

__all__ = ["read", "read_header", "FormatError"]


def read(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict a ``.sqz`` file holds, as numpy arrays under the model's keys.

    Raises:
        FileNotFoundError: no such file.
        FormatError: the file is not a valid compressed model (bad checksum, truncated, ...).
    """
    return decode(_file_bytes(path), path)[1]


def read_header(path: str | os.PathLike) -> dict:
    """The file's header (model name, arguments, preprocessing, class names, one record per layer),
    checked (magic, version, checksum) but without decoding any weights."""
    return container.parse_header(_file_bytes(path), path)[0]


def decode(data: bytes, path="<bytes>") -> tuple[dict, dict[str, np.ndarray]]:
    """(header, state) of a file's bytes; see ``read``."""
    header, off = container.parse_header(data, path)
    expected, layout = container.self_described(header, path)
    container.check_body(data, off, header, expected, layout, False, path)
    state: dict[str, np.ndarray] = {}
    for layer, out in container.decode_layers(data, off, header, expected, path):
        shape, _, whole = expected[layer["name"]]
        code = container.weight_dtype(layer, header["version"])
        state[coded_key(layer["name"], "weight", whole)] = _as_dtype(out.weight.reshape(shape), code)
        if out.bias is not None:
            state[coded_key(layer["name"], "bias")] = _as_dtype(out.bias, code)
    off = container.raws_offset(off, header)
    for name, code, array in container.decode_raws(data, off, header, layout, path):
        state[name] = _bf16_to_f32(array) if code == "bf16" else array.astype(bool) if code == "b1" else array
    for alias, target in container.alias_records(header, path).items():
        state[alias] = state[target]  # one array under each of its names, as in the model
    return header, {k: state[k] for k in layout}


def _file_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > container.MAX_FILE:
        raise container.bad(path, "file is larger than any model this tool writes")
    return path.read_bytes()


def _as_dtype(weights: np.ndarray, code: str) -> np.ndarray:
    """Decoded float32 weights in the layer's stored type, rounded as torch's ``.to(dtype)`` rounds
    (to nearest, ties to even)."""
    if code == "f4":
        return weights
    if code == "bf16":
        return _bf16_to_f32(_f32_to_bf16_bits(weights))
    return weights.astype({"f2": np.float16, "f8": np.float64}[code])


def _f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the 16 bits of the nearest bfloat16 (ties to even); values are finite (the
    codecs refuse others)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.view(np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
