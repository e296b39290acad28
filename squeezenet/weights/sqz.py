"""Our compressed model file (``.sqz``): pruned, weight-shared, entropy-coded. No pickle.

Layout (little-endian; full description in ``docs/format.md``)::

    magic   8 bytes  b"SQZDC\\x00\\r\\n"
    version uint16   3 (range-coded layers, any state dict), 2 (range-coded layers of a
                     registered architecture, float32 parameters) or 1 (Huffman, the paper's coding)
    flags   uint16   bit 0: the header is zlib-compressed
    hlen    uint32   length of the (stored) header
    header  hlen bytes of UTF-8 JSON: model, arguments, classes, preprocessing, one record per
            coded layer (its ``coding`` and the byte size of each of its sections) and one per
            raw tensor
    body    each coded layer's sections, then the raw tensors
    crc32   uint32 of everything before it

This module is the container; how a layer's sections code its weights is the business of the
layer codecs in ``codecs/`` (``range``: context-modelled range coding, ``huffman``: Deep
Compression's), which it reaches through ``codecs.get_codec`` only.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.imagenet import imagenet_categories
from ..errors import ConfigError
from ..memory import release_memory
from ..models import create_model
from ..models.layers import coded_key, is_tensor_layer, prunable_layers, storage_key
from ..models.registry import UnknownModelError, is_registered
from ..preprocessing import TORCHVISION_IMAGENET, Preprocessing
from ..utils import atomic_write_bytes, numpy_small_pages
from .codecs import CODECS, LayerInput, LayerRecord, get_codec
from .loaded import LoadedWeights

from .container import (ALIAS_VERSION, FLAG_ZLIB_HEADER, FORMAT_NAME, HUFFMAN_VERSION, MAGIC, MAX_FILE,  # noqa: F401
                        MAX_HEADER, MAX_LAYER_WEIGHTS, MAX_STATE_WEIGHTS, READ_VERSIONS, STORED_DTYPES, VERSION,
                        alias_records, bad, check_body, checked_int, decode_layers, decode_raws, layer_codec,
                        parse_header, raws_offset, self_described, weight_dtype, whole_state)
from .container import PREAMBLE as _PREAMBLE  # noqa: F401  (tests read the preamble's layout)

# Layers from this many weights hand their encoder's freed memory back to the system as each is
# done (glibc keeps freed arrays under 32 MB in its heaps: a 98M-weight model's encode rose
# 0.2 GB over its steady state without it).
TRIMMED_LAYER = 1 << 20
# fp32 sizes of the paper's Table 2 comparisons: SqueezeNet v1.0 and AlexNet, 1000 classes
SQUEEZENET_FP32 = 4 * 1_248_424
ALEXNET_FP32 = 4 * 60_965_224


def _default_class_names(names, num_classes):
    if not names:
        return None
    if num_classes == 1000:
        if list(names) == imagenet_categories():
            return "imagenet1k"
    return list(names)


# Raw (exactly stored) tensors: dtype code -> (numpy dtype of the stored bytes, torch dtype).
_TORCH_DTYPES = {"f4": torch.float32, "f2": torch.float16, "bf16": torch.bfloat16, "f8": torch.float64,
                 "i8": torch.int64, "i4": torch.int32, "i2": torch.int16, "i1": torch.int8, "u1": torch.uint8,
                 "b1": torch.bool}
RAW_DTYPES = {code: (STORED_DTYPES[code], t) for code, t in _TORCH_DTYPES.items()}
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


def file_version(layers: list[LayerRecord]) -> int:
    """The version a file of these layers is written as: the lowest that holds all their codings."""
    codecs = {CODECS[layer.meta["coding"]] for layer in layers}
    version = max((c.versions[0] for c in codecs), default=VERSION)
    if any(version not in c.versions for c in codecs):
        raise ConfigError("no file version holds layers of " + " and ".join(sorted(c.name for c in codecs)))
    return version


def _assemble(model_name: str, model_kwargs: dict, num_classes: int | None, preprocessing: dict | None,
              layers: list[LayerRecord], raw: dict[str, torch.Tensor] | None = None,
              class_names: list | None = None, extra: dict | None = None,
              aliases: dict[str, str] | None = None) -> bytes:
    """Assemble a complete file from coded layers and raw (exactly stored) tensors.

    The layers' codec sets the version: range-coded layers make a version 3 file, Huffman ones
    version 1 (which stores raw float32 parameters only); ``aliases`` (state-dict key -> the
    coded or raw key holding the same tensor) make it version 5.
    """
    raw = raw or {}
    version = file_version(layers)
    if aliases:
        if version == HUFFMAN_VERSION:
            raise ConfigError("the Huffman (version 1) format cannot hold a tensor under two names (tied weights); "
                              "use the range codec")
        version = max(version, ALIAS_VERSION)
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
    if aliases:
        header["aliases"] = dict(aliases)
    if extra:
        header["extra"] = extra
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hbytes = zlib.compress(hjson, 9)
    body = b"".join(s for layer in layers for s in layer.sections)
    body += b"".join(_raw_bytes(v) for v in raw.values())
    data = _PREAMBLE.pack(MAGIC, version, FLAG_ZLIB_HEADER, len(hbytes)) + hbytes + body
    return data + struct.pack("<I", zlib.crc32(data))


# Buffers that compression keeps on coded modules: coding state, not part of the model's weights.
CODING_BUFFERS = ("weight_mask", "weight_codebook", "weight_index", "weight_bits", "weight_step")


def layer_input(name: str, m: nn.Module, codebook_dtype: str = "f4", bias_dtype: str = "f4") -> LayerInput:
    """A coded module's buffers (``compression.share_weights_``) as a codec's input."""
    cb = getattr(m, "weight_codebook", None)
    if cb is None:
        raise ConfigError(f"{name or 'the model'} has no codebook; run share_weights_ (or compress_) first")
    bits = getattr(m, "weight_bits", None)
    step = getattr(m, "weight_step", None)
    bias = m.bias.detach().cpu().float().numpy() if m.bias is not None else None
    return LayerInput(name, tuple(m.weight.shape), cb.detach().cpu().float().numpy(), m.weight_index.cpu().numpy(),
                      m.weight_mask.cpu().numpy(), bias, int(bits) if bits is not None else None, codebook_dtype,
                      bias_dtype, float(step) if step is not None else None)


def encode(model: nn.Module, model_name: str | None = None, **options) -> bytes:
    """The file's bytes for a model whose conv/linear layers carry ``weight_codebook`` /
    ``weight_index`` / ``weight_mask`` buffers (``compression.compress_`` or ``share_weights_``);
    every other entry of its state dict (batch-norm statistics, other modules' parameters) is
    stored exactly.

    The options default to what ``compress_`` recorded on the model (``model.compressed_as``);
    those given here override them. Args as ``_encode``.
    """
    info = dict(getattr(model, "compressed_as", None) or {})
    if model_name is not None:
        info["model_name"] = model_name
    info.update(options)
    key = _encoding_key(model, info)
    last = getattr(model, "_sqz_encoded", None)
    if last is not None and last[0] == key:
        return last[1]
    data = _encode(model, **info)
    model._sqz_encoded = (key, data)
    return data


def _encoding_key(model: nn.Module, info: dict) -> bytes:
    """A digest of everything ``_encode`` reads: the options, every state entry's name, shape,
    dtype and the entries it shares storage with, and the bytes of all but the coded layers'
    weights (the file holds their codes, read off the coding buffers). A model encoded again
    unchanged gets its last bytes back (a budget search serializes its fit, then ``compress_``
    and ``save_compressed`` asked again: two encodes more, 1.2 s of a 22M-weight model's 24 s);
    any change, in place or not, misses."""
    coded = {coded_key(n, "weight", is_tensor_layer(m)) for n, m in prunable_layers(model).items()
             if getattr(m, "weight_index", None) is not None}
    h = hashlib.sha1(repr(sorted(info.items(), key=lambda kv: kv[0])).encode())
    first_with: dict[int, str] = {}  # storage -> the first entry on it: which entries are tied
    for k, t in model.state_dict(keep_vars=True).items():
        t = t.detach()
        tied = first_with.setdefault(t.untyped_storage().data_ptr(), k)
        h.update(repr((k, tuple(t.shape), str(t.dtype), tied)).encode())
        if k not in coded and t.numel():
            h.update(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.digest()


def save_compressed(model: nn.Module, path: str | os.PathLike, model_name: str | None = None, **options) -> int:
    """Write a compressed model's file atomically (options as ``encode``); returns its size in bytes."""
    data = encode(model, model_name, **options)
    atomic_write_bytes(path, data)
    return len(data)


def _encode(model: nn.Module, model_name: str = "", *, model_kwargs: dict | None = None,
            preprocessing: dict | None = None, class_names: list | None = None,
            codebook_dtype: str | dict = "f4", extra: dict | None = None, codec: str = "range",
            bias_dtype: str = "f4", num_classes: int | None = None) -> bytes:
    """``encode`` with every option spelled out.

    Args:
        model_name: a registered name, ``torchvision:NAME``, ``package.module:function``, or ""
            when the architecture is unknown (the file then describes every tensor itself).
        codebook_dtype: "f4", "f2" or a dict layer -> dtype.
        codec: a name in ``codecs.CODECS``: "range" (version 3, the default) or "huffman"
            (version 1, the paper's coding). Layers that the trellis quantizer made (they carry
            a ``weight_step`` buffer) are trellis-coded (version 4) unless the codec is "huffman".
        bias_dtype: "f4" or "f2" (range codec only) for the biases of coded layers.
    """
    chosen = get_codec(codec)
    layers = []
    coded = set()
    for name, m in prunable_layers(model).items():
        cb_dtype = codebook_dtype.get(name, "f4") if isinstance(codebook_dtype, dict) else codebook_dtype
        # a layer the trellis quantizer made (it carries its step) only keeps its bits on the trellis
        on_trellis = getattr(m, "weight_step", None) is not None and chosen.any_levels
        codec_l = CODECS["trellis"] if on_trellis else chosen
        layers.append(codec_l.encode(layer_input(name, m, cb_dtype, bias_dtype)))
        if m.weight.numel() >= TRIMMED_LAYER:
            release_memory()  # a large layer's coding temporaries, before the next layer's
        if m.weight.dtype != torch.float32 and chosen.versions[0] != HUFFMAN_VERSION:
            layers[-1].meta["dtype"] = raw_dtype_code(m.weight)  # decoded weights come back in it
        whole = is_tensor_layer(m)
        if whole:  # the record names the parameter itself (lstm.weight_ih_l0), not a module
            layers[-1].meta["tensor"] = True
        coded.update(coded_key(name, t, whole) for t in ("weight",) + CODING_BUFFERS)
        if not whole:
            coded.add(coded_key(name, "bias"))
    aliases: dict[str, str] = {}
    if file_version(layers) == HUFFMAN_VERSION:  # version 1 holds the float parameters only, as it always did
        if not _from_architecture(model_name or ""):  # its reader rebuilds the layout from the architecture
            raise ConfigError("the Huffman (version 1) format needs a registered or torchvision architecture "
                              f"(got {model_name or 'none'!r}); use the range codec for other models")
        params = dict(model.named_parameters())
        raw = {k: v.detach().cpu().float() for k, v in params.items() if k not in coded}
        if any(k not in coded and k not in params for k in model.state_dict()):
            raise ConfigError("the Huffman (version 1) format cannot hold buffers (e.g. batch-norm statistics); "
                             "use the range codec")
    else:
        raw, aliases = _raw_and_aliases(model.state_dict(), coded, [coded_key(layer.meta["name"], "weight",
                                                                            layer.meta.get("tensor", False))
                                                                  for layer in layers])
    model_kwargs = dict(model_kwargs or {})
    if "num_classes" in model_kwargs:  # the header has a field of its own for it
        num_classes = model_kwargs.pop("num_classes")
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None and layers:
            num_classes = layers[-1].meta["shape"][0]
    return _assemble(model_name or "", model_kwargs or {}, num_classes, preprocessing, layers, raw, class_names, extra,
                     aliases)


def _raw_and_aliases(state: dict[str, torch.Tensor], coded: set[str],
                     coded_weights: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state-dict entries stored exactly, and those that repeat a coded or stored tensor
    (by memory, not by name: a tied embedding is the output layer's weight) as aliases."""
    holder = {storage_key(state[k]): k for k in reversed(coded_weights)}  # the first layer coding a tensor holds it
    raw, aliases = {}, {}
    for k, v in state.items():
        if k in coded:
            continue
        key = storage_key(v)
        if key is not None and key in holder:
            aliases[k] = holder[key]
            continue
        if key is not None:
            holder[key] = k
        raw[k] = v
    return raw, aliases


# ----------------------------------------------------------------------------- reading
# The container's checks and section decoding live in ``container`` (no torch), shared with
# ``squeezenet.reader``; what this side adds is the check against a buildable architecture and
# the torch tensors.
def _from_architecture(name: str) -> bool:
    """Whether a header's model can be built to check the file against (registered names and
    torchvision's builders; ``package.module:function`` is never imported just to read a file)."""
    return is_registered(name) or name.startswith("torchvision:")


def _layout(header: dict, path) -> tuple[dict, dict, bool]:
    """What the file must hold: (coded layers: name -> (shape, has_bias, whole tensor), every state-dict
    entry: key -> (shape, dtype code), whether that came from the architecture).

    Versions 1 and 2, and version 3 files of a buildable architecture, are checked against
    the architecture built on the meta device (no memory); other version 3 files describe
    every tensor themselves, within bounds.
    """
    name, kwargs = header.get("model"), header.get("model_kwargs")
    num_classes = header.get("num_classes")
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise bad(path, "header lacks the model name or arguments")
    if not whole_state(header["version"]) or _from_architecture(name):
        checked_int(num_classes, 1, 1_000_000, "num_classes", path)
        try:
            key = json.dumps([name, kwargs, num_classes], sort_keys=True)
        except (TypeError, ValueError):
            raise bad(path, "model arguments are not plain JSON values") from None
        try:
            coded, state = _shapes_for(key)
        except ValueError as e:
            raise bad(path, str(e)) from None
        return coded, state, True
    if num_classes is not None:
        checked_int(num_classes, 1, 1_000_000, "num_classes", path)
    return (*self_described(header, path), False)


@functools.lru_cache(maxsize=32)
def _shapes_for(key: str) -> tuple[dict, dict]:
    name, kwargs, num_classes = json.loads(key)
    try:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, **kwargs)
    except UnknownModelError as e:
        raise ConfigError(str(e)) from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise ConfigError(f"model {name} cannot be built with {kwargs}: {e}") from None
    if sum(p.numel() for p in model.parameters()) > MAX_STATE_WEIGHTS:
        raise ConfigError(f"model {name} with {kwargs} is larger than any model this tool writes")
    coded = {n: (tuple(m.weight.shape), m.bias is not None, is_tensor_layer(m))
             for n, m in prunable_layers(model).items()}
    state = {k: (tuple(v.shape), _DTYPE_CODES.get(v.dtype, "?")) for k, v in model.state_dict().items()}
    return coded, state


def _decode_layers(data: bytes, off: int, header: dict, expected: dict, path) -> tuple[dict, dict, int]:
    """Pass 2 over the coded layers: (state, shared state, offset after their sections)."""
    state: dict[str, torch.Tensor] = {}
    shared: dict[str, torch.Tensor] = {}
    for layer, out in decode_layers(data, off, header, expected, path):
        shape, _, whole = expected[layer["name"]]
        name = layer["name"]
        dtype = _TORCH_DTYPES[weight_dtype(layer, header["version"])]
        state[coded_key(name, "weight", whole)] = torch.from_numpy(out.weight.reshape(shape)).to(dtype)
        if out.bias is not None:
            state[coded_key(name, "bias")] = torch.from_numpy(out.bias).to(dtype)
        shared[coded_key(name, "weight_codebook", whole)] = torch.from_numpy(out.codebook)
        shared[coded_key(name, "weight_index", whole)] = torch.from_numpy(out.index.reshape(shape))
        shared[coded_key(name, "weight_mask", whole)] = torch.from_numpy(out.mask.reshape(shape))
        shared[coded_key(name, "weight_bits", whole)] = torch.tensor(out.bits, dtype=torch.int16)
    return state, shared, raws_offset(off, header)


def _decode_raws(data: bytes, off: int, header: dict, state_layout: dict, state: dict, path) -> None:
    for name, code, array in decode_raws(data, off, header, state_layout, path):
        t = torch.from_numpy(array)
        state[name] = t.view(torch.bfloat16) if code == "bf16" else t.to(torch.bool) if code == "b1" else t


def decode(data: bytes, path="<bytes>") -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Decode a file into (header, state_dict, shared_state).

    ``shared_state`` maps ``<layer>.weight_codebook`` / ``.weight_index`` / ``.weight_mask`` to
    tensors, so compression can continue (e.g. centroid fine-tuning) from a decoded file.
    Every size is checked against the header and the declared architecture before allocating.
    """
    header, off = parse_header(data, path)
    expected, state_layout, from_arch = _layout(header, path)
    check_body(data, off, header, expected, state_layout, from_arch, path)
    with numpy_small_pages():  # a 22M-weight model's first decode in a process: 2.0 s on huge pages, 0.6 s
        state, shared, off = _decode_layers(data, off, header, expected, path)
        _decode_raws(data, off, header, state_layout, state, path)
        for alias, target in alias_records(header, path).items():
            state[alias] = state[target]  # one tensor under each of its names, as in the model
    if whole_state(header["version"]):  # the state dict in the order the model lists it
        state = {k: state[k] for k in state_layout}
    return header, state, shared


def _read(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """``decode`` a file from disk, refusing oversized files before reading them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE:
        raise bad(path, "file is larger than any model this tool writes")
    return decode(path.read_bytes(), path)


def load_compressed(path: str | os.PathLike):
    """A compressed file as ``LoadedWeights``: its ``state_dict`` (strict-loadable into the
    model it came from) and, where the file names the architecture, ``build_model()``."""
    header, state, shared = _read(path)
    try:  # a model compressed without its preprocessing gets torchvision's, as a bare state dict does
        prep = (TORCHVISION_IMAGENET if header.get("preprocessing") is None
                else Preprocessing.from_dict(header["preprocessing"]))
    except (KeyError, ValueError, TypeError) as e:
        raise bad(path, f"bad preprocessing record: {e}") from None
    names = header.get("class_names")
    if names == "imagenet1k":
        names = imagenet_categories()
    elif names is not None and (not isinstance(names, list) or len(names) != header["num_classes"]):
        raise bad(path, "class name list does not match the class count")
    return LoadedWeights(model_name=header["model"], state_dict=state, preprocessing=prep,
                         num_classes=header["num_classes"] or 0, model_kwargs=header["model_kwargs"],
                         class_names=names, kind="compressed", path=str(path),
                         extra={"header": header, "shared_state": shared})


def fixed_bytes(data: bytes, path="<bytes>") -> int:
    """Bytes of a file that do not depend on how its layers' weights are coded: the preamble,
    header, biases, raw tensors and checksum (the header only is parsed, not the layers)."""
    header, _ = parse_header(data, path)
    rows = (layer_codec(layer, header["version"], path).size_row(layer) for layer in header["layers"])
    return len(data) - sum(r["codebook"] + r["code_tables"] + r["weight_codes"] + r["position_codes"] for r in rows)


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
        row = layer_codec(layer, header["version"], path).size_row(layer)
        for part, key in (("codebook", "codebooks"), ("bias", "biases"), ("code_tables", "code_tables"),
                          ("weight_codes", "weight_codes"), ("position_codes", "position_codes")):
            components[key] += row[part]
        nnz = layer["nnz"]
        coded = row["code_tables"] + row["weight_codes"] + row["position_codes"]
        rows.append({"layer": layer["name"], "weights": numel, "kept": nnz, "density": nnz / numel if numel else 1.0,
                     "bits": row["bits"], "levels": layer["k"], "codebook": row["codebook"], "bias": row["bias"],
                     "code_tables": row["code_tables"], "weight_codes": row["weight_codes"],
                     "position_codes": row["position_codes"], "positions": row["positions"], "span": row["span"],
                     "coding": layer.get("coding", "huffman"),
                     "bytes": sum(layer["sizes"]), "fp32_bytes": 4 * (numel + layer["bias"]),
                     "bits_per_kept_weight": 8 * coded / nnz if nnz else 0.0,
                     "index_bits_per_weight": row["index_bits"] / nnz if nnz else 0.0,
                     "position_bits_per_weight": row["position_bits"] / nnz if nnz else 0.0})
    for r in header["raw"]:
        n = math.prod(r["shape"])
        components["raw_tensors"] += np.dtype(STORED_DTYPES[r.get("dtype", "f4")]).itemsize * n
        fp32 += (4 * n if r.get("dtype", "f4") in ("f4", "f2", "bf16")
                 else np.dtype(STORED_DTYPES[r["dtype"]]).itemsize * n)
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
