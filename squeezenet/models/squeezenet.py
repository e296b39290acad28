"""SqueezeNet v1.0 / v1.1, bypass variants and the design-space generator.

Follows Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and
<0.5MB model size" (ICLR 2017). Module and parameter names match torchvision's
``squeezenet1_0`` / ``squeezenet1_1`` so state dicts load both ways.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import ConfigError
from .registry import load_pretrained_, register_model

# Fire layout of SqueezeNet v1.0 (paper Table 1): (s1x1, e1x1, e3x3) for fire2..fire9.
V1_0_FIRES = [(16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
              (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256)]
# What surrounds the fire modules (SqueezeNetConfig fields): v1.0 is the paper's; v1.1 has a 3x3
# conv1 with 64 filters and pools earlier (2.4x fewer MACs at the same fire layout).
MACRO_ARCHITECTURES = {"v1.0": {"conv1_channels": 96, "conv1_kernel": 7, "pool_after": (0, 3, 7)},
                       "v1.1": {"conv1_channels": 64, "conv1_kernel": 3, "pool_after": (0, 2, 4)}}


class Fire(nn.Module):
    """Fire module: a 1x1 squeeze layer feeding parallel 1x1 and 3x3 expand layers.

    Args:
        in_channels: input channels.
        s1x1: squeeze filters (1x1).
        e1x1: expand 1x1 filters.
        e3x3: expand 3x3 filters (padding 1 keeps the spatial size equal to the 1x1 branch).
        bypass: ``None``, ``"simple"`` (identity shortcut; needs in == out channels) or
            ``"complex"`` (1x1 convolution shortcut), as in the paper's section 6.
        batch_norm: conv -> batch norm -> ReLU, convolutions without bias. A departure from
            the paper (SqueezeNet predates batch norm's wide use); it trains faster and
            ``fold_batch_norm`` removes it for export. Without it the module holds exactly
            torchvision's parameters (the ``*_bn`` slots are parameter-free identities).
    """

    def __init__(self, in_channels: int, s1x1: int, e1x1: int, e3x3: int,
                 bypass: str | None = None, batch_norm: bool = False) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("s1x1", s1x1), ("e1x1", e1x1), ("e3x3", e3x3)):
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"Fire {name} must be a positive integer, got {v!r}")
        self.in_channels = in_channels
        self.out_channels = e1x1 + e3x3
        bias = not batch_norm  # a bias before batch norm is cancelled by its mean
        self.squeeze = nn.Conv2d(in_channels, s1x1, kernel_size=1, bias=bias)
        self.squeeze_bn = _batch_norm(s1x1, batch_norm)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(s1x1, e1x1, kernel_size=1, bias=bias)
        self.expand1x1_bn = _batch_norm(e1x1, batch_norm)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(s1x1, e3x3, kernel_size=3, padding=1, bias=bias)
        self.expand3x3_bn = _batch_norm(e3x3, batch_norm)
        self.expand3x3_activation = nn.ReLU(inplace=True)
        self.bypass_kind = bypass
        if bypass is None:
            pass
        elif bypass == "simple":
            if in_channels != self.out_channels:
                raise ConfigError(f"simple bypass needs in_channels == e1x1 + e3x3, "
                                 f"got {in_channels} != {self.out_channels}")
        elif bypass == "complex":
            # Paper section 6: a 1x1 convolution whose filter count equals the output channels.
            self.bypass = nn.Conv2d(in_channels, self.out_channels, kernel_size=1, bias=bias)
            self.bypass_bn = _batch_norm(self.out_channels, batch_norm)
        else:
            raise ConfigError(f"bypass must be None, 'simple' or 'complex', got {bypass!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze_activation(self.squeeze_bn(self.squeeze(x)))
        out = torch.cat([self.expand1x1_activation(self.expand1x1_bn(self.expand1x1(s))),
                         self.expand3x3_activation(self.expand3x3_bn(self.expand3x3(s)))], 1)
        if self.bypass_kind == "simple":
            out = out + x
        elif self.bypass_kind == "complex":
            out = out + self.bypass_bn(self.bypass(x))
        return out


def _batch_norm(channels: int, on: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if on else nn.Identity()


def _pool() -> nn.MaxPool2d:
    # Caffe rounds pooling output sizes up; ceil_mode reproduces 227 -> 111 -> 55 -> 27 -> 13.
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)


@dataclass
class SqueezeNetConfig:
    """Everything that defines a SqueezeNet macro-architecture.

    Attributes:
        conv1_channels: filters of conv1.
        conv1_kernel: kernel size of conv1 (7 in v1.0, 3 in v1.1).
        fires: (s1x1, e1x1, e3x3) of fire2..fire9.
        pool_after: indices of the layers followed by a max-pool; 0 is conv1, k is fire(k+1).
        bypass: per fire module, None / "simple" / "complex".
        small_input: 32x32 stem (see ``SqueezeNet``).
        batch_norm: batch norm after every convolution but conv10 (see ``Fire``).
        stem_pool: with ``small_input``, a 2x2 max-pool after conv1 (32x32 -> 16x16 feature
            maps: about 3x faster training on CIFAR-10 sized images).
        final_relu: the paper's ReLU on conv10's class scores. False leaves them as plain
            logits (a departure from the paper): a ReLU there can kill a class for good, when
            an early overshoot pushes its score below zero everywhere and no gradient returns.
    """
    conv1_channels: int = 96
    conv1_kernel: int = 7
    fires: list = field(default_factory=lambda: list(V1_0_FIRES))
    pool_after: tuple = (0, 3, 7)
    bypass: list = field(default_factory=lambda: [None] * 8)
    small_input: bool = False
    batch_norm: bool = False
    stem_pool: bool = False
    final_relu: bool = True


class SqueezeNet(nn.Module):
    """SqueezeNet: conv1, pooled fire modules, dropout, conv10, ReLU, global average pool.

    With ``small_input=True`` (for 32x32 images such as CIFAR-10), conv1 becomes a 3x3
    stride-1 convolution with padding 1 and the max-pool after conv1 is replaced by an
    identity, so the two remaining pools take 32x32 to 8x8 before conv10. Module indices
    stay those of the ImageNet model, so state dict keys do not change.
    """

    def __init__(self, config: SqueezeNetConfig, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        self.config = config
        self.num_classes = num_classes
        _check_bool("batch_norm", config.batch_norm)
        bias = not config.batch_norm
        if config.small_input:
            conv1 = nn.Conv2d(3, config.conv1_channels, kernel_size=3, stride=1, padding=1, bias=bias)
        else:
            conv1 = nn.Conv2d(3, config.conv1_channels, kernel_size=config.conv1_kernel, stride=2, bias=bias)
        if config.batch_norm:  # one slot, features.0, so that the plain models keep torchvision's keys
            conv1 = nn.Sequential(conv1, nn.BatchNorm2d(config.conv1_channels))
        layers: list[nn.Module] = [conv1, nn.ReLU(inplace=True)]
        _check_bool("stem_pool", config.stem_pool)
        if config.stem_pool and not config.small_input:
            raise ConfigError("stem_pool applies to the small-input (32 px) stem only")
        if 0 in config.pool_after:
            stem = nn.MaxPool2d(2, 2) if config.stem_pool else nn.Identity()
            layers.append(stem if config.small_input else _pool())
        channels = config.conv1_channels
        for i, ((s, e1, e3), bypass) in enumerate(zip(config.fires, config.bypass)):
            layers.append(Fire(channels, s, e1, e3, bypass=bypass, batch_norm=config.batch_norm))
            channels = e1 + e3
            if i + 1 in config.pool_after:
                layers.append(_pool())
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        _check_bool("final_relu", config.final_relu)
        score = nn.ReLU(inplace=True) if config.final_relu else nn.Identity()  # one slot either way: same indices
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, score, nn.AdaptiveAvgPool2d((1, 1)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialisation of torchvision (and the paper's Caffe solver): Kaiming-uniform
        convolutions, conv10 from N(0, 0.01), zero biases."""
        final_conv = self.classifier[1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.classifier(x)
        return torch.flatten(x, 1)


def _check_bool(name: str, v) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be True or False, got {v!r}")


def _v1_0_config(small_input: bool, bypass: list, batch_norm: bool = False, stem_pool: bool = False,
                 final_relu: bool = True) -> SqueezeNetConfig:
    _check_bool("small_input", small_input)
    return SqueezeNetConfig(small_input=small_input, bypass=bypass, batch_norm=batch_norm, stem_pool=stem_pool,
                            final_relu=final_relu)


@register_model
def squeezenet1_0(*, weights=None, num_classes: int = 1000, small_input: bool = False,
                  dropout: float = 0.5, batch_norm: bool = False, stem_pool: bool = False,
                  final_relu: bool = True) -> SqueezeNet:
    """SqueezeNet v1.0 (paper Table 1): 1,248,424 parameters with 1000 classes.

    Args:
        weights: None (random), ``SqueezeNet1_0_Weights.DEEP_COMPRESSION`` or "deep-compression"
            (the published 0.66 MB Deep Compression file from the cache, fetched and
            sha256-checked where a network is there; Caffe BGR preprocessing, see its
            ``transforms()``) or ``SqueezeNet1_0_Weights.IMAGENET1K_V1`` / "imagenet1k-v1"
            (torchvision's, torchvision's preprocessing); ``squeezenet.weights``.
        batch_norm: conv -> batch norm -> ReLU (a departure from the paper; see ``Fire``).
        final_relu: False drops the ReLU on the class scores (see ``SqueezeNetConfig``).
    """
    config = _v1_0_config(small_input, [None] * 8, batch_norm, stem_pool, final_relu)
    model = SqueezeNet(config, num_classes, dropout)
    return load_pretrained_(model, "squeezenet1_0", weights) if weights else model


@register_model
def squeezenet1_1(*, weights=None, num_classes: int = 1000, small_input: bool = False,
                  dropout: float = 0.5, batch_norm: bool = False, stem_pool: bool = False,
                  final_relu: bool = True) -> SqueezeNet:
    """SqueezeNet v1.1: 3x3 conv1 with 64 filters and earlier pools (2.4x fewer MACs).

    Args:
        weights: None (random) or ``SqueezeNet1_1_Weights.IMAGENET1K_V1`` / "imagenet1k-v1"
            (torchvision's ImageNet weights; ``squeezenet.weights``).
        batch_norm: conv -> batch norm -> ReLU (a departure from the paper; see ``Fire``).
        final_relu: False drops the ReLU on the class scores (see ``SqueezeNetConfig``).
    """
    _check_bool("small_input", small_input)
    cfg = SqueezeNetConfig(**MACRO_ARCHITECTURES["v1.1"],
                           small_input=small_input, batch_norm=batch_norm, stem_pool=stem_pool,
                           final_relu=final_relu)
    model = SqueezeNet(cfg, num_classes, dropout)
    return load_pretrained_(model, "squeezenet1_1", weights) if weights else model


# Paper section 6: simple bypass around fire3, fire5, fire7, fire9 (fire index 1, 3, 5, 7);
# complex bypass adds 1x1-conv shortcuts around fire2, fire4, fire6, fire8.
SIMPLE_BYPASS = [None, "simple", None, "simple", None, "simple", None, "simple"]
COMPLEX_BYPASS = ["complex", "simple", "complex", "simple", "complex", "simple", "complex", "simple"]


@register_model
def squeezenet1_0_simple_bypass(*, num_classes: int = 1000, small_input: bool = False,
                                dropout: float = 0.5, batch_norm: bool = False, stem_pool: bool = False,
                                final_relu: bool = True) -> SqueezeNet:
    """SqueezeNet v1.0 with identity bypass around fire3, fire5, fire7, fire9."""
    config = _v1_0_config(small_input, list(SIMPLE_BYPASS), batch_norm, stem_pool, final_relu)
    return SqueezeNet(config, num_classes, dropout)


@register_model
def squeezenet1_0_complex_bypass(*, num_classes: int = 1000, small_input: bool = False,
                                 dropout: float = 0.5, batch_norm: bool = False, stem_pool: bool = False,
                                 final_relu: bool = True) -> SqueezeNet:
    """Simple bypass plus 1x1-convolution bypass around fire2, fire4, fire6, fire8."""
    config = _v1_0_config(small_input, list(COMPLEX_BYPASS), batch_norm, stem_pool, final_relu)
    return SqueezeNet(config, num_classes, dropout)


def fire_layout_from_metaparameters(base_e: int = 128, incr_e: int = 128, pct3x3: float = 0.5,
                                    freq: int = 2, sr: float = 0.125, num_fires: int = 8) -> list:
    """The paper's section 5 generator: (s1x1, e1x1, e3x3) per fire module.

    e_i = base_e + incr_e * floor(i / freq); e3x3_i = pct3x3 * e_i; e1x1_i = e_i - e3x3_i;
    s1x1_i = sr * e_i. Fractions are rounded to the nearest integer and kept at least 1 so
    that every point of the paper's sweeps (sr 0.125..1.0, pct3x3 0.01..0.99) builds.
    """
    for name, v in (("base_e", base_e), ("freq", freq), ("num_fires", num_fires)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(incr_e, int) or isinstance(incr_e, bool) or incr_e < 0:
        raise ConfigError(f"incr_e must be a non-negative integer, got {incr_e!r}")
    if not (isinstance(pct3x3, (int, float)) and 0.0 < pct3x3 < 1.0):
        raise ConfigError(f"pct3x3 must be in (0, 1), got {pct3x3!r}")
    if not (isinstance(sr, (int, float)) and 0.0 < sr <= 1.0):
        raise ConfigError(f"sr (squeeze ratio) must be in (0, 1], got {sr!r}")
    fires = []
    for i in range(num_fires):
        e = base_e + incr_e * math.floor(i / freq)
        if e < 2:
            raise ConfigError(f"fire module {i} would have {e} expand filters; need at least 2")
        e3 = min(max(1, round(pct3x3 * e)), e - 1)
        s = max(1, round(sr * e))
        fires.append((s, e - e3, e3))
    return fires


@register_model
def squeezenet_from_metaparameters(*, num_classes: int = 1000, base_e: int = 128, incr_e: int = 128,
                                   pct3x3: float = 0.5, freq: int = 2, sr: float = 0.125,
                                   bypass: str | None = None, small_input: bool = False,
                                   dropout: float = 0.5, batch_norm: bool = False, stem_pool: bool = False,
                                   macro: str = "v1.0", final_relu: bool = True) -> SqueezeNet:
    """A SqueezeNet from the paper's metaparameters (section 5).

    Args:
        base_e, incr_e, freq: expand filters of fire i are base_e + incr_e * floor(i / freq).
        pct3x3: fraction of expand filters that are 3x3.
        sr: squeeze ratio, s1x1 / (e1x1 + e3x3).
        bypass: None, "simple" or "complex" (same placement as the named bypass models).
        small_input: 32x32 stem.
        batch_norm: conv -> batch norm -> ReLU (see ``Fire``).
        stem_pool: 2x2 max-pool after the small-input stem (16x16 feature maps).
        macro: the macro-architecture around the fire modules: "v1.0" (the paper's: 96 7x7
            conv1 filters, pools after conv1, fire4, fire8) or "v1.1" (64 3x3 conv1 filters,
            pools after conv1, fire3, fire5: 2.4x fewer MACs at the same fire layout).
        final_relu: False drops the ReLU on the class scores (see ``SqueezeNetConfig``).
    With the defaults this is exactly ``squeezenet1_0``; with ``macro="v1.1"`` exactly
    ``squeezenet1_1``.
    """
    _check_bool("small_input", small_input)
    if macro not in MACRO_ARCHITECTURES:
        raise ConfigError(f"macro must be 'v1.0' or 'v1.1', got {macro!r}")
    fires = fire_layout_from_metaparameters(base_e, incr_e, pct3x3, freq, sr)
    if bypass is None:
        pattern = [None] * 8
    elif bypass == "simple":
        pattern = list(SIMPLE_BYPASS)
    elif bypass == "complex":
        pattern = list(COMPLEX_BYPASS)
    else:
        raise ConfigError(f"bypass must be None, 'simple' or 'complex', got {bypass!r}")
    channels = [MACRO_ARCHITECTURES[macro]["conv1_channels"]] + [e1 + e3 for _, e1, e3 in fires]
    for i, kind in enumerate(pattern):
        # An identity shortcut needs equal channels; where a generated layout breaks that,
        # fall back to the 1x1-convolution shortcut rather than refuse the design point.
        if kind == "simple" and channels[i] != channels[i + 1]:
            pattern[i] = "complex"
    cfg = SqueezeNetConfig(fires=fires, bypass=pattern, small_input=small_input, batch_norm=batch_norm,
                           stem_pool=stem_pool, final_relu=final_relu, **MACRO_ARCHITECTURES[macro])
    return SqueezeNet(cfg, num_classes, dropout)
