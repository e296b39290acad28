"""Training and evaluation batches: decoded-tensor caches for small images, DataLoaders for large ones,
sharded per process with a seed- and epoch-derived order (bit-exact resume)."""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch.utils.data.distributed import DistributedSampler

from ..data.folders import decode_to_tensor, list_classes, list_samples, split_dirs
from ..data.imagenet import load_image
from ..download import cache_dir
from ..preprocessing import Preprocessing
from .config import TrainConfig, TrainingError
from .distributed import Dist

# crop_padding_mode's names -> the padding modes of F.pad and torchvision's RandomCrop
_PADDING_MODES = {"zeros": "constant", "reflect": "reflect"}


def cutout_(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square of each image in a normalised batch, in place.

    Zero is the data set's mean after normalisation. Centres are uniform over the image, so
    squares near an edge are clipped (DeVries & Taylor 2017, as in Page's ResNet-9 recipe).
    """
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=g)
    cx = torch.randint(0, w, (n, 1), generator=g)
    rows = torch.arange(h).view(1, h) - cy + size // 2  # in [0, size) inside the square
    cols = torch.arange(w).view(1, w) - cx + size // 2
    inside = ((rows >= 0) & (rows < size)).view(n, 1, h, 1) & ((cols >= 0) & (cols < size)).view(n, 1, 1, w)
    return x.masked_fill_(inside, 0.0)


class TensorBatches:
    """Batches from a uint8 image tensor, augmented per batch in torch.

    The order comes from a ``DistributedSampler`` (also in one process) whose ``set_epoch``
    makes each epoch's shuffle a function of (seed, epoch); augmentation draws from a generator
    seeded the same way, so an epoch is reproducible on its own (exact resume).

    ``alternating_flip`` (airbench's): each image is mirrored in every other epoch, starting from
    a random half, instead of by a fresh coin each epoch, so consecutive epochs show both views.
    ``cutout``: side in pixels of a square zeroed in each training image (0 = off).
    ``crop_padding`` / ``crop_padding_mode``: the cifar augment's random crop is taken from the
    image padded by this many pixels on each side, with zeros or by reflection.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, prep: Preprocessing,
                 train: bool, augment: str, d: Dist, seed: int, channels_last: bool, *,
                 cutout: int = 0, alternating_flip: bool = False, crop_padding: int = 4,
                 crop_padding_mode: str = "zeros") -> None:
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train else "none"
        self.cutout = cutout if train else 0
        self.crop_padding, self.crop_padding_mode = crop_padding, crop_padding_mode
        if self.augment == "cifar" and crop_padding_mode == "reflect" and crop_padding >= min(images.shape[-2:]):
            raise TrainingError(f"crop_padding {crop_padding} cannot reflect images of "
                                f"{images.shape[-2]}x{images.shape[-1]} pixels; use fewer pixels or zeros")
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self.flip_first = None
        if alternating_flip and self.augment == "cifar":
            self.flip_first = torch.rand(len(labels), generator=torch.Generator().manual_seed(seed)) < 0.5
        self.sampler = DistributedSampler(range(len(labels)), num_replicas=d.world, rank=d.rank,
                                          shuffle=train, seed=seed, drop_last=train)
        self.prep = prep

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def _augment(self, x: torch.Tensor, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if self.augment == "cifar":
            n, _, h, w = x.shape
            p = self.crop_padding
            padded = F.pad(x, (p, p, p, p), mode=_PADDING_MODES[self.crop_padding_mode])
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
            rows = (dy.view(n, 1) + torch.arange(h).view(1, h))
            cols = (dx.view(n, 1) + torch.arange(w).view(1, w))
            x = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(3).view(1, 3, 1, 1),
                       rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
            flip = torch.rand(n, generator=g) < 0.5  # drawn either way: the later draws stay the same
            if self.flip_first is not None:
                flip = self.flip_first[idx] ^ bool(self.epoch % 2)
            x[flip] = x[flip].flip(3)
        return x

    def __iter__(self):
        order = list(self.sampler)
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch)
        for b in range(len(self)):
            idx = torch.tensor(order[b * self.batch_size:(b + 1) * self.batch_size])
            x = self.prep.normalize(self._augment(self.images[idx].float(), idx, g))
            if self.cutout:
                cutout_(x, self.cutout, g)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, samples, transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        p, label = self.samples[i]
        return self.transform(load_image(p)), label


def _folder_transform(prep: Preprocessing, train: bool, augment: str, crop_padding: int = 4,
                      crop_padding_mode: str = "zeros"):
    import torchvision.transforms as T  # here: it brings torch._dynamo (0.2 GB) to whatever imports training
    ops = []
    if train and augment == "imagenet":
        ops += [T.RandomResizedCrop(prep.crop), T.RandomHorizontalFlip()]
    elif train and augment == "cifar":
        ops += [T.Resize(prep.crop), T.CenterCrop(prep.crop),
                T.RandomCrop(prep.crop, padding=crop_padding, padding_mode=_PADDING_MODES[crop_padding_mode]),
                T.RandomHorizontalFlip()]
    else:
        ops += [T.Resize(prep.resize), T.CenterCrop(prep.crop)]
    ops += [T.PILToTensor(), prep.normalize]
    return T.Compose(ops)


class FolderBatches:
    """A DataLoader over image files with worker processes and a DistributedSampler."""

    def __init__(self, samples, batch_size: int, prep: Preprocessing, train: bool, augment: str, d: Dist,
                 seed: int, workers: int, channels_last: bool, *, cutout: int = 0, crop_padding: int = 4,
                 crop_padding_mode: str = "zeros") -> None:
        ds = FolderDataset(samples, _folder_transform(prep, train, augment, crop_padding, crop_padding_mode))
        self.sampler = DistributedSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=train, seed=seed,
                                          drop_last=train)
        self.loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                                  drop_last=train, persistent_workers=workers > 0)
        self.channels_last = channels_last
        self.seed = seed
        self.cutout = cutout if train else 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        torch.manual_seed(self.seed * 1000003 + epoch)  # worker augmentation seeds derive from this

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000003 + self.epoch + 1)
        for x, y in self.loader:
            if self.cutout:
                cutout_(x, self.cutout, g)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y


def sample_images(batches, n: int, seed: int) -> torch.Tensor:
    """Up to ``n`` normalised training images (a seeded subset of a tensor cache, or the first
    batches of a DataLoader), for statistics such as the stem's whitening."""
    if isinstance(batches, TensorBatches):
        pick = torch.randperm(len(batches.labels), generator=torch.Generator().manual_seed(seed))[:n]
        return batches.prep.normalize(batches.images[pick])
    taken, count = [], 0
    for x, _ in batches.loader:
        taken.append(x.contiguous())
        count += len(x)
        if count >= n:
            break
    return torch.cat(taken)[:n]


def build_data(data: str | os.PathLike, cfg: TrainConfig, d: Dist, per_rank_batch: int, log=print):
    """(train batches, eval batches, class names)."""
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
        cache = cache_dir() / "tensors"
        xs, ys, skipped = decode_to_tensor(train_samples, prep.crop, cache)
        xe, ye, skipped_e = decode_to_tensor(eval_samples, prep.crop, cache)
        if skipped or skipped_e:
            log(f"skipped {skipped} training and {skipped_e} evaluation images that could not be decoded")
        train = TensorBatches(xs, ys, per_rank_batch, prep, True, cfg.augment, d, cfg.seed, cfg.channels_last,
                              cutout=cfg.cutout, alternating_flip=cfg.alternating_flip,
                              crop_padding=cfg.crop_padding, crop_padding_mode=cfg.crop_padding_mode)
        evalb = TensorBatches(xe, ye, max(per_rank_batch, 256), prep, False, "none", d, cfg.seed, cfg.channels_last)
    else:
        if cfg.alternating_flip:
            log("alternating_flip applies to the tensor cache (small images); these images flip at random")
        train = FolderBatches(train_samples, per_rank_batch, prep, True, cfg.augment, d, cfg.seed, cfg.workers,
                              cfg.channels_last, cutout=cfg.cutout, crop_padding=cfg.crop_padding,
                              crop_padding_mode=cfg.crop_padding_mode)
        evalb = FolderBatches(eval_samples, per_rank_batch, prep, False, "none", d, cfg.seed, cfg.workers,
                              cfg.channels_last)
    return train, evalb, classes


# ----------------------------------------------------------------------------- model and schedule
