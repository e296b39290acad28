"""Training loop: plain functions, DDP detected from the environment.

One process::

    squeezenet train --model squeezenet1_1 --small-input --data ../shared/data/cifar10 \\
        --config configs/cifar10.yaml --out runs/cifar

Several processes (CPU: gloo; CUDA: NCCL), same flags::

    torchrun --nproc_per_node=2 -m squeezenet train --model squeezenet1_1 --small-input \\
        --data ../shared/data/cifar10 --config configs/cifar10.yaml --out runs/cifar

and across machines with torchrun's rendezvous (``--nnodes=2 --rdzv-backend=c10d
--rdzv-endpoint=HOST:PORT``). ``--batch-size`` is the global batch: each of the N processes
takes batch/N, and the learning rate is scaled with the global batch
(``lr * batch / lr_reference_batch``). Only rank 0 logs and writes checkpoints.

Checkpoints (``last.pt`` each epoch, ``best.pt`` on a new best) are written atomically and
hold model, optimizer, scheduler, epoch, config and RNG states; ``--resume`` continues to the
same weights as an uninterrupted run on CPU (the data order and augmentation of each epoch
derive from ``seed`` and the epoch number alone).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ..errors import SqueezeNetError
from ..preprocessing import CAFFE_IMAGENET, CIFAR10, TORCHVISION_IMAGENET, Preprocessing


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
    nesterov: bool = False
    schedule: str = "onecycle"        # poly (paper: linear decay to 0), cosine or onecycle
    poly_power: float = 1.0
    warmup_epochs: float = 0.0        # linear warm-up (cosine / poly), epochs
    init: str = "xavier"              # xavier (paper: Xavier, conv10 from N(0, 0.01)) or default
    preprocessing: str = "cifar10"    # caffe, torchvision or cifar10 (mean/std, sizes)
    augment: str = "cifar"            # cifar (pad-4 crop + flip) or imagenet (random-resized crop + flip)
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
        if self.weight_decay < 0 or not 0 <= self.momentum < 1 or not 0 <= self.label_smoothing < 1:
            bad("weight_decay must be >= 0, momentum and label_smoothing in [0, 1)")


def load_config(path: str | os.PathLike | None = None, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from a YAML file (unknown keys are errors) and keyword overrides."""
    import yaml
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
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Initialise DDP when launched by torchrun (``WORLD_SIZE`` > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, world, local, device)


def _all_sum(values: list[float], d: Dist) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- data
class TensorBatches:
    """Batches from a uint8 image tensor, augmented per batch in torch.

    The order comes from a ``DistributedSampler`` (also in one process) whose ``set_epoch``
    makes each epoch's shuffle a function of (seed, epoch); augmentation draws from a generator
    seeded the same way, so an epoch is reproducible on its own (exact resume).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, prep: Preprocessing,
                 train: bool, augment: str, d: Dist, seed: int, channels_last: bool) -> None:
        from torch.utils.data.distributed import DistributedSampler
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train else "none"
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self.sampler = DistributedSampler(range(len(labels)), num_replicas=d.world, rank=d.rank,
                                          shuffle=train, seed=seed, drop_last=train)
        scale = prep.scale / 255.0
        mean = torch.tensor(prep.mean).view(1, 3, 1, 1)
        std = torch.tensor(prep.std).view(1, 3, 1, 1)
        self.mul = (scale / std)
        self.add = (-mean / std)
        self.bgr = prep.channel_order == "BGR"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.augment == "cifar":
            n, _, h, w = x.shape
            padded = F.pad(x, (4, 4, 4, 4))
            dy = torch.randint(0, 9, (n,), generator=g)
            dx = torch.randint(0, 9, (n,), generator=g)
            rows = (dy.view(n, 1) + torch.arange(h).view(1, h))
            cols = (dx.view(n, 1) + torch.arange(w).view(1, w))
            x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                       rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
            flip = torch.rand(n, generator=g) < 0.5
            x[flip] = x[flip].flip(3)
        return x

    def __iter__(self):
        order = list(self.sampler)
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        for b in range(len(self)):
            idx = torch.tensor(order[b * self.batch_size:(b + 1) * self.batch_size])
            x = self.images[idx].float()
            if self.bgr:
                x = x.flip(1)
            x = self._augment(x, g)
            x = x * self.mul + self.add
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, samples, transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        from ..data.imagenet import load_image
        p, label = self.samples[i]
        return self.transform(load_image(p)), label


def _folder_transform(prep: Preprocessing, train: bool, augment: str):
    import torchvision.transforms as T
    ops = []
    if train and augment == "imagenet":
        ops += [T.RandomResizedCrop(prep.crop), T.RandomHorizontalFlip()]
    elif train and augment == "cifar":
        ops += [T.Resize(prep.crop), T.CenterCrop(prep.crop), T.RandomCrop(prep.crop, padding=4), T.RandomHorizontalFlip()]
    else:
        ops += [T.Resize(prep.resize), T.CenterCrop(prep.crop)]
    ops += [T.PILToTensor(), T.ConvertImageDtype(torch.float32)]
    mean = [m / prep.scale for m in prep.mean]
    std = [s / prep.scale for s in prep.std]
    if prep.channel_order == "BGR":
        ops.append(T.Lambda(lambda x: x.flip(0)))
    ops.append(T.Normalize(mean, std))
    return T.Compose(ops)


class FolderBatches:
    """A DataLoader over image files with worker processes and a DistributedSampler."""

    def __init__(self, samples, batch_size: int, prep: Preprocessing, train: bool, augment: str, d: Dist,
                 seed: int, workers: int, channels_last: bool) -> None:
        from torch.utils.data.distributed import DistributedSampler
        ds = FolderDataset(samples, _folder_transform(prep, train, augment))
        self.sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=train, seed=seed, drop_last=train)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                                  drop_last=train, persistent_workers=workers > 0)
        self.channels_last = channels_last
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.seed * 1000003 + epoch)  # worker augmentation seeds derive from this

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y


def build_data(data: str | os.PathLike, cfg: TrainConfig, d: Dist, per_rank_batch: int, log=print):
    """(train batches, eval batches, class names)."""
    from ..data.folders import decode_to_tensor, list_classes, list_samples, split_dirs
    train_dir, eval_dir = split_dirs(data)
    classes = list_classes(train_dir)
    train_samples = list_samples(train_dir, classes)
    eval_samples = list_samples(eval_dir, classes)
    if cfg.limit_train and cfg.limit_train < len(train_samples):
        g = torch.Generator().manual_seed(cfg.seed)
        keep = sorted(torch.randperm(len(train_samples), generator=g)[:cfg.limit_train].tolist())
        train_samples = [train_samples[i] for i in keep]
    prep = cfg.prep
    if cfg.tensor_cache and prep.crop <= 64:
        from ..download import cache_dir
        cache = cache_dir() / "tensors"
        xs, ys, skipped = decode_to_tensor(train_samples, prep.crop, cache)
        xe, ye, skipped_e = decode_to_tensor(eval_samples, prep.crop, cache)
        if skipped or skipped_e:
            log(f"skipped {skipped} training and {skipped_e} evaluation images that could not be decoded")
        train = TensorBatches(xs, ys, per_rank_batch, prep, True, cfg.augment, d, cfg.seed, cfg.channels_last)
        evalb = TensorBatches(xe, ye, max(per_rank_batch, 256), prep, False, "none", d, cfg.seed, cfg.channels_last)
    else:
        train = FolderBatches(train_samples, per_rank_batch, prep, True, cfg.augment, d, cfg.seed, cfg.workers, cfg.channels_last)
        evalb = FolderBatches(eval_samples, per_rank_batch, prep, False, "none", d, cfg.seed, cfg.workers, cfg.channels_last)
    return train, evalb, classes


# ----------------------------------------------------------------------------- model and schedule
def init_xavier_(model: nn.Module) -> None:
    """The paper's Caffe solver: Xavier initialisation, conv10 from N(0, 0.01), zero biases."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in convs:
        if m is convs[-1]:
            nn.init.normal_(m.weight, 0.0, 0.01)
        else:
            nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def bf16_pays(device: torch.device) -> bool:
    """bf16 autocast helps on CUDA and on CPUs with native bf16 math; elsewhere it is emulated
    and slower (measured 8x slower than fp32 on an AVX2-only CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from ..cpu import has_native_bf16
    return has_native_bf16()


def make_scheduler(opt, cfg: TrainConfig, steps_per_epoch: int):
    total = max(1, cfg.epochs * steps_per_epoch)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if cfg.schedule == "onecycle":
            # linear up for 15% of the steps, then linear down to 0 (fast convergence on small budgets)
            peak = max(1, int(0.15 * total))
            return (step + 1) / peak if step < peak else max(0.0, (total - step) / max(1, total - peak))
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.schedule == "poly":
            return (1 - p) ** cfg.poly_power
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * p))
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ----------------------------------------------------------------------------- loops
def train_one_epoch(model: nn.Module, batches, optimizer, scheduler, *, d: Dist, epoch: int,
                    autocast: bool = False, label_smoothing: float = 0.0, max_steps: int = 0,
                    before_step: Callable | None = None, after_step: Callable | None = None,
                    progress: bool | str = False) -> dict:
    """One pass over ``batches``. ``before_step`` runs after backward (e.g. mask or sum
    gradients), ``after_step`` after each optimizer step (e.g. re-apply masks and centroids).
    ``progress``: True for a progress bar, ``"lines"`` for a plain line every tenth of the
    epoch (logs, where a bar's carriage returns show nothing until the epoch ends), False for none."""
    from tqdm import tqdm
    model.train()
    batches.set_epoch(epoch)
    total = len(batches) if not max_steps else min(max_steps, len(batches))
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=f"epoch {epoch + 1}", disable=progress is not True, unit="batch", dynamic_ncols=True)
    line_every = max(1, total // 10) if progress == "lines" else 0
    for step, (x, y) in enumerate(batches):
        if step >= total:
            break
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if before_step:
            before_step(model)
        optimizer.step()
        scheduler.step()
        if after_step:
            after_step(model)
        l_sum, c, n = _all_sum([loss.item() * len(y), (out.argmax(1) == y).sum().item(), len(y)], d)
        if not math.isfinite(l_sum):
            raise TrainingError(f"loss became {l_sum / n} at epoch {epoch + 1}, step {step + 1}; "
                                f"lower the learning rate (now {scheduler.get_last_lr()[0]:.4g}) or check the data")
        loss_sum += l_sum
        correct += c
        seen += n
        bar.update(1)
        el = time.perf_counter() - start
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{seen / el:.0f}")
        if line_every and ((step + 1) % line_every == 0 or step + 1 == total):
            print(f"epoch {epoch + 1}: step {step + 1}/{total}, loss {loss_sum / seen:.3f}, acc {correct / seen:.3f}, "
                  f"{seen / el:.0f} images/s, {el:.0f} s", file=sys.stderr, flush=True)
    bar.close()
    seconds = time.perf_counter() - start
    return {"loss": loss_sum / max(seen, 1), "top1": correct / max(seen, 1), "images": int(seen),
            "seconds": seconds, "images_per_s": seen / seconds if seconds else 0.0}


@torch.inference_mode()
def evaluate(model: nn.Module, batches, d: Dist, autocast: bool = False) -> dict:
    """Top-1 / top-5 / loss over ``batches`` (every process evaluates its shard, then all-reduce)."""
    model.eval()
    batches.set_epoch(0)
    s = [0.0, 0.0, 0.0, 0.0]
    for x, y in batches:
        x, y = x.to(d.device), y.to(d.device)
        with torch.autocast(d.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x).float()
        top = out.topk(min(5, out.shape[1]), 1).indices
        s[0] += F.cross_entropy(out, y, reduction="sum").item()
        s[1] += (top[:, 0] == y).sum().item()
        s[2] += (top == y[:, None]).any(1).sum().item()
        s[3] += len(y)
    loss, c1, c5, n = _all_sum(s, d)
    return {"loss": loss / max(n, 1), "top1": c1 / max(n, 1), "top5": c5 / max(n, 1), "images": int(n)}


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((s["python_version"], tuple(s["python"]), None))


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_training_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainConfig, epoch: int,
                             best: float, classes: list[str], history: list[dict], stage: str = "train") -> None:
    from ..weights import save_checkpoint
    m = unwrap(model)
    state = {k: v for k, v in m.state_dict().items()}
    save_checkpoint(path, cfg.model, state, preprocessing=cfg.prep, num_classes=len(classes),
                    model_kwargs=cfg.model_kwargs, class_names=classes,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch,
                    config=dataclasses.asdict(cfg), rng=_rng_state(), best_top1=best, history=history, stage=stage)


def train(cfg: TrainConfig, data: str | os.PathLike, out: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, *, model: nn.Module | None = None,
          before_step: Callable | None = None, after_step: Callable | None = None,
          stage: str = "train", progress: bool | None = None, log: Callable = print) -> dict:
    """Train ``cfg.model`` (or the given ``model``) on ``data``; returns the final metrics.

    Writes ``metrics.csv``, ``last.pt`` (every epoch) and ``best.pt`` into ``out`` on rank 0.
    """
    from ..models import create_model
    from ..compression.pruning import attach_masks_
    from ..compression.quantization import attach_shared_state_
    cfg.validate()
    d = setup_distributed()
    if d.world > 1 and cfg.batch_size % d.world:
        raise TrainingError(f"batch size {cfg.batch_size} does not split over {d.world} processes")
    per_rank = cfg.batch_size // d.world
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    say = log if d.main else (lambda *a, **k: None)
    train_b, eval_b, classes = build_data(data, cfg, d, per_rank, say)
    if model is None:
        model = create_model(cfg.model, num_classes=len(classes), **cfg.model_kwargs)
        if cfg.init == "xavier":
            init_xavier_(model)
    elif getattr(unwrap(model), "num_classes", len(classes)) != len(classes):
        raise TrainingError(f"model has {unwrap(model).num_classes} classes, the data {len(classes)}")
    model = model.to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = cfg.lr * cfg.batch_size / cfg.lr_reference_batch
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if n.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    steps = len(train_b) if not cfg.max_steps_per_epoch else min(cfg.max_steps_per_epoch, len(train_b))
    sched = make_scheduler(opt, cfg, steps)
    start_epoch, best, history = 0, -1.0, []
    if resume is not None:
        ck = _load_resume(resume)
        m = unwrap(model)
        attach_masks_(m, ck["state_dict"])
        attach_shared_state_(m, ck["state_dict"])
        m.load_state_dict(ck["state_dict"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, best, history = int(ck["epoch"]) + 1, float(ck["best_top1"]), list(ck.get("history") or [])
        _set_rng_state(ck["rng"])
        say(f"resumed from {resume} at epoch {start_epoch + 1}")
    autocast = cfg.bf16 in (True, "true") or (cfg.bf16 == "auto" and bf16_pays(d.device))
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    out = Path(out) if out else None
    if out and d.main:
        out.mkdir(parents=True, exist_ok=True)
    show = (progress if progress is not None else (True if sys.stderr.isatty() else "lines")) if d.main else False
    say(f"training {cfg.model} on {len(train_b) * per_rank * d.world:,} images x {cfg.epochs} epochs, "
        f"{d.world} process(es) on {d.device}, global batch {cfg.batch_size}, lr {lr:.4g}, "
        f"bf16 {'on' if autocast else 'off'}, channels_last {cfg.channels_last}")
    metrics: dict = {}
    board = _tensorboard(out) if (out and d.main) else None
    for epoch in range(start_epoch, cfg.epochs):
        tr = train_one_epoch(net, train_b, opt, sched, d=d, epoch=epoch, autocast=autocast,
                             label_smoothing=cfg.label_smoothing, max_steps=cfg.max_steps_per_epoch,
                             before_step=before_step, after_step=after_step, progress=show)
        ev = evaluate(net, eval_b, d, autocast) if ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs) else {}
        metrics = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_top1": tr["top1"],
                   "val_loss": ev.get("loss"), "top1": ev.get("top1"), "top5": ev.get("top5"),
                   "lr": sched.get_last_lr()[0], "seconds": tr["seconds"], "images_per_s": tr["images_per_s"]}
        history.append(metrics)
        improved = ev and ev["top1"] > best
        if improved:
            best = ev["top1"]
        say(f"epoch {epoch + 1}/{cfg.epochs}: loss {tr['loss']:.4f}, train top-1 {tr['top1']:.4f}"
            + (f", test top-1 {ev['top1']:.4f}, top-5 {ev['top5']:.4f}" if ev else "")
            + f", {tr['seconds']:.0f} s, {tr['images_per_s']:.0f} images/s")
        if board is not None:
            for k, v in metrics.items():
                if k != "epoch" and v is not None:
                    board.add_scalar(k, v, epoch + 1)
            board.flush()
        if out and d.main:
            _append_csv(out / "metrics.csv", metrics)
            save_training_checkpoint(out / "last.pt", net, opt, sched, cfg, epoch, best, classes, history, stage)
            if improved:
                save_training_checkpoint(out / "best.pt", net, opt, sched, cfg, epoch, best, classes, history, stage)
    if d.world > 1:
        dist.barrier()
    result = dict(metrics)
    result.update({"best_top1": best, "classes": classes, "processes": d.world, "out": str(out) if out else None})
    return result


def _tensorboard(out: Path):
    """A TensorBoard writer when the ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def _load_resume(path) -> dict:
    from ..weights import CHECKPOINT_FORMAT
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: checkpoint to resume from not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"{path}: cannot read checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ck:
        raise TrainingError(f"{path}: not a training checkpoint of this tool (no optimizer state)")
    return ck
