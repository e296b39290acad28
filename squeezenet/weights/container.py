"""The ``.sqz`` container without torch: preamble, header, the checks of every record, and the
decoding of each section into numpy arrays.

``sqz`` (the torch side: encoding, architecture checks, tensors) and ``squeezenet.reader`` (numpy
and constriction only) both read files through these functions, so the two can never disagree
on what a file holds. The layout is described in ``docs/format.md``.
"""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

from ..errors import FormatError
from ..utils import coded_key
from .codecs import CODECS, DecodedLayer, LayerError
from .codecs.base import int_field

MAGIC = b"SQZDC\x00\r\n"
VERSION = 3             # the whole state dict: coded layers plus every other entry, any dtype
HUFFMAN_VERSION = 1     # float32 parameters only (buffers are rebuilt by the architecture)
ALIAS_VERSION = 5       # version 4 plus aliases: one tensor under several names (tied weights)
READ_VERSIONS = (1, 2, 3, 4, 5)
FORMAT_NAME = "squeezenet-compressed"
MAX_HEADER = 1 << 20
MAX_FILE = 512 << 20
MAX_LAYER_WEIGHTS = 1 << 28
MAX_STATE_WEIGHTS = 256_000_000
PREAMBLE = struct.Struct("<8sHHI")
FLAG_ZLIB_HEADER = 1
MAX_HEADER_JSON = 4 << 20

# Raw (exactly stored) tensors and coded weights: dtype code -> numpy dtype of the stored bytes.
# bf16 is stored as its 16 bits (numpy has no bfloat16); b1 as one byte, 0 or 1.
STORED_DTYPES = {"f4": "<f4", "f2": "<f2", "bf16": "<i2", "f8": "<f8", "i8": "<i8", "i4": "<i4", "i2": "<i2",
                 "i1": "i1", "u1": "u1", "b1": "u1"}
WEIGHT_DTYPES = ("f4", "f2", "bf16", "f8")


def bad(path, msg: str) -> FormatError:
    return FormatError(f"{path}: invalid compressed model file: {msg}")


def checked_int(v, lo: int, hi: int, what: str, path) -> int:
    """``codecs.base.int_field`` for the container's own fields, failing as the file's error."""
    try:
        return int_field(v, lo, hi, what)
    except LayerError as e:
        raise bad(path, str(e)) from None


def parse_header(data: bytes, path="<bytes>") -> tuple[dict, int]:
    """Validate magic, version, header and checksum; returns (header, body offset)."""
    if len(data) > MAX_FILE:
        raise bad(path, f"{len(data)} bytes is larger than any model this tool writes")
    if len(data) < PREAMBLE.size + 4:
        raise bad(path, "truncated before the end of the preamble")
    magic, version, flags, hlen = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise bad(path, "wrong magic bytes (not a .sqz file)")
    if version not in READ_VERSIONS:
        raise bad(path, f"format version {version}; this tool reads versions "
                        f"{READ_VERSIONS[0]} to {READ_VERSIONS[-1]}")
    if hlen > MAX_HEADER or PREAMBLE.size + hlen + 4 > len(data):
        raise bad(path, f"header length {hlen} is larger than the file allows")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise bad(path, "checksum mismatch (the file is corrupt or truncated)")
    if flags & ~FLAG_ZLIB_HEADER:
        raise bad(path, f"unknown flags {flags:#x}")
    raw_header = data[PREAMBLE.size:PREAMBLE.size + hlen]
    if flags & FLAG_ZLIB_HEADER:
        try:
            d = zlib.decompressobj()
            raw_header = d.decompress(raw_header, MAX_HEADER_JSON)  # bounded: no zip bomb
            if d.unconsumed_tail or not d.eof:
                raise bad(path, "header does not decompress within its size limit")
        except zlib.error as e:
            raise bad(path, f"header does not decompress ({e})") from None
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise bad(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise bad(path, "header does not describe a squeezenet-compressed model")
    if header.get("version") != version:
        raise bad(path, f"header version {header.get('version')!r} differs from the preamble's {version}")
    if not isinstance(header.get("layers"), list) or not isinstance(header.get("raw"), list):
        raise bad(path, "header lacks its layer list")
    return header, PREAMBLE.size + hlen


def whole_state(version: int) -> bool:
    """Whether a file of this version holds the whole state dict (every entry, any dtype)."""
    return version >= VERSION


def whole_tensor(layer: dict, path) -> bool:
    """Whether a layer record codes a parameter of its own (``"tensor": true``), not a module's weight."""
    whole = layer.get("tensor", False)
    if not isinstance(whole, bool):
        raise bad(path, f"{layer['name']}: tensor flag {whole!r} is not a boolean")
    return whole


def layer_codec(layer: dict, version: int, path):
    """The codec of a layer record (version 1 records predate the ``coding`` field)."""
    coding = layer.get("coding", "huffman" if version == HUFFMAN_VERSION else None)
    codec = CODECS.get(coding) if isinstance(coding, str) else None
    if codec is None or version not in codec.versions:
        raise bad(path, f"{layer['name']}: unknown layer coding {coding!r} in a version {version} file")
    return codec


def tensor_shape(v, lo: int, hi: int, what: str, path) -> tuple:
    if (not isinstance(v, list) or not lo <= len(v) <= hi
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_LAYER_WEIGHTS for d in v)
            or math.prod(v) > MAX_LAYER_WEIGHTS):
        raise bad(path, f"{what}: shape {v!r} is not a valid tensor shape")
    return tuple(v)


def self_described(header: dict, path) -> tuple[dict, dict]:
    """The layout a header describes by itself: (coded layers: name -> (shape, has_bias, whole
    tensor), every tensor it holds: key -> (shape, dtype code)), each within bounds. Files of
    versions 1 and 2 store float32 only."""
    full = whole_state(header["version"])
    coded: dict = {}
    state: dict = {}

    def add(key, shape, dtype):
        if not isinstance(key, str) or not 0 < len(key) <= 1000 or key in state:
            raise bad(path, f"tensor name {str(key)[:80]!r} is missing, too long or repeated")
        state[key] = (shape, dtype)

    for layer in header["layers"]:
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str) or layer["name"] in coded:
            raise bad(path, "a layer record without a name of its own")
        name = layer["name"]
        shape = tensor_shape(layer.get("shape"), 2, 5, name, path)
        if min(shape) < 1:
            raise bad(path, f"{name}: empty weight shape {list(shape)}")
        n_bias = checked_int(layer.get("bias"), 0, shape[0], f"{name} bias size", path)
        if n_bias not in (0, shape[0]):
            raise bad(path, f"{name}: {n_bias} biases for {shape[0]} outputs")
        dtype = layer.get("dtype", "f4") if full else "f4"
        if dtype not in WEIGHT_DTYPES:
            raise bad(path, f"{name}: unknown weight type {dtype!r}")
        whole = whole_tensor(layer, path)
        if whole and n_bias:
            raise bad(path, f"{name}: a tensor layer has no biases")
        coded[name] = (shape, n_bias > 0, whole)
        add(coded_key(name, "weight", whole), shape, dtype)
        if n_bias:
            add(coded_key(name, "bias"), (shape[0],), dtype)
    for r in header["raw"]:
        if not isinstance(r, dict):
            raise bad(path, f"raw tensor record {r!r} is not an object")
        dtype = r.get("dtype") if full else "f4"
        if dtype not in STORED_DTYPES:
            raise bad(path, f"raw tensor {str(r.get('name'))[:80]!r}: unknown type {r.get('dtype')!r}")
        add(r.get("name"), tensor_shape(r.get("shape"), 0, 8, str(r.get("name"))[:80], path), dtype)
    for alias, target in alias_records(header, path).items():
        if target not in state:
            raise bad(path, f"alias {alias[:80]!r} names {target[:80]!r}, which the file does not hold")
        add(alias, *state[target])
    if sum(math.prod(s) for s, _ in state.values()) > MAX_STATE_WEIGHTS:
        raise bad(path, "more weights than any model this tool writes")
    return coded, state


def check_layers(header: dict, expected: dict, path) -> int:
    """Pass 1 over the coded layers: every record against the expected layout and its codec's
    bounds, before anything is allocated. Returns the bytes their sections take."""
    total = 0
    for layer in header["layers"]:
        name = layer["name"]
        shape, has_bias, whole = expected[name]
        if layer.get("shape") != list(shape):
            raise bad(path, f"{name}: shape {layer.get('shape')} does not match the architecture's {list(shape)}")
        if whole_tensor(layer, path) != whole:
            raise bad(path, f"{name}: the record and the architecture disagree on whether it is a tensor layer")
        numel = math.prod(shape)
        if numel > MAX_LAYER_WEIGHTS:
            raise bad(path, f"{name}: too many weights")
        codec = layer_codec(layer, header["version"], path)
        try:
            total += sum(codec.check(layer, numel, shape[0] if has_bias else 0))
        except LayerError as e:
            raise bad(path, f"{name}: {e}") from None
    return total


def alias_records(header: dict, path) -> dict[str, str]:
    """The header's aliases (version 5): state-dict key -> the key that holds its tensor."""
    aliases = header.get("aliases", {})
    if aliases and header["version"] < ALIAS_VERSION:
        raise bad(path, f"aliases in a version {header['version']} file")
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 1000
                                                for k, v in aliases.items()):
        raise bad(path, "aliases must map tensor names to tensor names")
    if any(v in aliases for v in aliases.values()):
        raise bad(path, "an alias names another alias")
    return aliases


def _check_aliases(header: dict, state_layout: dict, held: set, path) -> set:
    """Each alias names a tensor the file holds, of the alias's shape and type; returns their keys."""
    aliases = alias_records(header, path)
    for alias, target in aliases.items():
        if alias in held or alias not in state_layout or target not in held \
                or state_layout[alias] != state_layout[target]:
            raise bad(path, f"alias {alias[:80]!r} -> {target[:80]!r} does not fit the model's state dict")
    return set(aliases)


def check_raws(header: dict, expected: dict, state_layout: dict, from_arch: bool, path) -> int:
    """Pass 1 over the raw tensors: each belongs to the model, once; version 3 files hold the
    whole state dict. Returns the bytes they take."""
    v3 = whole_state(header["version"])
    total, raw_names = 0, []
    for r in header["raw"]:
        dtype = r.get("dtype") if isinstance(r, dict) and v3 else "f4"
        if (not isinstance(r, dict) or r.get("name") not in state_layout or not isinstance(r.get("shape"), list)
                or tuple(r["shape"]) != state_layout[r["name"]][0] or dtype not in STORED_DTYPES
                or (from_arch and dtype != state_layout[r["name"]][1]) or r["name"] in raw_names):
            raise bad(path, f"raw tensor {str(r)[:120]} does not belong to {header['model'] or 'this model'}")
        raw_names.append(r["name"])
        total += np.dtype(STORED_DTYPES[dtype]).itemsize * math.prod(state_layout[r["name"]][0])
    if v3:  # version 3 holds the whole state dict: every entry coded or stored, none twice
        held = set(raw_names)
        for name, (_, has_bias, whole) in expected.items():
            held |= {coded_key(name, "weight", whole)} | ({coded_key(name, "bias")} if has_bias else set())
        n_held = len(held)
        held |= _check_aliases(header, state_layout, held, path)
        if held != set(state_layout) or n_held != len(raw_names) + sum(1 + b for _, b, _ in expected.values()):
            missing = sorted(set(state_layout) - held)[:3]
            raise bad(path, f"the tensors stored do not make the model's state dict (missing e.g. {missing})")
    return total


def check_body(data: bytes, off: int, header: dict, expected: dict, state_layout: dict, from_arch: bool,
               path) -> None:
    """Both passes of checks, then that the sections fill the file exactly."""
    names = [layer.get("name") if isinstance(layer, dict) else None for layer in header["layers"]]
    if names != list(expected):
        raise bad(path, f"layers do not match the architecture of {header['model']}")
    total = check_layers(header, expected, path) + check_raws(header, expected, state_layout, from_arch, path)
    if off + total + 4 != len(data):
        raise bad(path, f"sections add up to {off + total + 4} bytes but the file has {len(data)}"
                  + (" (truncated)" if off + total + 4 > len(data) else " (trailing bytes)"))


def weight_dtype(layer: dict, version: int) -> str:
    """The dtype code a coded layer's decoded weights come back in."""
    return layer.get("dtype", "f4") if whole_state(version) else "f4"


def decode_layers(data: bytes, off: int, header: dict, expected: dict, path):
    """Pass 2 over the (checked) coded layers: yields (record, DecodedLayer) in file order."""
    for layer in header["layers"]:
        shape = expected[layer["name"]][0]
        sections = []
        for size in layer["sizes"]:
            sections.append(data[off:off + size])
            off += size
        try:
            out: DecodedLayer = layer_codec(layer, header["version"], path).decode(layer, sections,
                                                                                    math.prod(shape))
        except LayerError as e:
            raise bad(path, f"{layer['name']}: {e}") from None
        yield layer, out


def raws_offset(off: int, header: dict) -> int:
    """Where the raw tensors start: after every coded layer's sections."""
    return off + sum(sum(layer["sizes"]) for layer in header["layers"])


def decode_raws(data: bytes, off: int, header: dict, state_layout: dict, path):
    """The (checked) raw tensors as (name, dtype code, array of the stored type, shaped)."""
    for r in header["raw"]:
        shape = state_layout[r["name"]][0]
        code = r["dtype"] if whole_state(header["version"]) else "f4"
        array = np.frombuffer(data, STORED_DTYPES[code], math.prod(shape), off).copy()
        off += array.nbytes
        if code == "b1" and (array > 1).any():
            raise bad(path, f"{r['name']}: a boolean tensor holds values other than 0 and 1")
        yield r["name"], code, array.reshape(shape)
