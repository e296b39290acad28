"""Preprocessing that travels with the weights, so evaluation never depends on a flag."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from PIL import Image

from .errors import ConfigError


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a given set of weights.

    Attributes:
        channel_order: "RGB" or "BGR" (Caffe models).
        scale: pixel range maximum (1.0 for torchvision, 255.0 for Caffe).
        mean: per-channel mean in ``channel_order``, in the same range as ``scale``.
        std: per-channel divisor, same order.
        resize: the short side is resized to this many pixels.
        crop: the centre crop side fed to the network.
    """
    channel_order: str = "RGB"
    scale: float = 1.0
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    resize: int = 256
    crop: int = 224

    def __post_init__(self):
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ConfigError("mean and std need three values, std non-zero")
        if not (0 < self.crop <= self.resize):
            raise ConfigError(f"need 0 < crop <= resize, got crop {self.crop}, resize {self.resize}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        try:
            return cls(channel_order=str(d["channel_order"]), scale=float(d["scale"]),
                       mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                       resize=int(d["resize"]), crop=int(d["crop"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"bad preprocessing record {d!r}: {e}") from None

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (0..255, RGB, channels at dim -3, any dtype) -> the network's input.

        The one normalisation of the package: evaluation, training batches and calibration all
        come through here.
        """
        x = pixels.float()
        if self.scale != 255.0:
            x = x * (self.scale / 255.0)
        if self.channel_order == "BGR":
            x = x.flip(-3)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (x - mean) / std

    def transform(self, augment: bool = False):
        """A callable PIL image -> float tensor [3, crop, crop].

        Args:
            augment: a random crop (instead of the centre one) and a random mirror, for
                fine-tuning on few images.
        """
        return _Transform(self, augment)


# The published Caffe SqueezeNet: BGR, 0..255 minus the ImageNet mean, 227 crop.
CAFFE_IMAGENET = Preprocessing("BGR", 255.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), 256, 227)
# torchvision's ImageNet weights.
TORCHVISION_IMAGENET = Preprocessing()
# 32x32 images (CIFAR-10), CIFAR-10 channel statistics.
CIFAR10 = Preprocessing("RGB", 1.0, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, 32)


class _Transform:
    def __init__(self, p: Preprocessing, augment: bool = False) -> None:
        self.p = p
        self.augment = augment

    def __call__(self, img: Image.Image) -> torch.Tensor:
        # torchvision imported at the first image, not with this module: it brings torch._dynamo
        # (0.2 GB, a second) to everything that only reads a preprocessing record
        import torchvision.transforms as T
        import torchvision.transforms.functional as F
        img = img.convert("RGB")
        img = F.resize(img, self.p.resize, interpolation=F.InterpolationMode.BILINEAR, antialias=True)
        if self.augment:
            img = T.RandomCrop(self.p.crop)(img)
            if torch.rand(()) < 0.5:
                img = F.hflip(img)
        else:
            img = F.center_crop(img, [self.p.crop, self.p.crop])
        return self.p.normalize(F.pil_to_tensor(img))  # from 0..255, RGB, CHW
