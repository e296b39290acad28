"""Training recipes: ``TrainConfig`` (units in the field comments) and ``load_config`` (YAML + overrides)."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..data.folders import typical_image_side
from ..errors import SqueezeNetError
from ..preprocessing import CAFFE_IMAGENET, CIFAR10, TORCHVISION_IMAGENET, Preprocessing
from ..utils import atomic_write_bytes


class TrainingError(SqueezeNetError):
    """Training cannot go on (NaN loss, bad configuration, bad checkpoint)."""


PREPROCESSING = {"caffe": CAFFE_IMAGENET, "torchvision": TORCHVISION_IMAGENET, "cifar10": CIFAR10}


@dataclass
class TrainConfig:
    """A training recipe (see ``configs/*.yaml``; units in the field comments)."""
    model: str = "squeezenet1_1"
    model_kwargs: dict = field(default_factory=dict)
    epochs: int = 30                  # passes over the training set
    batch_size: int = 128             # global batch (all processes together), images
    lr: float = 0.1                   # learning rate at lr_reference_batch
    lr_reference_batch: int = 128     # lr scales linearly with batch_size / this
    optimizer: str = "sgd"            # sgd (the paper) or adamw
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_bias_lr_scale: float = 1.0     # batch-norm shifts learn at this multiple of lr (airbench uses 64)
    nesterov: bool = False
    schedule: str = "onecycle"        # poly (paper: linear decay to 0), cosine or onecycle
    poly_power: float = 1.0
    warmup_epochs: float = 0.0        # linear warm-up (cosine / poly), epochs
    init: str = "xavier"              # xavier (paper: Xavier, conv10 from N(0, 0.01)) or default
    stem_whitening: bool = False      # stem filters start as a patch-whitening basis of the images (airbench)
    preprocessing: str = "cifar10"    # caffe, torchvision or cifar10 (mean/std, sizes)
    augment: str = "cifar"            # cifar (padded random crop + flip) or imagenet (random-resized crop + flip)
    crop_padding: int = 4             # cifar augment: pixels padded on each side before the random crop
    crop_padding_mode: str = "zeros"  # zeros (black border, the usual CIFAR recipe) or reflect (airbench)
    cutout: int = 0                   # side (pixels) of a square zeroed in each training image; 0 = off
    alternating_flip: bool = False    # mirror each image every other epoch (airbench) instead of by a coin
    label_smoothing: float = 0.0
    channels_last: bool = True
    bf16: str = "auto"                # auto: only on CUDA or CPUs with native bf16 (AVX-512 BF16 / AMX)
    compile: bool = False             # torch.compile the model
    seed: int = 0
    workers: int = 2                  # data loading processes for folder data
    tensor_cache: bool = True         # small images: decode once into a uint8 tensor cache
    max_steps_per_epoch: int = 0      # 0 = whole epoch; >0 for quick runs and tests
    limit_train: int = 0              # 0 = all training images; >0 a fixed random subset
    eval_every: int = 1               # epochs between evaluations
    time_budget_min: float = 0.0      # 0 = off; else the run (from train() on, final evaluation included)
                                      # ends within this many minutes, its schedule driven by the share
                                      # spent; epochs is then an upper bound
    eval_flip: bool = False           # test-time flips: average the logits of each image and its mirror
    eval_translate: int = 0           # test-time shifts (pixels): also the views shifted up-left and down-right
    ema_decay: float = 0.0            # 0 = off; else evaluate and save an exponential moving average of the
                                      # weights, updated every step with this decay (0.99: ~100 steps)
    lookahead_decay: float = 0.0      # 0 = off; else Lookahead every 5 steps, pulling back toward a slow copy
                                      # with decay rising as progress**3 to this (airbench: 0.95**5 = 0.774)

    @property
    def prep(self) -> Preprocessing:
        return PREPROCESSING[self.preprocessing]

    def validate(self) -> None:
        def bad(msg):
            raise TrainingError(f"invalid training config: {msg}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            bad(f"lr must be a positive number, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adamw"):
            bad(f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        if self.schedule not in ("poly", "cosine", "onecycle", "constant"):
            bad(f"schedule must be poly, cosine, onecycle or constant, got {self.schedule!r}")
        if self.preprocessing not in PREPROCESSING:
            bad(f"preprocessing must be one of {sorted(PREPROCESSING)}, got {self.preprocessing!r}")
        if self.augment not in ("cifar", "imagenet", "none"):
            bad(f"augment must be cifar, imagenet or none, got {self.augment!r}")
        if self.init not in ("xavier", "default"):
            bad(f"init must be xavier or default, got {self.init!r}")
        if self.bf16 not in ("auto", True, False, "true", "false"):
            bad(f"bf16 must be auto, true or false, got {self.bf16!r}")
        if not isinstance(self.eval_flip, bool):
            bad(f"eval_flip must be true or false, got {self.eval_flip!r}")
        if not isinstance(self.eval_translate, int) or isinstance(self.eval_translate, bool) or \
                not 0 <= self.eval_translate <= 8:
            bad(f"eval_translate must be an integer number of pixels in [0, 8], got {self.eval_translate!r}")
        if not isinstance(self.crop_padding, int) or isinstance(self.crop_padding, bool) or \
                not 0 <= self.crop_padding <= 16:
            bad(f"crop_padding must be an integer number of pixels in [0, 16], got {self.crop_padding!r}")
        if self.crop_padding_mode not in ("zeros", "reflect"):
            bad(f"crop_padding_mode must be zeros or reflect, got {self.crop_padding_mode!r}")
        if not isinstance(self.cutout, int) or isinstance(self.cutout, bool) or not 0 <= self.cutout <= 1024:
            bad(f"cutout must be a square's side in pixels in [0, 1024] (0 = off), got {self.cutout!r}")
        if not isinstance(self.stem_whitening, bool):
            bad(f"stem_whitening must be true or false, got {self.stem_whitening!r}")
        if not isinstance(self.alternating_flip, bool):
            bad(f"alternating_flip must be true or false, got {self.alternating_flip!r}")
        if not (isinstance(self.bn_bias_lr_scale, (int, float)) and 0 < self.bn_bias_lr_scale <= 1000):
            bad(f"bn_bias_lr_scale must be a number in (0, 1000], got {self.bn_bias_lr_scale!r}")
        for name in ("ema_decay", "lookahead_decay"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1):
                bad(f"{name} must be a number in [0, 1) (0 = off), got {v!r}")
        if self.ema_decay and self.lookahead_decay:
            bad("ema_decay and lookahead_decay are two ways of averaging the weights: turn one off")
        if not (isinstance(self.time_budget_min, (int, float)) and not isinstance(self.time_budget_min, bool)
                and math.isfinite(self.time_budget_min) and 0 <= self.time_budget_min <= 60 * 24 * 365):
            bad(f"time_budget_min must be a number of minutes >= 0 (0 = off), got {self.time_budget_min!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            bad("weight_decay must be >= 0, momentum and label_smoothing in [0, 1)")


def load_config(path: str | os.PathLike | None = None, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file (unknown keys are errors) and keyword overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise TrainingError(f"{path}: config file not found")
        if path.stat().st_size > 1 << 20:
            raise TrainingError(f"{path}: a config file over 1 MiB is not a recipe")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise TrainingError(f"{path}: not a UTF-8 text file") from None
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrainingError(f"{path}: not valid YAML ({first})") from None
        if not isinstance(loaded, dict):
            raise TrainingError(f"{path}: a config must be a mapping of keys to values")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise TrainingError(f"unknown config keys {unknown}; known: {sorted(names)}")
    try:
        cfg = TrainConfig(**values)
    except TypeError as e:
        raise TrainingError(f"invalid config: {e}") from None
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------- distributed


# Largest image side (pixels) that still takes the small-image recipe.
SMALL_IMAGE_SIDE = 64
# Recipes chosen from the data when no --config is given. Small images: configs/cifar10_fast.yaml's
# training choices on the named squeezenet1_1 (87.1% CIFAR-10 top-1 in 45 epochs, 57 minutes on
# 2 cores with native bf16; the config's wider-squeeze model reaches 89.2% in 38), at
# TrainConfig's 30 epochs unless the user says otherwise. ImageNet-size photos: torchvision's
# preprocessing, 224 crops, a DataLoader.
SMALL_IMAGE_RECIPE = {"model": "squeezenet1_1", "model_kwargs": {"small_input": True, "batch_norm": True,
                                                                 "stem_pool": True},
                      "batch_size": 256, "optimizer": "sgd", "nesterov": True, "momentum": 0.9, "lr": 0.2,
                      "lr_reference_batch": 256, "weight_decay": 5e-4, "schedule": "onecycle", "init": "default",
                      "label_smoothing": 0.1, "preprocessing": "cifar10", "augment": "cifar", "tensor_cache": True,
                      "eval_flip": True}
LARGE_IMAGE_RECIPE = {"model": "squeezenet1_1", "model_kwargs": {}, "optimizer": "adamw", "lr": 0.001,
                      "weight_decay": 0.05, "schedule": "onecycle", "init": "default", "batch_size": 64,
                      "lr_reference_batch": 128, "preprocessing": "torchvision", "augment": "imagenet",
                      "tensor_cache": False}


def recipe_for_data(data: str | os.PathLike) -> tuple[dict, str]:
    """The recipe the images call for, and why (printed by ``train`` when no config is given)."""
    short, long = typical_image_side(data)
    if long <= SMALL_IMAGE_SIDE:
        return dict(SMALL_IMAGE_RECIPE), (f"images are about {long}x{short} px (<= {SMALL_IMAGE_SIDE}): small-image "
                                          f"recipe (32 px stem with batch norm and a stem pool, "
                                          f"Nesterov SGD one-cycle, "
                                          f"CIFAR-10 statistics, decoded once into a tensor cache)")
    return dict(LARGE_IMAGE_RECIPE), (f"images are about {long}x{short} px: ImageNet-size recipe (torchvision "
                                      f"preprocessing, random-resized 224 px crops, a DataLoader with workers)")


def input_size_warning(cfg: TrainConfig) -> str | None:
    """A message when the model's stem and the input size disagree (a 224 px model on 32 px crops)."""
    small_stem = bool(cfg.model_kwargs.get("small_input"))
    crop = cfg.prep.crop
    if crop <= SMALL_IMAGE_SIDE and not small_stem and cfg.model.startswith("squeezenet"):
        return (f"warning: {cfg.model} has the ImageNet stem (built for 224 px) but trains on {crop} px crops; "
                f"model_kwargs: {{small_input: true}} gives it the 32 px stem")
    if crop > SMALL_IMAGE_SIDE and small_stem:
        return f"warning: {cfg.model} has the 32 px stem but trains on {crop} px crops (slow, and not what it is for)"
    return None


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """Write the resolved recipe as YAML (what ``--config`` reads back)."""

    text = "# resolved training config, written by squeezenet train\n" + yaml.safe_dump(
        dataclasses.asdict(cfg), sort_keys=False)
    atomic_write_bytes(path, text.encode())
