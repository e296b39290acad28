"""Fidelity of a compressed model to its reference over many inputs: the low-noise figure.

Top-1 on a few hundred labelled images moves by a point per handful of images; agreement of
top-1 predictions with the reference model and the mean KL divergence of the outputs, over
thousands of views (ten crops with flips of each image, plus other unlabelled images), move far
less, and need no labels.
"""
from __future__ import annotations

import os
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from ..data.imagenet import load_image


def ten_crop_views(path: str | os.PathLike, preprocessing) -> torch.Tensor:
    """Four corner crops, the centre crop, and their mirror images, preprocessed: [10, 3, c, c]."""
    img = load_image(path).convert("RGB")
    img = TF.resize(img, preprocessing.resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    crops = TF.five_crop(img, [preprocessing.crop, preprocessing.crop])
    # The preprocessing's transform resizes first; on a crop already of side ``crop`` a copy
    # whose resize is ``crop`` leaves the scale alone and only normalises.
    same = replace(preprocessing, resize=preprocessing.crop).transform()
    x = torch.stack([same(c) for c in crops])
    return torch.cat([x, x.flip(3)])


@torch.inference_mode()
def logits(model: nn.Module, images: torch.Tensor, batch_size: int = 100) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])


def fidelity(student_logits: torch.Tensor, reference_logits: torch.Tensor) -> dict:
    """Top-1 agreement and mean KL(reference || student) in nats, per input averaged."""
    agree = (student_logits.argmax(1) == reference_logits.argmax(1)).float().mean().item()
    kl = F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(reference_logits, 1), log_target=True,
                  reduction="batchmean").item()
    return {"agreement": agree, "kl": kl, "inputs": int(reference_logits.shape[0])}


def load_views(paths, preprocessing, kind: str = "ten_crop") -> torch.Tensor:
    """Views of image files, each image's consecutive: ten crops with flips, or ("centre") the
    centre crop and its mirror."""
    if kind == "ten_crop":
        return torch.cat([ten_crop_views(p, preprocessing) for p in paths])
    t = preprocessing.transform()
    x = torch.stack([t(load_image(p)) for p in paths])
    # interleaved, [image 0, its mirror, image 1, ...]: a view's image is its index // 2, which
    # the cross-calibrated scores rely on (views of a calibration image must not be scored)
    return torch.stack([x, x.flip(3)], 1).flatten(0, 1)
