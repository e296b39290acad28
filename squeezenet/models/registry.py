"""Name -> builder registry, in the style of timm's ``register_model``."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ValueError):
    """Raised when a model name is not registered."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a keyword-only model builder under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; raises UnknownModelError otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from ``list_models()``.
        num_classes: size of the classifier output.
        **kwargs: builder-specific options (e.g. ``small_input=True``, ``sr=0.25``).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return get_builder(name)(num_classes=num_classes, **kwargs)
