"""Published weights behind the builders' ``weights=`` argument (``squeezenet1_0(weights=...)``)."""
from __future__ import annotations

import torchvision.models as tvm

from ..download import download
from ..models.registry import register_pretrained
from .loading import load_weights


def deep_compression_state_dict() -> dict:
    """The published Deep Compression SqueezeNet v1.0 as a state dict: from the cache, or fetched
    and sha256-checked (``squeezenet download``)."""
    return load_weights(download()).state_dict


def _torchvision(name: str):
    def load() -> dict:
        enum = {"squeezenet1_0": tvm.SqueezeNet1_0_Weights, "squeezenet1_1": tvm.SqueezeNet1_1_Weights}[name]
        return enum.IMAGENET1K_V1.get_state_dict(progress=False)
    return load


def register() -> None:
    register_pretrained("squeezenet1_0", "deep-compression", deep_compression_state_dict)
    for name in ("squeezenet1_0", "squeezenet1_1"):
        register_pretrained(name, "imagenet1k-v1", _torchvision(name))
