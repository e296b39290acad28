"""Our compressed model file (``.sqz``): pruned, weight-shared, entropy-coded. No pickle.

Layout (little-endian; full description in ``docs/compressed-format.md``)::

    magic   8 bytes  b"SQZDC\\x00\\r\\n"
    version uint16   2 (range-coded layers, ``entropy.py``) or 1 (Huffman, the paper's coding)
    flags   uint16   bit 0: the header is zlib-compressed
    hlen    uint32   length of the (stored) header
    header  hlen bytes of UTF-8 JSON: model, arguments, classes, preprocessing, per-layer
            shape / bits / density / coding choices and the byte size of every section
    body    version 1, per layer: codebook, bias, index code table, position code table,
            index bit stream, position bit stream; version 2, per layer: codebook, bias,
            model table, range-coder stream; then raw tensors
    crc32   uint32 of everything before it

Positions of the kept weights are coded as relative gaps (Deep Compression, sec. 4) over an
alphabet of ``span`` gap values plus one SKIP symbol that advances ``span`` positions with no
entry (the paper's filler entries, without spending a weight index on them); a layer may
instead code its pruned positions when those are fewer, or nothing when it is dense. Gap
and index streams are canonical-Huffman coded (``huffman.py``).
"""
from __future__ import annotations

import functools
import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError, FormatError
from ..models.layers import prunable_layers
from . import entropy, huffman
from .positions import absolute_positions, relative_gaps

MAGIC = b"SQZDC\x00\r\n"
VERSION = 3             # what ``serialize`` writes for range-coded layers
RANGE_VERSIONS = (2, 3)  # 2: registered architectures only, float32 parameters; 3: any state dict
HUFFMAN_VERSION = 1     # the paper's Huffman coding (``--codec huffman``), still written and read
READ_VERSIONS = (1, 2, 3)
MAX_LEVELS = 1 << 12    # codebook entries per layer in version 2
FORMAT_NAME = "squeezenet-compressed"
MAX_HEADER = 1 << 20
MAX_FILE = 512 << 20
MAX_LAYER_WEIGHTS = 1 << 28
SPANS = [2, 4, 8, 16, 32, 64, 128, 256]
_PREAMBLE = struct.Struct("<8sHHI")
FLAG_ZLIB_HEADER = 1
MAX_HEADER_JSON = 4 << 20
# fp32 sizes of the paper's Table 2 comparisons: SqueezeNet v1.0 and AlexNet, 1000 classes
SQUEEZENET_FP32 = 4 * 1_248_424
ALEXNET_FP32 = 4 * 60_965_224


def _bits_to_bytes(bits: int) -> int:
    return (bits + 7) // 8


def _table_bytes(table: huffman.HuffmanTable, alphabet: int) -> bytes:
    if not table.symbols:
        return b"\x00"
    counts = np.asarray(table.count[1:], "<u2")
    sym_dtype = "<u1" if alphabet <= 256 else "<u2"
    return bytes([len(counts)]) + counts.tobytes() + np.asarray(table.symbols, sym_dtype).tobytes()


def _parse_table(data: bytes, alphabet: int, where: str) -> huffman.HuffmanTable:
    if len(data) < 1:
        raise FormatError(f"{where}: empty code table")
    n_len = data[0]
    if n_len == 0:
        if len(data) != 1:
            raise FormatError(f"{where}: code table has trailing bytes")
        return huffman.HuffmanTable([], [])
    if n_len > huffman.MAX_CODE_LENGTH:
        raise FormatError(f"{where}: code lengths up to {n_len} bits are not a valid Huffman code")
    end = 1 + 2 * n_len
    if len(data) < end:
        raise FormatError(f"{where}: code table is truncated")
    counts = [0] + np.frombuffer(data, "<u2", n_len, 1).astype(int).tolist()
    width = 1 if alphabet <= 256 else 2
    n_sym = sum(counts)
    if n_sym > alphabet or len(data) != end + width * n_sym:
        raise FormatError(f"{where}: code table size does not match its counts")
    symbols = np.frombuffer(data, "<u1" if width == 1 else "<u2", n_sym, end).astype(int).tolist()
    try:
        huffman.validate_table(counts, symbols, alphabet)
    except huffman.HuffmanError as e:
        raise FormatError(f"{where}: {e}") from None
    return huffman.HuffmanTable(counts, symbols)


# ----------------------------------------------------------------------------- positions
def gap_symbols(positions: np.ndarray, span: int) -> np.ndarray:
    """Relative gaps of sorted positions over alphabet 0..span-1 plus SKIP (= span)."""
    return relative_gaps(positions, span, filler=span)[0]


def positions_from_gaps(symbols: np.ndarray, span: int) -> np.ndarray:
    """Inverse of ``gap_symbols``."""
    pos, real = absolute_positions(symbols, span, filler=span)
    return pos[real]


def _choose_position_coding(mask: np.ndarray) -> tuple[str, int, np.ndarray, huffman.HuffmanTable]:
    """Cheapest coding of a mask: dense (no stream), else gaps between the kept or the pruned
    positions (whichever are fewer) over the gap alphabet size that minimises stream + table."""
    n_keep = int(mask.sum())
    if n_keep == mask.size:
        return "dense", 0, np.zeros(0, np.int64), huffman.HuffmanTable([], [])
    # Code the minority: gaps between the rarer kind of position are the cheaper stream.
    mode, pos = ("kept", np.flatnonzero(mask)) if 2 * n_keep <= mask.size else ("pruned", np.flatnonzero(~mask))
    best = None
    for span in SPANS:
        sym = gap_symbols(pos, span)
        table = huffman.build_table(sym)
        cost = _bits_to_bytes(huffman.encoded_bits(sym, table)) + len(_table_bytes(table, span + 1))
        if best is None or cost < best[0]:
            best = (cost, span, sym, table)
    _, span, sym, table = best
    return mode, span, sym, table


# ----------------------------------------------------------------------------- writing
@dataclass
class LayerCode:
    """What one layer contributes to the file, for writing and for the size report."""
    name: str
    shape: list
    bits: int
    nnz: int
    codebook: bytes
    bias: bytes
    index_table: bytes
    position_table: bytes
    index_stream: bytes
    position_stream: bytes
    meta: dict = field(default_factory=dict)

    def sections(self) -> list[bytes]:
        return [self.codebook, self.bias, self.index_table, self.position_table,
                self.index_stream, self.position_stream]


def encode_layer(name: str, weight_shape, codebook: np.ndarray, index: np.ndarray, mask: np.ndarray,
                 bias: np.ndarray | None, bits: int, codebook_dtype: str = "f4") -> LayerCode:
    """Encode one layer: ``index`` (flat, cluster per weight) is read where ``mask`` is true."""
    mask = np.asarray(mask, bool).reshape(-1)
    index = np.asarray(index).reshape(-1)
    k = int(codebook.size)
    if k > 2 ** bits:
        raise ConfigError(f"{name}: {k} centroids do not fit in {bits} bits")
    kept = index[mask].astype(np.int64)
    if kept.size and (kept.min() < 0 or kept.max() >= max(k, 1)):
        raise ConfigError(f"{name}: cluster index out of range")
    idx_table = huffman.build_table(kept)
    idx_bits = huffman.encode(kept, idx_table)
    mode, span, pos_sym, pos_table = _choose_position_coding(mask)
    pos_bits = huffman.encode(pos_sym, pos_table)
    cb = np.asarray(codebook, "<f4" if codebook_dtype == "f4" else "<f2")
    meta = {"name": name, "shape": [int(s) for s in weight_shape], "bits": int(bits), "k": k,
            "nnz": int(mask.sum()), "density": round(float(mask.mean()), 6) if mask.size else 1.0,
            "codebook_dtype": codebook_dtype, "bias": 0 if bias is None else int(np.asarray(bias).size),
            "positions": mode, "span": span, "position_symbols": int(pos_sym.size),
            "index_bits": len(idx_bits), "position_bits": len(pos_bits)}
    code = LayerCode(name, meta["shape"], bits, meta["nnz"], cb.tobytes(),
                     b"" if bias is None else np.asarray(bias, "<f4").tobytes(),
                     _table_bytes(idx_table, 2 ** bits), _table_bytes(pos_table, span + 1),
                     idx_bits.tobytes(), pos_bits.tobytes(), meta)
    meta["sizes"] = [len(s) for s in code.sections()]
    return code


def encode_layer_range(name: str, weight_shape, codebook: np.ndarray, index: np.ndarray, mask: np.ndarray,
                       bias: np.ndarray | None, codebook_dtype: str = "f4", bias_dtype: str = "f4") -> LayerCode:
    """Encode one layer for version 2: sorted codebook, bias, model table, range-coder stream.

    The codebook may come in any order (centroid fine-tuning can reorder it); it is sorted here
    and the indices remapped, which leaves every weight unchanged.
    """
    mask = np.asarray(mask, bool).reshape(-1)
    index = np.asarray(index, np.int64).reshape(-1)
    cb = np.asarray(codebook, np.float32).reshape(-1)
    if cb.size > MAX_LEVELS:
        raise ConfigError(f"{name}: {cb.size} levels; version 2 files hold at most {MAX_LEVELS}")
    kept = index[mask]
    if kept.size and (kept.min() < 0 or kept.max() >= cb.size):
        raise ConfigError(f"{name}: cluster index out of range")
    if codebook_dtype == "f2":
        cb = cb.astype(np.float16).astype(np.float32)
    cb = cb + np.float32(0.0)  # -0.0 -> 0.0: equal weights, and one order for the packed keys
    used = np.unique(kept)  # unused levels cost bytes and nothing else: drop them
    order = used[np.argsort(cb[used], kind="stable")]
    remap = np.zeros(max(cb.size, 1), np.int64)
    remap[order] = np.arange(order.size)
    cb = cb[order]
    index = np.where(mask, remap[np.where(mask, index, 0)], 0)
    neg = int((cb < 0).sum())
    taps = int(math.prod(weight_shape[2:])) if len(weight_shape) > 2 else 1
    table, stream = entropy.encode_layer(index, mask, neg, int(cb.size), taps)
    cb_bytes = entropy.pack_codebook(cb, codebook_dtype) if cb.size else b""
    bias_bytes = b"" if bias is None else np.asarray(bias, "<f4" if bias_dtype == "f4" else "<f2").tobytes()
    meta = {"name": name, "shape": [int(s) for s in weight_shape], "coding": "range", "k": int(cb.size),
            "neg": neg, "nnz": int(mask.sum()), "density": round(float(mask.mean()), 6) if mask.size else 1.0,
            "codebook_dtype": codebook_dtype, "bias": 0 if bias is None else int(np.asarray(bias).size),
            "bias_dtype": bias_dtype, "sizes": [len(cb_bytes), len(bias_bytes), len(table), len(stream)]}
    return RangeLayerCode(name, cb_bytes, bias_bytes, table, stream, meta)


@dataclass
class RangeLayerCode:
    """A version 2 layer: codebook, bias, model table, stream (shape and counts are in ``meta``)."""
    name: str
    codebook: bytes
    bias: bytes
    table: bytes
    stream: bytes
    meta: dict = field(default_factory=dict)

    def sections(self) -> list[bytes]:
        return [self.codebook, self.bias, self.table, self.stream]


def _default_class_names(names, num_classes):
    if not names:
        return None
    if num_classes == 1000:
        from torchvision.models import SqueezeNet1_0_Weights
        if list(names) == list(SqueezeNet1_0_Weights.IMAGENET1K_V1.meta["categories"]):
            return "imagenet1k"
    return list(names)


def _key(module: str, tensor: str) -> str:
    return f"{module}.{tensor}" if module else tensor


# Raw (exactly stored) tensors: dtype code -> (numpy dtype of the stored bytes, torch dtype).
RAW_DTYPES = {"f4": ("<f4", torch.float32), "f2": ("<f2", torch.float16), "bf16": ("<i2", torch.bfloat16),
              "f8": ("<f8", torch.float64), "i8": ("<i8", torch.int64), "i4": ("<i4", torch.int32),
              "i2": ("<i2", torch.int16), "i1": ("i1", torch.int8), "u1": ("u1", torch.uint8), "b1": ("u1", torch.bool)}
_DTYPE_CODES = {t: code for code, (_, t) in RAW_DTYPES.items()}


def raw_dtype_code(t: torch.Tensor) -> str:
    """The file's code for a tensor's dtype; raises ValueError for dtypes it does not store."""
    try:
        return _DTYPE_CODES[t.dtype]
    except KeyError:
        raise ConfigError(f"tensors of dtype {t.dtype} are not stored by this format") from None


def _raw_bytes(t: torch.Tensor) -> bytes:
    code = raw_dtype_code(t)
    t = t.detach().cpu().contiguous()
    if code == "bf16":
        t = t.view(torch.int16)
    elif code == "b1":
        t = t.to(torch.uint8)
    return t.numpy().astype(RAW_DTYPES[code][0], copy=False).tobytes()


def serialize(model_name: str, model_kwargs: dict, num_classes: int | None, preprocessing: dict | None,
              layers: list, raw: dict[str, torch.Tensor] | None = None,
              class_names: list | None = None, extra: dict | None = None) -> bytes:
    """Assemble a complete file from encoded layers and raw (exactly stored) tensors.

    Range-coded layers (``RangeLayerCode``) make a version 3 file, Huffman ones version 1
    (which stores raw float32 parameters only).
    """
    raw = raw or {}
    kinds = {type(layer) for layer in layers}
    if len(kinds) > 1:
        raise ConfigError("one file holds layers of one coding")
    version = VERSION if kinds <= {RangeLayerCode} else HUFFMAN_VERSION
    if version == HUFFMAN_VERSION:
        records = [{"name": k, "shape": list(v.shape)} for k, v in raw.items()]
        if any(v.dtype != torch.float32 for v in raw.values()):
            raise ConfigError("the Huffman (version 1) format stores float32 parameters only; use the range codec")
    else:
        records = [{"name": k, "shape": list(v.shape), "dtype": raw_dtype_code(v)} for k, v in raw.items()]
    header = {"format": FORMAT_NAME, "version": version, "model": model_name, "model_kwargs": model_kwargs,
              "num_classes": None if num_classes is None else int(num_classes), "preprocessing": preprocessing,
              "class_names": _default_class_names(class_names, num_classes),
              "layers": [layer.meta for layer in layers], "raw": records}
    if extra:
        header["extra"] = extra
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hbytes = zlib.compress(hjson, 9)
    body = b"".join(s for layer in layers for s in layer.sections())
    body += b"".join(_raw_bytes(v) for v in raw.values())
    data = _PREAMBLE.pack(MAGIC, version, FLAG_ZLIB_HEADER, len(hbytes)) + hbytes + body
    return data + struct.pack("<I", zlib.crc32(data))


# Buffers that compression keeps on coded modules: coding state, not part of the model's weights.
CODING_BUFFERS = ("weight_mask", "weight_codebook", "weight_index", "weight_bits")


def encode_model(model: nn.Module, model_name: str = "", *, model_kwargs: dict | None = None,
                 preprocessing: dict | None = None, class_names: list | None = None,
                 codebook_dtype: str | dict = "f4", extra: dict | None = None, codec: str = "range",
                 bias_dtype: str = "f4", num_classes: int | None = None) -> bytes:
    """Serialize a model whose conv/linear layers carry ``weight_codebook`` / ``weight_index`` /
    ``weight_mask`` buffers (see ``compression.share_weights_``); every other entry of its
    state dict (batch-norm statistics, other modules' parameters) is stored exactly.

    Args:
        model_name: a registered name, ``torchvision:NAME``, ``package.module:function``, or ""
            when the architecture is unknown (the file then describes every tensor itself).
        codebook_dtype: "f4", "f2" or a dict layer -> dtype.
        codec: "range" (version 3, the default) or "huffman" (version 1, the paper's coding).
        bias_dtype: "f4" or "f2" (range codec only) for the biases of coded layers.
    """
    if codec not in ("range", "huffman"):
        raise ConfigError(f"codec must be 'range' or 'huffman', got {codec!r}")
    if codec == "huffman" and bias_dtype != "f4":
        raise ConfigError("the Huffman (version 1) format stores biases as float32")
    layers = []
    coded = set()
    for name, m in prunable_layers(model).items():
        cb = getattr(m, "weight_codebook", None)
        if cb is None:
            raise ConfigError(f"{name or 'the model'} has no codebook; run share_weights_ (or compress_) first")
        bias = m.bias.detach().cpu().float().numpy() if m.bias is not None else None
        cb_dtype = codebook_dtype.get(name, "f4") if isinstance(codebook_dtype, dict) else codebook_dtype
        coded.update({_key(name, "weight"), _key(name, "bias")} | {_key(name, b) for b in CODING_BUFFERS})
        if codec == "range":
            layers.append(encode_layer_range(name, m.weight.shape, cb.detach().cpu().numpy(),
                                             m.weight_index.cpu().numpy(), m.weight_mask.cpu().numpy(), bias,
                                             cb_dtype, bias_dtype))
            if m.weight.dtype != torch.float32:  # decoded weights are cast back to the model's dtype
                layers[-1].meta["dtype"] = raw_dtype_code(m.weight)
            continue
        bits = (int(m.weight_bits) if getattr(m, "weight_bits", None) is not None
                else max(1, math.ceil(math.log2(max(cb.numel(), 2)))))
        layers.append(encode_layer(name, m.weight.shape, cb.detach().cpu().numpy(),
                                   m.weight_index.cpu().numpy(), m.weight_mask.cpu().numpy(), bias, bits, cb_dtype))
    if codec == "huffman":  # version 1 holds the float parameters only, as it always did
        params = dict(model.named_parameters())
        raw = {k: v.detach().cpu().float() for k, v in params.items() if k not in coded}
        if any(k not in coded and k not in params for k in model.state_dict()):
            raise ConfigError("the Huffman (version 1) format cannot hold buffers (e.g. batch-norm statistics); "
                             "use the range codec")
    else:
        raw = {k: v for k, v in model.state_dict().items() if k not in coded}
    model_kwargs = dict(model_kwargs or {})
    if "num_classes" in model_kwargs:  # the header has a field of its own for it
        num_classes = model_kwargs.pop("num_classes")
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None and layers:
            num_classes = layers[-1].meta["shape"][0]
    return serialize(model_name or "", model_kwargs or {}, num_classes, preprocessing, layers, raw, class_names, extra)


def write_compressed(path: str | os.PathLike, data: bytes) -> int:
    """Write a compressed file's bytes atomically; returns its size."""
    from ..utils import atomic_write_bytes
    atomic_write_bytes(path, data)
    return len(data)


# ----------------------------------------------------------------------------- reading
def _bad(path, msg: str) -> FormatError:
    return FormatError(f"{path}: invalid compressed model file: {msg}")


def _int(v, lo: int, hi: int, what: str, path) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(path, f"{what} = {v!r} is outside {lo}..{hi}")
    return v


def parse_header(data: bytes, path="<bytes>") -> tuple[dict, int]:
    """Validate magic, version, header and checksum; returns (header, body offset)."""
    if len(data) > MAX_FILE:
        raise _bad(path, f"{len(data)} bytes is larger than any model this tool writes")
    if len(data) < _PREAMBLE.size + 4:
        raise _bad(path, "truncated before the end of the preamble")
    magic, version, flags, hlen = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _bad(path, "wrong magic bytes (not a .sqz file)")
    if version not in READ_VERSIONS:
        raise _bad(path, f"format version {version}; this tool reads versions "
                         f"{READ_VERSIONS[0]} to {READ_VERSIONS[-1]}")
    if hlen > MAX_HEADER or _PREAMBLE.size + hlen + 4 > len(data):
        raise _bad(path, f"header length {hlen} is larger than the file allows")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise _bad(path, "checksum mismatch (the file is corrupt or truncated)")
    if flags & ~FLAG_ZLIB_HEADER:
        raise _bad(path, f"unknown flags {flags:#x}")
    raw_header = data[_PREAMBLE.size:_PREAMBLE.size + hlen]
    if flags & FLAG_ZLIB_HEADER:
        try:
            d = zlib.decompressobj()
            raw_header = d.decompress(raw_header, MAX_HEADER_JSON)  # bounded: no zip bomb
            if d.unconsumed_tail or not d.eof:
                raise _bad(path, "header does not decompress within its size limit")
        except zlib.error as e:
            raise _bad(path, f"header does not decompress ({e})") from None
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _bad(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise _bad(path, "header does not describe a squeezenet-compressed model")
    if header.get("version") != version:
        raise _bad(path, f"header version {header.get('version')!r} differs from the preamble's {version}")
    return header, _PREAMBLE.size + hlen


def _from_architecture(name: str) -> bool:
    """Whether a header's model can be built to check the file against (registered names and
    torchvision's builders; ``package.module:function`` is never imported just to read a file)."""
    from ..models.registry import is_registered
    return is_registered(name) or name.startswith("torchvision:")


def _layout(header: dict, path) -> tuple[dict, dict, bool]:
    """What the file must hold: (coded layers: name -> (shape, has_bias), every state-dict
    entry: key -> (shape, dtype code), whether that came from the architecture).

    Versions 1 and 2, and version 3 files of a buildable architecture, are checked against
    the architecture built on the meta device (no memory); other version 3 files describe
    every tensor themselves, within bounds.
    """
    name, kwargs = header.get("model"), header.get("model_kwargs")
    num_classes = header.get("num_classes")
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise _bad(path, "header lacks the model name or arguments")
    if header["version"] != VERSION or _from_architecture(name):
        _int(num_classes, 1, 1_000_000, "num_classes", path)
        try:
            key = json.dumps([name, kwargs, num_classes], sort_keys=True)
        except (TypeError, ValueError):
            raise _bad(path, "model arguments are not plain JSON values") from None
        try:
            coded, state = _shapes_for(key)
        except ValueError as e:
            raise _bad(path, str(e)) from None
        return coded, state, True
    if num_classes is not None:
        _int(num_classes, 1, 1_000_000, "num_classes", path)
    return (*_self_described(header, path), False)


def _shape(v, lo: int, hi: int, what: str, path) -> tuple:
    if (not isinstance(v, list) or not lo <= len(v) <= hi
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_LAYER_WEIGHTS for d in v)
            or math.prod(v) > MAX_LAYER_WEIGHTS):
        raise _bad(path, f"{what}: shape {v!r} is not a valid tensor shape")
    return tuple(v)


def _self_described(header: dict, path) -> tuple[dict, dict]:
    layers, raws = header.get("layers"), header.get("raw")
    if not isinstance(layers, list) or not isinstance(raws, list):
        raise _bad(path, "header lacks its layer list")
    coded: dict = {}
    state: dict = {}

    def add(key, shape, dtype):
        if not isinstance(key, str) or not 0 < len(key) <= 1000 or key in state:
            raise _bad(path, f"tensor name {str(key)[:80]!r} is missing, too long or repeated")
        state[key] = (shape, dtype)

    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str) or layer["name"] in coded:
            raise _bad(path, "a layer record without a name of its own")
        name = layer["name"]
        shape = _shape(layer.get("shape"), 2, 5, name, path)
        if min(shape) < 1:
            raise _bad(path, f"{name}: empty weight shape {list(shape)}")
        n_bias = _int(layer.get("bias"), 0, shape[0], f"{name} bias size", path)
        if n_bias not in (0, shape[0]):
            raise _bad(path, f"{name}: {n_bias} biases for {shape[0]} outputs")
        dtype = layer.get("dtype", "f4")
        if dtype not in ("f4", "f2", "bf16", "f8"):
            raise _bad(path, f"{name}: unknown weight type {dtype!r}")
        coded[name] = (shape, n_bias > 0)
        add(_key(name, "weight"), shape, dtype)
        if n_bias:
            add(_key(name, "bias"), (shape[0],), dtype)
    for r in raws:
        if not isinstance(r, dict):
            raise _bad(path, f"raw tensor record {r!r} is not an object")
        if r.get("dtype") not in RAW_DTYPES:
            raise _bad(path, f"raw tensor {str(r.get('name'))[:80]!r}: unknown type {r.get('dtype')!r}")
        add(r.get("name"), _shape(r.get("shape"), 0, 8, str(r.get("name"))[:80], path), r["dtype"])
    if sum(math.prod(s) for s, _ in state.values()) > 256_000_000:
        raise _bad(path, "more weights than any model this tool writes")
    return coded, state


@functools.lru_cache(maxsize=32)
def _shapes_for(key: str) -> tuple[dict, dict]:
    from ..models import create_model
    from ..models.registry import UnknownModelError
    name, kwargs, num_classes = json.loads(key)
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, **kwargs)
    except UnknownModelError as e:
        raise ConfigError(str(e)) from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise ConfigError(f"model {name} cannot be built with {kwargs}: {e}") from None
    if sum(p.numel() for p in model.parameters()) > 256_000_000:
        raise ConfigError(f"model {name} with {kwargs} is larger than any model this tool writes")
    coded = {n: (tuple(m.weight.shape), m.bias is not None) for n, m in prunable_layers(model).items()}
    state = {k: (tuple(v.shape), _DTYPE_CODES.get(v.dtype, "?")) for k, v in model.state_dict().items()}
    return coded, state


def _check_range_layer(layer: dict, numel: int, n_bias: int, path) -> int:
    """Validate a version 2 layer record; returns its byte count."""
    name = layer["name"]
    if layer.get("coding") != "range":
        raise _bad(path, f"{name}: unknown layer coding {layer.get('coding')!r}")
    k = _int(layer.get("k"), 0, min(MAX_LEVELS, numel), f"{name} codebook size", path)
    _int(layer.get("neg"), 0, k, f"{name} negative levels", path)
    nnz = _int(layer.get("nnz"), 0, numel, f"{name} kept weights", path)
    if (k == 0) != (nnz == 0):
        raise _bad(path, f"{name}: {nnz} kept weights but {k} centroids")
    if layer.get("codebook_dtype") not in ("f4", "f2") or layer.get("bias_dtype") not in ("f4", "f2"):
        raise _bad(path, f"{name}: unknown codebook or bias type")
    _int(layer.get("bias"), n_bias, n_bias, f"{name} bias size", path)
    sizes = layer.get("sizes")
    cb_width = 4 if layer["codebook_dtype"] == "f4" else 2
    bias_width = 4 if layer["bias_dtype"] == "f4" else 2
    # A range-coded symbol costs at most 32 bits here (probabilities are at least 2**-24 plus
    # the coder's state), so a stream longer than that is corrupt, not a model.
    if (not isinstance(sizes, list) or len(sizes) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes)
            or not (sizes[0] == 0 if k == 0 else 0 < sizes[0] <= k * cb_width + 64) or sizes[1] != bias_width * n_bias
            or sizes[2] != entropy.model_table_size(k) or not 0 <= sizes[3] <= 4 * (2 * numel + 4) or sizes[3] % 4):
        raise _bad(path, f"{name}: section sizes {sizes} do not match the header")
    return sum(sizes)


def _decode_range_layer(layer: dict, chunks: list[bytes], shape, state: dict, shared: dict, path) -> None:
    name, numel = layer["name"], math.prod(shape)
    cb_b, bias_b, table, stream = chunks
    try:
        codebook = (entropy.unpack_codebook(cb_b, layer["k"], layer["codebook_dtype"]) if layer["k"]
                    else np.zeros(0, np.float32))
    except entropy.EntropyError as e:
        raise _bad(path, f"{name}: {e}") from None
    if not np.isfinite(codebook).all():
        raise _bad(path, f"{name}: non-finite codebook value")
    taps = math.prod(shape[2:]) if len(shape) > 2 else 1
    try:
        index, mask, weight = entropy.decode_layer(table, stream, numel, layer["neg"], layer["k"], taps, layer["nnz"],
                                                   codebook)
    except entropy.EntropyError as e:
        raise _bad(path, f"{name}: {e}") from None
    state[_key(name, "weight")] = torch.from_numpy(weight.reshape(shape))
    if layer["bias"]:
        bias = np.frombuffer(bias_b, "<f4" if layer["bias_dtype"] == "f4" else "<f2").astype(np.float32)
        if not np.isfinite(bias).all():
            raise _bad(path, f"{name}: non-finite bias")
        state[_key(name, "bias")] = torch.from_numpy(bias)
    shared[_key(name, "weight_codebook")] = torch.from_numpy(codebook.copy())
    shared[_key(name, "weight_index")] = torch.from_numpy(index.reshape(shape))
    shared[_key(name, "weight_mask")] = torch.from_numpy(mask.reshape(shape))
    bits = max(1, math.ceil(math.log2(max(layer["k"], 2))))
    shared[_key(name, "weight_bits")] = torch.tensor(bits, dtype=torch.int16)


def decode(data: bytes, path="<bytes>") -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Decode a file into (header, state_dict, shared_state).

    ``shared_state`` maps ``<layer>.weight_codebook`` / ``.weight_index`` / ``.weight_mask`` to
    tensors, so compression can continue (e.g. centroid fine-tuning) from a decoded file.
    Every size is checked against the header and the declared architecture before allocating.
    """
    header, off = parse_header(data, path)
    layers = header.get("layers")
    raws = header.get("raw")
    if not isinstance(layers, list) or not isinstance(raws, list):
        raise _bad(path, "header lacks its layer list")
    expected, state_layout, from_arch = _layout(header, path)
    if [layer.get("name") if isinstance(layer, dict) else None for layer in layers] != list(expected):
        raise _bad(path, f"layers do not match the architecture of {header['model']}")
    # Pass 1: validate every declared size and that they add up to the file.
    total = 0
    v2 = header["version"] in RANGE_VERSIONS
    v3 = header["version"] == VERSION
    for layer in layers:
        name = layer["name"]
        shape, has_bias = expected[name]
        if layer.get("shape") != list(shape):
            raise _bad(path, f"{name}: shape {layer.get('shape')} does not match the architecture's {list(shape)}")
        numel = math.prod(shape)
        if numel > MAX_LAYER_WEIGHTS:
            raise _bad(path, f"{name}: too many weights")
        if v2:
            total += _check_range_layer(layer, numel, shape[0] if has_bias else 0, path)
            continue
        bits = _int(layer.get("bits"), 1, 8, f"{name} bits", path)
        k = _int(layer.get("k"), 0, 2 ** bits, f"{name} codebook size", path)
        nnz = _int(layer.get("nnz"), 0, numel, f"{name} kept weights", path)
        if (k == 0) != (nnz == 0):
            raise _bad(path, f"{name}: {nnz} kept weights but {k} centroids")
        if layer.get("codebook_dtype") not in ("f4", "f2"):
            raise _bad(path, f"{name}: unknown codebook type {layer.get('codebook_dtype')!r}")
        _int(layer.get("bias"), shape[0] if has_bias else 0, shape[0] if has_bias else 0, f"{name} bias size", path)
        if layer.get("positions") not in ("dense", "kept", "pruned"):
            raise _bad(path, f"{name}: unknown position coding {layer.get('positions')!r}")
        if layer["positions"] == "dense":
            if nnz != numel:
                raise _bad(path, f"{name}: dense coding but {nnz} of {numel} weights kept")
        elif layer.get("span") not in SPANS:
            raise _bad(path, f"{name}: invalid span {layer.get('span')!r}")
        n_pos_sym = _int(layer.get("position_symbols"), 0, 2 * numel + 1, f"{name} position symbols", path)
        idx_bits = _int(layer.get("index_bits"), 0, nnz * huffman.MAX_CODE_LENGTH, f"{name} index bits", path)
        pos_bits = _int(layer.get("position_bits"), 0, n_pos_sym * huffman.MAX_CODE_LENGTH, f"{name} position bits",
                        path)
        sizes = layer.get("sizes")
        cb_width = 4 if layer["codebook_dtype"] == "f4" else 2
        if (not isinstance(sizes, list) or len(sizes) != 6 or sizes[0] != k * cb_width or sizes[1] != 4 * layer["bias"]
                or sizes[4] != _bits_to_bytes(idx_bits) or sizes[5] != _bits_to_bytes(pos_bits)
                or not all(isinstance(s, int) and 0 <= s <= 4 * (2 ** bits + 260) for s in sizes[2:4])):
            raise _bad(path, f"{name}: section sizes {sizes} do not match the header")
        total += sum(sizes)
    raw_names = []
    for r in raws:
        dtype = r.get("dtype") if isinstance(r, dict) and v3 else "f4"
        if (not isinstance(r, dict) or r.get("name") not in state_layout or not isinstance(r.get("shape"), list)
                or tuple(r["shape"]) != state_layout[r["name"]][0] or dtype not in RAW_DTYPES
                or (from_arch and dtype != state_layout[r["name"]][1]) or r["name"] in raw_names):
            raise _bad(path, f"raw tensor {str(r)[:120]} does not belong to {header['model'] or 'this model'}")
        raw_names.append(r["name"])
        total += np.dtype(RAW_DTYPES[dtype][0]).itemsize * math.prod(state_layout[r["name"]][0])
    if v3:  # version 3 holds the whole state dict: every entry coded or stored, none twice
        held = set(raw_names)
        for name, (_, has_bias) in expected.items():
            held |= {_key(name, "weight")} | ({_key(name, "bias")} if has_bias else set())
        if held != set(state_layout) or len(held) != len(raw_names) + sum(1 + b for _, b in expected.values()):
            missing = sorted(set(state_layout) - held)[:3]
            raise _bad(path, f"the tensors stored do not make the model's state dict (missing e.g. {missing})")
    if off + total + 4 != len(data):
        raise _bad(path, f"sections add up to {off + total + 4} bytes but the file has {len(data)}"
                   + (" (truncated)" if off + total + 4 > len(data) else " (trailing bytes)"))
    # Pass 2: decode.
    from bitarray import bitarray
    state: dict[str, torch.Tensor] = {}
    shared: dict[str, torch.Tensor] = {}
    for layer in layers:
        name, shape, numel = layer["name"], expected[layer["name"]][0], math.prod(expected[layer["name"]][0])
        chunks = []
        for s in layer["sizes"]:
            chunks.append(data[off:off + s])
            off += s
        if v2:
            _decode_range_layer(layer, chunks, shape, state, shared, path)
            continue
        cb_b, bias_b, it_b, pt_b, is_b, ps_b = chunks
        codebook = np.frombuffer(cb_b, "<f4" if layer["codebook_dtype"] == "f4" else "<f2").astype(np.float32)
        if not np.isfinite(codebook).all():
            raise _bad(path, f"{name}: non-finite codebook value")
        where = f"{path}: {name}"
        idx_table = _parse_table(it_b, 2 ** layer["bits"], where + " index code table")
        span = layer.get("span") or 0
        pos_table = (_parse_table(pt_b, span + 1, where + " position code table")
                     if layer["positions"] != "dense" else None)
        try:
            bits = bitarray(endian="big")
            bits.frombytes(is_b)
            idx = huffman.decode(bits[:layer["index_bits"]], idx_table, layer["nnz"])
            if layer["positions"] == "dense":
                mask = np.ones(numel, bool)
            else:
                pbits = bitarray(endian="big")
                pbits.frombytes(ps_b)
                sym = huffman.decode(pbits[:layer["position_bits"]], pos_table, layer["position_symbols"])
                pos = positions_from_gaps(sym, span)
                if pos.size and pos[-1] >= numel:
                    raise _bad(path, f"{name}: positions run past the layer's {numel} weights")
                mask = np.zeros(numel, bool)
                mask[pos] = True
                if layer["positions"] == "pruned":
                    mask = ~mask
                if int(mask.sum()) != layer["nnz"]:
                    raise _bad(path, f"{name}: positions give {int(mask.sum())} kept weights, "
                                     f"header says {layer['nnz']}")
        except huffman.HuffmanError as e:
            raise _bad(path, f"{name}: {e}") from None
        if idx.size and idx.max() >= codebook.size:
            raise _bad(path, f"{name}: codebook index {int(idx.max())} out of range (codebook has {codebook.size})")
        weight = np.zeros(numel, np.float32)
        weight[mask] = codebook[idx] if codebook.size else 0.0
        index = np.zeros(numel, np.int16)
        index[mask] = idx
        state[_key(name, "weight")] = torch.from_numpy(weight.reshape(shape))
        if layer["bias"]:
            bias = np.frombuffer(bias_b, "<f4").astype(np.float32)
            if not np.isfinite(bias).all():
                raise _bad(path, f"{name}: non-finite bias")
            state[_key(name, "bias")] = torch.from_numpy(bias)
        shared[_key(name, "weight_codebook")] = torch.from_numpy(codebook.copy())
        shared[_key(name, "weight_index")] = torch.from_numpy(index.reshape(shape))
        shared[_key(name, "weight_mask")] = torch.from_numpy(mask.reshape(shape))
        shared[_key(name, "weight_bits")] = torch.tensor(layer["bits"], dtype=torch.int16)
    for layer in layers:  # coded weights come back in the model's own dtype (float32 unless recorded)
        dtype = layer.get("dtype", "f4") if v3 else "f4"
        if dtype != "f4":
            for k in (_key(layer["name"], "weight"), _key(layer["name"], "bias")):
                if k in state:
                    state[k] = state[k].to(RAW_DTYPES[dtype][1])
    for r in raws:
        shape = state_layout[r["name"]][0]
        code = r["dtype"] if v3 else "f4"
        n = math.prod(shape)
        array = np.frombuffer(data, RAW_DTYPES[code][0], n, off).copy()
        off += array.nbytes
        if code == "b1" and (array > 1).any():
            raise _bad(path, f"{r['name']}: a boolean tensor holds values other than 0 and 1")
        t = torch.from_numpy(array).reshape(shape)
        state[r["name"]] = t.view(torch.bfloat16) if code == "bf16" else t.to(torch.bool) if code == "b1" else t
    if v3:  # the state dict in the order the model lists it
        state = {k: state[k] for k in state_layout}
    return header, state, shared


def read_compressed(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """``decode`` a file from disk, refusing oversized files before reading them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE:
        raise _bad(path, "file is larger than any model this tool writes")
    return decode(path.read_bytes(), path)


def load_compressed(path: str | os.PathLike):
    """A compressed file as ``LoadedWeights``: its ``state_dict`` (strict-loadable into the
    model it came from) and, where the file names the architecture, ``build_model()``."""
    from ..preprocessing import TORCHVISION_IMAGENET, Preprocessing
    from .loading import LoadedWeights
    header, state, shared = read_compressed(path)
    try:  # a model compressed without its preprocessing gets torchvision's, as a bare state dict does
        prep = (TORCHVISION_IMAGENET if header.get("preprocessing") is None
                else Preprocessing.from_dict(header["preprocessing"]))
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(path, f"bad preprocessing record: {e}") from None
    names = header.get("class_names")
    if names == "imagenet1k":
        from torchvision.models import SqueezeNet1_0_Weights
        names = list(SqueezeNet1_0_Weights.IMAGENET1K_V1.meta["categories"])
    elif names is not None and (not isinstance(names, list) or len(names) != header["num_classes"]):
        raise _bad(path, "class name list does not match the class count")
    return LoadedWeights(model_name=header["model"], state_dict=state, preprocessing=prep,
                         num_classes=header["num_classes"] or 0, model_kwargs=header["model_kwargs"],
                         class_names=names, kind="compressed", path=str(path),
                         extra={"header": header, "shared_state": shared})


def size_report(data: bytes, path="<bytes>") -> dict:
    """Exact byte accounting of a file: per layer and per component, adding up to the file size.

    The file is fully decoded first, so a file the reader rejects gets no size report.
    """
    decode(data, path)
    header, off = parse_header(data, path)
    hlen = off - _PREAMBLE.size
    components = {"magic_and_version": _PREAMBLE.size - 4, "header": hlen + 4, "codebooks": 0, "biases": 0,
                  "code_tables": 0, "weight_codes": 0, "position_codes": 0, "raw_tensors": 0, "checksum": 4}
    rows = []
    fp32 = 0
    for layer in header["layers"]:
        numel = math.prod(layer["shape"])
        fp32 += 4 * (numel + layer["bias"])
        if header["version"] in RANGE_VERSIONS:
            cb, bias, table, stream = layer["sizes"]
            # one stream holds positions, signs and magnitudes together
            it, pt, ic, pc = table, 0, stream, 0
            bits, span, positions = max(1, math.ceil(math.log2(max(layer["k"], 2)))), 0, "range"
            idx_bits = 8 * stream
        else:
            cb, bias, it, pt, ic, pc = layer["sizes"]
            bits, span, positions, idx_bits = layer["bits"], layer["span"], layer["positions"], layer["index_bits"]
        components["codebooks"] += cb
        components["biases"] += bias
        components["code_tables"] += it + pt
        components["weight_codes"] += ic
        components["position_codes"] += pc
        rows.append({"layer": layer["name"], "weights": numel, "kept": layer["nnz"],
                     "density": layer["nnz"] / numel if numel else 1.0,
                     "bits": bits, "levels": layer["k"], "codebook": cb, "bias": bias, "code_tables": it + pt,
                     "weight_codes": ic, "position_codes": pc, "positions": positions, "span": span,
                     "bytes": sum(layer["sizes"]), "fp32_bytes": 4 * (numel + layer["bias"]),
                     "bits_per_kept_weight": 8 * (it + pt + ic + pc) / layer["nnz"] if layer["nnz"] else 0.0,
                     "index_bits_per_weight": idx_bits / layer["nnz"] if layer["nnz"] else 0.0,
                     "position_bits_per_weight": layer.get("position_bits", 0) / layer["nnz"] if layer["nnz"] else 0.0})
    for r in header["raw"]:
        n = math.prod(r["shape"])
        components["raw_tensors"] += np.dtype(RAW_DTYPES[r.get("dtype", "f4")][0]).itemsize * n
        fp32 += (4 * n if r.get("dtype", "f4") in ("f4", "f2", "bf16")
                 else np.dtype(RAW_DTYPES[r["dtype"]][0]).itemsize * n)
    total = sum(components.values())
    if total != len(data):  # decode() checked this layout; a mismatch is a bug here, not a bad file
        raise RuntimeError(f"size accounting gives {total} bytes for a file of {len(data)}")
    squeezenet_fp32, alexnet_fp32 = SQUEEZENET_FP32, ALEXNET_FP32
    return {"bytes": len(data), "version": header["version"], "model": header["model"],
            "num_classes": header["num_classes"], "fp32_bytes": fp32, "ratio": fp32 / len(data),
            "ratio_vs_own_fp32": fp32 / len(data),
            "ratio_vs_squeezenet_fp32": squeezenet_fp32 / len(data), "ratio_vs_alexnet_fp32": alexnet_fp32 / len(data),
            "kept_weights": sum(layer["nnz"] for layer in header["layers"]),
            "components": components, "layers": rows}
