"""Reader and writer of the published Deep Compression SqueezeNet file (``.net``).

Layout (little-endian; see ``docs/published-format.md``): ``uint32[L]`` entry counts, then
per layer a ``float32[256]`` codebook (entry 0 is 0.0), ``float32[out]`` biases, ``uint8[N]``
codebook indices and ``uint8[ceil(N/2)]`` 4-bit relative positions (even entry in the low
nibble). A position value is the number of zero weights skipped before the entry; gaps
longer than 15 are bridged by filler entries with index 0. Positions run over the weight
flattened in (out, in, kh, kw) order, as in Caffe and PyTorch.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, FormatError
from ..models import create_model
from ..utils import atomic_write_bytes
from .positions import absolute_positions, relative_gaps

CODEBOOK_SIZE = 256
MAX_GAP = 15  # 4-bit relative index

# Prototxt order of the 26 convolutions of SqueezeNet v1.0 and their torchvision module names.
_FIRE_MODULES = {2: 3, 3: 4, 4: 5, 5: 7, 6: 8, 7: 9, 8: 10, 9: 12}
LAYER_NAMES: list[tuple[str, str]] = [("conv1", "features.0")]
for _fire, _idx in _FIRE_MODULES.items():
    LAYER_NAMES += [(f"fire{_fire}/conv1x1_1", f"features.{_idx}.squeeze"),
                    (f"fire{_fire}/conv1x1_2", f"features.{_idx}.expand1x1"),
                    (f"fire{_fire}/conv3x3_2", f"features.{_idx}.expand3x3")]
LAYER_NAMES.append(("conv_final", "classifier.1"))


@dataclass
class NetLayer:
    """One layer of a ``.net`` file.

    Attributes:
        caffe_name: prototxt layer name.
        module: module name in our / torchvision's ``squeezenet1_0``.
        shape: weight shape (out, in, kh, kw).
        codebook: float32[256], entry 0 is the pruned value 0.0.
        bias: float32[out].
        indices: uint8 codebook index for every weight position (0 where pruned).
    """
    caffe_name: str
    module: str
    shape: tuple
    codebook: np.ndarray
    bias: np.ndarray
    indices: np.ndarray

    def weight(self) -> np.ndarray:
        return self.codebook[self.indices].reshape(self.shape)


@functools.lru_cache(maxsize=8)
def squeezenet1_0_shapes(num_classes: int = 1000) -> list[tuple[int, ...]]:
    """Weight shapes of the 26 convolutions in prototxt order (built on the meta device)."""
    with torch.device("meta"):
        sd = create_model("squeezenet1_0", num_classes=num_classes).state_dict()
    return [tuple(sd[f"{module}.weight"].shape) for _, module in LAYER_NAMES]


def _layer_bytes(out_channels: int, n: int) -> int:
    return 4 * CODEBOOK_SIZE + 4 * out_channels + n + (n + 1) // 2


def decode_positions(gaps: np.ndarray) -> np.ndarray:
    """Absolute positions from relative gaps: p_k = p_{k-1} + gap_k + 1, p_{-1} = -1."""
    return absolute_positions(gaps, MAX_GAP + 1, filler=-1)[0]


def encode_positions(positions: np.ndarray, values: np.ndarray, max_gap: int = MAX_GAP,
                     filler_value: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Relative gaps for sorted ``positions`` with filler entries for gaps over ``max_gap``.

    A filler is an entry of gap ``max_gap`` whose value is ``filler_value`` (index 0: zero).

    Returns:
        (gaps, values) with fillers inserted.
    """
    values = np.asarray(values)
    gaps, real = relative_gaps(positions, max_gap + 1, filler=max_gap)
    out_values = np.full(gaps.size, filler_value, dtype=values.dtype)
    out_values[real] = values
    return gaps, out_values


def _fail(path, msg: str) -> FormatError:
    return FormatError(f"{path}: not a valid Deep Compression SqueezeNet .net file: {msg}")


def parse_caffe_net(data: bytes, path: str | os.PathLike = "<bytes>", num_classes: int | None = None) -> list[NetLayer]:
    """Parse the bytes of a ``.net`` file into layers, validating every count first.

    Args:
        data: the whole file.
        path: the file name, for messages.
        num_classes: classes of conv_final; inferred from the file size when None.
    Raises:
        FormatError: on any truncation, overflow, trailing bytes or invalid content.
    """
    n_layers = len(LAYER_NAMES)
    header = 4 * n_layers
    if len(data) < header:
        raise _fail(path, f"{len(data)} bytes is shorter than the {header}-byte header")
    counts = np.frombuffer(data, "<u4", n_layers).astype(np.int64)
    shapes = squeezenet1_0_shapes(1000)
    if num_classes is None:
        # Every size but the classifier's is fixed; solve the file size for the class count.
        fixed = header + sum(_layer_bytes(s[0], int(n)) for s, n in zip(shapes[:-1], counts[:-1]))
        last_n = int(counts[-1])
        rest = len(data) - fixed - 4 * CODEBOOK_SIZE - last_n - (last_n + 1) // 2
        if rest <= 0 or rest % 4:
            raise _fail(path, f"file size {len(data)} does not match the entry counts in its header")
        num_classes = rest // 4
        if num_classes > 100_000:
            raise _fail(path, f"file size implies {num_classes} classes")
        shapes = squeezenet1_0_shapes(num_classes)
    elif num_classes != 1000:
        shapes = squeezenet1_0_shapes(num_classes)
    for (name, _), shape, n in zip(LAYER_NAMES, shapes, counts):
        numel = int(np.prod(shape))
        if n > numel:
            raise _fail(path, f"layer {name} claims {n} entries but has only {numel} weights")
    expected = header + sum(_layer_bytes(s[0], int(n)) for s, n in zip(shapes, counts))
    if expected != len(data):
        raise _fail(path, f"entry counts add up to {expected} bytes but the file has {len(data)}"
                    + (" (truncated)" if expected > len(data) else " (trailing bytes)"))
    layers = []
    off = header
    for (name, module), shape, n in zip(LAYER_NAMES, shapes, counts):
        n = int(n)
        numel = int(np.prod(shape))
        codebook = np.frombuffer(data, "<f4", CODEBOOK_SIZE, off).astype(np.float32)
        off += 4 * CODEBOOK_SIZE
        bias = np.frombuffer(data, "<f4", shape[0], off).astype(np.float32)
        off += 4 * shape[0]
        idx = np.frombuffer(data, np.uint8, n, off)
        off += n
        packed = np.frombuffer(data, np.uint8, (n + 1) // 2, off)
        off += (n + 1) // 2
        if not (np.isfinite(codebook).all() and np.isfinite(bias).all()):
            raise _fail(path, f"layer {name} has a non-finite codebook or bias value")
        gaps = np.empty(2 * packed.size, np.int64)
        gaps[0::2] = packed & 0x0F
        gaps[1::2] = packed >> 4
        gaps = gaps[:n]
        pos = decode_positions(gaps)
        if n and pos[-1] >= numel:
            raise _fail(path, f"layer {name}: positions run to {int(pos[-1])}, past its {numel} weights")
        indices = np.zeros(numel, np.uint8)
        indices[pos] = idx
        layers.append(NetLayer(name, module, tuple(shape), codebook, bias, indices))
    return layers


def read_caffe_net(path: str | os.PathLike) -> list[NetLayer]:
    """Read a published ``.net`` file (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    max_size = 64 * 2**20  # SqueezeNet v1.0 at 8 bits dense is under 6 MB
    if size > max_size:
        raise _fail(path, f"{size} bytes is far larger than any SqueezeNet .net file")
    return parse_caffe_net(path.read_bytes(), path)


def looks_like_caffe_net(data: bytes) -> bool:
    """True when ``data`` has the exact size that its header's entry counts imply."""
    try:
        parse_caffe_net(data)
    except FormatError:
        return False
    return True


def serialize_caffe_net(layers: list[NetLayer]) -> bytes:
    """Encode layers into the ``.net`` byte layout (inverse of ``parse_caffe_net``)."""
    if [layer.caffe_name for layer in layers] != [n for n, _ in LAYER_NAMES]:
        raise ConfigError("layers must be the 26 SqueezeNet v1.0 convolutions in prototxt order")
    counts, bodies = [], []
    for layer in layers:
        idx = np.asarray(layer.indices, np.uint8).reshape(-1)
        pos = np.flatnonzero(idx)
        gaps, values = encode_positions(pos, idx[pos])
        n = gaps.size
        packed_src = np.zeros(n + (n % 2), np.uint8)
        packed_src[:n] = gaps
        packed = (packed_src[0::2] | (packed_src[1::2] << 4)).astype(np.uint8)
        cb = np.asarray(layer.codebook, "<f4")
        if cb.shape != (CODEBOOK_SIZE,):
            raise ConfigError(f"{layer.caffe_name}: codebook must have {CODEBOOK_SIZE} entries")
        bodies += [cb.tobytes(), np.asarray(layer.bias, "<f4").tobytes(), values.astype(np.uint8).tobytes(),
                   packed.tobytes()]
        counts.append(n)
    return np.asarray(counts, "<u4").tobytes() + b"".join(bodies)


def write_caffe_net(path: str | os.PathLike, layers: list[NetLayer]) -> int:
    """Write layers as a ``.net`` file atomically; returns the byte count."""
    data = serialize_caffe_net(layers)
    atomic_write_bytes(path, data)
    return len(data)


def layers_to_state_dict(layers: list[NetLayer]) -> dict[str, torch.Tensor]:
    """A ``squeezenet1_0`` state dict from ``.net`` layers."""
    sd = {}
    for layer in layers:
        sd[f"{layer.module}.weight"] = torch.from_numpy(layer.weight().copy())
        sd[f"{layer.module}.bias"] = torch.from_numpy(layer.bias.copy())
    return sd


def layers_from_state_dict(state_dict: dict[str, torch.Tensor]) -> list[NetLayer]:
    """``.net`` layers from a sparse, weight-shared ``squeezenet1_0`` state dict.

    Each convolution may hold at most 255 distinct non-zero values (entry 0 is reserved for
    pruned weights); the codebook is entry 0 = 0.0, then the distinct values in ascending
    order, padded with zeros.
    """
    layers = []
    expected = squeezenet1_0_shapes(int(state_dict["classifier.1.weight"].shape[0]))
    for (caffe, module), shape in zip(LAYER_NAMES, expected):
        w = state_dict[f"{module}.weight"].detach().float().cpu().numpy()
        if tuple(w.shape) != shape:
            raise ConfigError(f"{module}.weight has shape {tuple(w.shape)}, expected {shape}")
        flat = w.reshape(-1)
        values, inverse = np.unique(flat, return_inverse=True)
        nonzero = values[values != 0]
        if nonzero.size > CODEBOOK_SIZE - 1:
            raise ConfigError(f"{module}: {nonzero.size} distinct non-zero weights; the .net format "
                             f"holds at most {CODEBOOK_SIZE - 1} (quantize to 8 bits first)")
        codebook = np.zeros(CODEBOOK_SIZE, np.float32)
        codebook[1:1 + nonzero.size] = nonzero
        # Map each distinct value to its codebook slot (0 for the value 0.0).
        slot = np.zeros(values.size, np.uint8)
        slot[values != 0] = np.arange(1, nonzero.size + 1, dtype=np.uint8)
        indices = slot[inverse]
        bias = state_dict[f"{module}.bias"].detach().float().cpu().numpy()
        layers.append(NetLayer(caffe, module, shape, codebook, bias, indices))
    return layers
