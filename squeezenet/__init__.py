"""SqueezeNet and Deep Compression: models, the published compressed weights, compression,
training, evaluation and export.

Importing the package imports nothing heavy: ``squeezenet.reader`` reads compressed files with
numpy and constriction where torch is not installed; ``create_model`` and ``list_models`` import
torch on first use.
"""
from __future__ import annotations

from .utils import PRETRAINED_PROVIDERS

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]


def _register_published_weights() -> None:
    from .weights import pretrained

    pretrained.register()  # the builders' weights= values


PRETRAINED_PROVIDERS.append(_register_published_weights)


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'squeezenet' has no attribute {name!r}")
