"""Published weights as torchvision-style enums, behind the builders' ``weights=`` argument.

``squeezenet1_0(weights=SqueezeNet1_0_Weights.DEEP_COMPRESSION)`` (or the tag
``weights="deep-compression"``) loads them; each member carries the preprocessing its model was
trained with (``transforms()``), the class names and what it measures (``meta``).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torchvision.models as tvm

from ..data.imagenet import imagenet_categories
from ..download import ASSETS, DEFAULT_ASSET, download
from ..models.registry import register_pretrained
from ..preprocessing import CAFFE_IMAGENET, TORCHVISION_IMAGENET, Preprocessing
from .loading import load_weights

_CATEGORIES = imagenet_categories()


@dataclass(frozen=True, eq=False, repr=False)
class PretrainedWeights:
    """One set of published weights: where the state dict comes from and how to feed the model."""
    model: str
    tag: str
    load: Callable[[], dict]
    preprocessing: Preprocessing
    meta: dict

    def __repr__(self) -> str:
        return f"PretrainedWeights({self.model}, {self.tag!r})"

    def get_state_dict(self) -> dict:
        return self.load()

    def transforms(self):
        """PIL image -> normalised float tensor [3, crop, crop], as the weights expect."""
        return self.preprocessing.transform()


def deep_compression_state_dict() -> dict:
    """The published Deep Compression SqueezeNet v1.0 as a state dict: from the cache, or fetched
    and sha256-checked (``squeezenet download``)."""
    return load_weights(download()).state_dict


def _torchvision(name: str):
    def load() -> dict:
        return _torchvision_enum(name).IMAGENET1K_V1.get_state_dict(progress=False)
    return load


def _torchvision_enum(name: str):
    return {"squeezenet1_0": tvm.SqueezeNet1_0_Weights, "squeezenet1_1": tvm.SqueezeNet1_1_Weights}[name]


def _torchvision_meta(name: str) -> dict:
    meta = _torchvision_enum(name).IMAGENET1K_V1.meta
    metrics = meta["_metrics"]["ImageNet-1K"]
    return {"categories": _CATEGORIES, "num_params": meta["num_params"], "file_bytes": int(meta["_file_size"] * 2**20),
            "source": "torchvision", "accuracy": {"imagenet1k_val": {"top1": metrics["acc@1"] / 100,
                                                                     "top5": metrics["acc@5"] / 100,
                                                                     "images": 50_000, "by": "torchvision"}}}


class SqueezeNet1_0_Weights(Enum):
    DEEP_COMPRESSION = PretrainedWeights(
        "squeezenet1_0", "deep-compression", deep_compression_state_dict, CAFFE_IMAGENET,
        {"categories": _CATEGORIES, "num_params": 1_248_424, "file_bytes": ASSETS[DEFAULT_ASSET].size,
         "source": ASSETS[DEFAULT_ASSET].url,
         "accuracy": {
             # the paper's Table 2 (ImageNet validation, 50,000 images)
             "imagenet1k_val": {"top1": 0.575, "top5": 0.803, "images": 50_000, "by": "Iandola et al. 2017"},
             # ours: squeezenet eval --weights <the file> --data ../shared/data/imagenet-samples
             # (250 images: one image is 0.4 points, +-3 points of noise)
             "imagenet_samples_250": {"top1": 0.644, "top5": 0.812, "images": 250, "by": "squeezenet eval"}}})
    IMAGENET1K_V1 = PretrainedWeights("squeezenet1_0", "imagenet1k-v1", _torchvision("squeezenet1_0"),
                                      TORCHVISION_IMAGENET, _torchvision_meta("squeezenet1_0"))
    DEFAULT = IMAGENET1K_V1


class SqueezeNet1_1_Weights(Enum):
    IMAGENET1K_V1 = PretrainedWeights("squeezenet1_1", "imagenet1k-v1", _torchvision("squeezenet1_1"),
                                      TORCHVISION_IMAGENET, _torchvision_meta("squeezenet1_1"))
    DEFAULT = IMAGENET1K_V1


def register() -> None:
    for enum in (SqueezeNet1_0_Weights, SqueezeNet1_1_Weights):
        for member in enum:  # aliases (DEFAULT) are not iterated
            register_pretrained(member.value.model, member.value.tag, member.value.load)
