"""Layer codings of the ``.sqz`` file, by name: the registry that the container, the config,
the CLI's ``--codec`` and ``size`` read (protocol in ``base.py``)."""
from __future__ import annotations

from ...errors import ConfigError
from .base import DecodedLayer, LayerCodec, LayerError, LayerInput, LayerRecord
from .huffman import HuffmanCodec
from .range import RangeCodec
from .trellis import TrellisCodec

CODECS: dict[str, LayerCodec] = {c.name: c for c in (RangeCodec(), HuffmanCodec(), TrellisCodec())}


def codec_names() -> tuple[str, ...]:
    return tuple(CODECS)


def get_codec(name: str) -> LayerCodec:
    """The codec called ``name``. Raises ConfigError naming the known ones."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"codec must be one of {', '.join(CODECS)}, got {name!r}") from None


__all__ = ["CODECS", "DecodedLayer", "LayerCodec", "LayerError", "LayerInput", "LayerRecord", "codec_names",
           "get_codec"]
