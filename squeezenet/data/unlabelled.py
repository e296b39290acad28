"""Folders of unlabelled images: calibration for compression and int8, distillation inputs."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import DataError
from .imagenet import IMAGE_EXTENSIONS, load_image


class UnlabelledImages(torch.utils.data.Dataset):
    """Every image file under ``root`` (any layout), sorted, optionally a deterministic subset."""

    def __init__(self, root: str | os.PathLike, transform, limit: int | None = None, seed: int = 0) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: calibration folder not found")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise DataError(f"{root}: no images found for calibration")
        if limit is not None and limit < len(files):
            g = torch.Generator().manual_seed(seed)
            files = [files[i] for i in sorted(torch.randperm(len(files), generator=g)[:limit].tolist())]
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(load_image(self.files[i]))
