"""``LoadedWeights``: a state dict with what rebuilding and feeding its model takes, whatever
file it came from (``loading.load_weights``, ``sqz.load_compressed``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..data.imagenet import imagenet_categories, read_synset_mapping
from ..errors import FormatError
from ..models import create_model
from ..models.fold import fold_batch_norm, has_batch_norm
from ..models.layers import prunable_layers, state_aliases
from ..preprocessing import Preprocessing


@dataclass
class LoadedWeights:
    """Weights with everything needed to rebuild and feed the model."""
    model_name: str
    state_dict: dict
    preprocessing: Preprocessing
    num_classes: int = 1000
    model_kwargs: dict = field(default_factory=dict)
    class_names: list | None = None
    kind: str = "checkpoint"
    path: str = ""
    extra: dict = field(default_factory=dict)

    def class_names_or_default(self, mapping: str | os.PathLike | None = None) -> list[str]:
        """Class names: the mapping file if given, else those in the weights, else torchvision's
        ImageNet list for 1000 classes, else the indices."""
        if mapping is not None:
            return read_synset_mapping(mapping)[1]
        if self.class_names:
            return list(self.class_names)
        if self.num_classes == 1000:
            return imagenet_categories()
        return [str(i) for i in range(self.num_classes)]

    @property
    def has_architecture(self) -> bool:
        """Whether the file names a model to build (a bare state dict of unknown origin does not)."""
        return bool(self.model_name)

    def with_architecture(self, model_name: str, model_kwargs: dict | None = None) -> "LoadedWeights":
        """These weights for ``model_name`` (a registered name, ``torchvision:NAME`` or
        ``package.module:function``); checked by building it."""
        kwargs = dict(model_kwargs or {})
        given = kwargs.pop("num_classes", None)
        out = LoadedWeights(model_name, self.state_dict, self.preprocessing, self.num_classes, kwargs,
                            self.class_names, self.kind, self.path, self.extra)
        out.num_classes = given or _num_classes(create_model, model_name, kwargs, self.state_dict) or self.num_classes
        out.build_model()
        return out

    def build_inference_model(self) -> nn.Module:
        """``build_model()`` with batch norm folded into the convolutions (export, inference)."""
        model = self.build_model()
        return fold_batch_norm(model) if has_batch_norm(model) else model

    def build_model(self) -> nn.Module:
        """The model in eval mode with these weights loaded."""
        if self.kind == "onnx":
            raise FormatError(f"{self.path}: an ONNX model runs as it is (eval and predict, with ONNX Runtime); it "
                              f"holds no state dict to build a PyTorch model from")
        if not self.model_name:
            raise FormatError(f"{self.path}: a state dict of an unknown architecture; name the model "
                              f"(torchvision:NAME or package.module:function) to build it")
        model = create_model(self.model_name, num_classes=self.num_classes, **self.model_kwargs)
        try:
            model.load_state_dict(with_tied_keys(model, self.state_dict))
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise FormatError(f"{self.path}: weights do not fit {self.model_name}: {first}") from None
        return model.eval()


def with_tied_keys(model: nn.Module, state: dict) -> dict:
    """``state`` with the names a tied tensor has in ``model`` that the file left out (safetensors
    files written by other tools keep one name of a tied embedding), taken from a name it kept."""
    groups: dict[str, list[str]] = {}
    for alias, first in state_aliases(model.state_dict()).items():
        groups.setdefault(first, [first]).append(alias)
    out = state
    for names in groups.values():
        kept = [n for n in names if n in state]
        if kept and len(kept) < len(names):
            out = dict(out) if out is state else out
            out.update({n: state[kept[0]] for n in names if n not in state})
    return out


def _num_classes(create_model, name: str, kwargs: dict, sd: dict) -> int | None:
    """The class count that makes ``name`` fit ``sd``: the output rows of its last coded layer."""
    with torch.device("meta"):
        try:
            layers = prunable_layers(create_model(name, **kwargs))
        except TypeError:
            return None
    for lname in reversed(list(layers)):
        w = sd.get(f"{lname}.weight" if lname else "weight")
        if isinstance(w, torch.Tensor):
            return int(w.shape[0])
    return None
