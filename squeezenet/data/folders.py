"""Labelled image folders for training: ``DIR/train/<class>/*`` and ``DIR/val|test/<class>/*``.

Small images (CIFAR-10 sized) are decoded once into a uint8 tensor cache, so epochs never
decode JPEGs again; augmentation then runs on whole batches of tensors. Large images use a
classic ``DataLoader`` with worker processes.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from .imagenet import IMAGE_EXTENSIONS, load_image


def split_dirs(root: str | os.PathLike) -> tuple[Path, Path]:
    """(train folder, evaluation folder) of a dataset root; evaluation is ``val`` or ``test``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root}: no train/ folder (expected {root}/train/<class>/... and {root}/val/<class>/...)")
    for name in ("val", "test"):
        if (root / name).is_dir():
            return train, root / name
    raise DataError(f"{root}: no val/ or test/ folder next to train/")


def list_classes(folder: Path) -> list[str]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    if not classes:
        raise DataError(f"{folder}: no class folders")
    return classes


def list_samples(folder: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(path, label) of every image, labels by the given class order; checks the folder's classes."""
    present = list_classes(folder)
    extra = sorted(set(present) - set(classes))
    if extra:
        raise DataError(f"{folder}: class folders {extra} are not in the training classes")
    missing = sorted(set(classes) - set(present))
    if missing:
        warnings.warn(f"{folder}: no folder for classes {missing}; they are not evaluated")
    samples = []
    for label, c in enumerate(classes):
        d = folder / c
        if d.is_dir():
            samples += [(p, label) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not samples:
        raise DataError(f"{folder}: no images")
    return samples


def _cache_key(samples: list[tuple[Path, int]], size: int) -> str:
    h = hashlib.sha256(str(size).encode())
    for p, label in samples:
        st = p.stat()
        h.update(f"{p}|{label}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:20]


def decode_to_tensor(samples: list[tuple[Path, int]], size: int, cache: Path | None = None,
                     progress: bool | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """All images as uint8 [N, 3, size, size] (resized if needed) and labels, cached on disk.

    Undecodable images are skipped with a warning naming each (and counted), never silently.
    Returns (images, labels, skipped).
    """
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"images-{_cache_key(samples, size)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), int(z["skipped"])
    xs = np.empty((len(samples), size, size, 3), np.uint8)
    ys = np.empty(len(samples), np.int64)
    n = skipped = 0
    show = sys.stderr.isatty() if progress is None else progress
    for p, label in tqdm(samples, desc="decoding images once", unit="img", disable=not show, mininterval=1):
        try:
            img = load_image(p)
        except DataError as e:
            warnings.warn(f"skipping {e}")
            skipped += 1
            continue
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        xs[n] = np.asarray(img)
        ys[n] = label
        n += 1
    if n == 0:
        raise DataError("no decodable images")
    x = torch.from_numpy(xs[:n]).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(ys[:n])
    if cache is not None:
        tmp = cache / f".tmp-{os.getpid()}.npz"
        np.savez(tmp, x=x.numpy(), y=y.numpy(), skipped=np.int64(skipped))
        os.replace(tmp, path)
    return x, y, skipped


def typical_image_side(root: str | os.PathLike, probe: int = 32) -> tuple[int, int]:
    """(median short side, median long side) in pixels of up to ``probe`` training images,
    spread over the classes; reads image headers only."""
    train, _ = split_dirs(root)
    classes = list_classes(train)
    files = []
    for c in classes:
        images = sorted(p for p in (train / c).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += images[:max(1, probe // len(classes))]
        if len(files) >= probe:
            break
    if not files:
        raise DataError(f"{train}: no images")
    sides = []
    for p in files[:probe]:
        try:
            with Image.open(p) as im:
                sides.append(sorted(im.size))
        except OSError as e:
            raise DataError(f"{p}: not a readable image ({e})") from None
    short, long = np.median(np.asarray(sides), axis=0)
    return int(short), int(long)
