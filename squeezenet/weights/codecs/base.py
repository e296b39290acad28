"""The seam between the ``.sqz`` container (``sqz.py``) and the codings of its layers.

A layer codec turns one quantized layer (``LayerInput``: a codebook, an index per weight, the
kept mask, the bias) into a ``LayerRecord`` (the header's JSON record plus byte sections),
checks a record read from a file before anything is allocated, decodes it, and says which
of its bytes are codebook, bias, tables and codes for ``size``. The container knows nothing
else about a layer; adding a coding is one module that implements ``LayerCodec`` and one entry
in ``codecs/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class LayerError(ValueError):
    """A layer record or its sections that do not decode (the container adds file and layer)."""


@dataclass
class LayerInput:
    """A quantized layer as compression leaves it (``weight_codebook`` / ``weight_index`` /
    ``weight_mask`` buffers, see ``compression.share_weights_``)."""
    name: str
    shape: tuple[int, ...]
    codebook: np.ndarray        # float32[k], any order
    index: np.ndarray           # codebook index per position (read where ``mask``), flat
    mask: np.ndarray            # bool per position, flat: True where the weight is kept
    bias: np.ndarray | None
    bits: int | None = None     # index width where the coding has one (Huffman: k <= 2**bits)
    codebook_dtype: str = "f4"  # "f4" or "f2"
    bias_dtype: str = "f4"
    step: float | None = None   # the trellis quantizer's step (``weight_step``), where it made the layer


@dataclass
class LayerRecord:
    """One layer's contribution to a file: its header record (``meta["sizes"]`` lists the byte
    length of each section, ``meta["coding"]`` names the codec) and the sections themselves."""
    meta: dict
    sections: list[bytes]


@dataclass
class DecodedLayer:
    weight: np.ndarray      # float32, flat
    bias: np.ndarray | None
    codebook: np.ndarray    # float32[k]
    index: np.ndarray       # int16, flat (0 where pruned)
    mask: np.ndarray        # bool, flat
    bits: int               # index width recorded in the decoded model's ``weight_bits``


class LayerCodec(Protocol):
    """What the container asks of a layer coding."""

    name: str                   # what ``--codec`` and ``CompressionConfig(codec=...)`` call it
    versions: tuple[int, ...]   # file versions that hold it; the first is the lowest it needs
    any_levels: bool            # codebooks of any size (a size budget's rate-distortion search)

    def encode(self, layer: LayerInput) -> LayerRecord:
        """Code one layer. Raises ``ConfigError`` for layers this coding cannot hold."""

    def check(self, record: dict, numel: int, n_bias: int) -> list[int]:
        """Validate a record read from a file (``numel`` weights, ``n_bias`` biases): its
        section sizes, within bounds that make decoding safe. Raises ``LayerError``."""

    def decode(self, record: dict, sections: list[bytes], numel: int) -> DecodedLayer:
        """Decode a checked record. Raises ``LayerError`` on sections that do not decode."""

    def size_row(self, record: dict) -> dict:
        """Bytes by kind (``codebook``, ``bias``, ``code_tables``, ``weight_codes``,
        ``position_codes``) and how the layer is coded (``bits``, ``positions``, ``span``,
        ``index_bits``, ``position_bits``), for ``sqz.size_report``."""


def int_field(v, lo: int, hi: int, what: str) -> int:
    """A record's integer field, checked to lie in ``lo..hi``."""
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise LayerError(f"{what} = {v!r} is outside {lo}..{hi}")
    return v


def int_list(v, n: int, what: str) -> list[int]:
    """A record's list of ``n`` non-negative integers."""
    if (not isinstance(v, list) or len(v) != n
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
        raise LayerError(f"{what} {v!r} is not a list of {n} sizes")
    return v


def finite(values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise LayerError(f"non-finite {what}")
    return values


def read_bias(data: bytes, dtype: str) -> np.ndarray:
    return finite(np.frombuffer(data, "<f4" if dtype == "f4" else "<f2").astype(np.float32), "bias")


def bias_bytes(bias: np.ndarray | None, dtype: str) -> bytes:
    return b"" if bias is None else np.asarray(bias, "<f4" if dtype == "f4" else "<f2").tobytes()


def index_bits(k: int) -> int:
    """Bits of an index into ``k`` levels (at least 1), as ``weight_bits`` records it."""
    return max(1, (max(k, 2) - 1).bit_length())


def density(mask: np.ndarray) -> float:
    return round(float(mask.mean()), 6) if mask.size else 1.0
