"""Name -> builder registry, in the style of timm's ``register_model``."""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch.nn as nn

from ..errors import ConfigError
from ..utils import PRETRAINED_PROVIDERS

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ConfigError):
    """Raised when a model name is not registered."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a keyword-only model builder under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ConfigError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


# (model name, weights tag) -> a function returning the state dict. Filled by the providers
# (squeezenet.weights.pretrained's, added by the package's __init__) the first time a builder asks
# for weights, so that the models never import the file layer.
_PRETRAINED: dict[tuple[str, str], Callable[[], dict]] = {}


def _published() -> dict[tuple[str, str], Callable[[], dict]]:
    while PRETRAINED_PROVIDERS:
        PRETRAINED_PROVIDERS.pop(0)()
    return _PRETRAINED


def register_pretrained(model: str, tag: str, state_dict_fn: Callable[[], dict]) -> None:
    """Make ``builder(weights=tag)`` load ``state_dict_fn()`` into ``model``."""
    _PRETRAINED[(model, tag)] = state_dict_fn


def pretrained_tags(model: str) -> list[str]:
    """The ``weights=`` values ``model``'s builder accepts."""
    return sorted(tag for name, tag in _published() if name == model)


def load_pretrained_(model: nn.Module, name: str, weights) -> nn.Module:
    """Load the weights registered as ``weights`` for ``name`` into ``model`` (strictly); returns it.

    Args:
        weights: a tag ("deep-compression") or a weights enum member
            (``squeezenet.weights.SqueezeNet1_0_Weights.DEEP_COMPRESSION``).
    """
    tag = weights_tag(name, weights)
    fn = _published().get((name, tag))
    if fn is None:
        known = ", ".join(pretrained_tags(name)) or "none"
        raise UnknownModelError(f"{name} has no weights {tag!r}; known: {known}")
    model.load_state_dict(fn(), strict=True)
    return model


def weights_tag(name: str, weights) -> str:
    """A builder's ``weights=`` as a tag: strings as given, enum members by their ``tag``."""
    if isinstance(weights, str):
        return weights
    entry = getattr(weights, "value", None)
    if not hasattr(entry, "tag") or not hasattr(entry, "model"):
        raise UnknownModelError(f"weights must be a tag or a weights enum member, got {weights!r}")
    if entry.model != name:
        raise UnknownModelError(f"{weights} are weights of {entry.model}, not of {name}")
    return entry.tag


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_MODELS)


def is_registered(name: str) -> bool:
    """Whether ``name`` is one of ``list_models()``."""
    return name in _MODELS


def _external_builder(name: str) -> Callable[..., nn.Module]:
    """``torchvision:NAME`` (torchvision's builders, untrained) or ``package.module:function``."""
    source, _, attr = name.partition(":")
    if source == "torchvision":
        import torchvision.models  # here: it brings torch._dynamo (0.2 GB) to whatever imports the registry
        try:
            fn = torchvision.models.get_model_builder(attr)
        except ValueError:
            raise UnknownModelError(f"torchvision has no model {attr!r}") from None
        return lambda **kw: fn(weights=None, **kw)
    try:
        fn = getattr(importlib.import_module(source), attr)
    except (ImportError, AttributeError) as e:
        raise UnknownModelError(f"cannot import {name!r} (package.module:function): {e}") from None
    if not callable(fn):
        raise UnknownModelError(f"{name!r} is not callable")
    try:
        takes_classes = "num_classes" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_classes = False
    return fn if takes_classes else (lambda num_classes=None, **kw: fn(**kw))


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; raises UnknownModelError otherwise."""
    if ":" in name:
        return _external_builder(name)
    try:
        return _MODELS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}") from None


def create_model(name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from ``list_models()``, ``torchvision:NAME`` (e.g. ``torchvision:resnet18``,
            untrained) or ``package.module:function`` (a function that builds the model; given
            ``num_classes`` where it takes that argument).
        num_classes: size of the classifier output.
        **kwargs: builder-specific options (e.g. ``small_input=True``, ``sr=0.25``).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return get_builder(name)(num_classes=num_classes, **kwargs)
