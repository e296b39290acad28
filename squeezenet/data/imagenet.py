"""ImageNet validation-folder layout with labels from ``LOC_synset_mapping.txt``.

Accepted layouts: ``DIR/val/<wnid>/*.JPEG`` or ``DIR/<wnid>/*.JPEG``, with the mapping file in
DIR. The folders may hold only some of the classes: labels come from the mapping's line order.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from PIL import Image

from ..errors import DataError

MAPPING_FILE = "LOC_synset_mapping.txt"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
# Refuse decompression bombs: far above any real photo, far below what exhausts memory.
MAX_IMAGE_PIXELS = 64_000_000
_WNID = re.compile(r"^n\d{8}$")


def read_synset_mapping(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Read ``<wnid> <name>`` lines; returns (wnids, names) in class-index order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mapping file not found (expected lines '<wnid> <class name>')")
    wnids, names = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            wnid, _, name = line.partition(" ")
            if not _WNID.match(wnid):
                raise DataError(f"{path}:{lineno}: expected '<wnid> <class name>', got {line[:60]!r}")
            wnids.append(wnid)
            names.append(name.strip() or wnid)
    if not wnids:
        raise DataError(f"{path}: mapping file lists no classes")
    if len(set(wnids)) != len(wnids):
        raise DataError(f"{path}: mapping file lists a wnid twice")
    return wnids, names


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB, refusing decompression bombs; errors name the file."""
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: {img.width}x{img.height} pixels exceeds the "
                                    f"{MAX_IMAGE_PIXELS:,}-pixel limit")
                img.load()
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    # 16-bit greyscale: scale to 8 bits rather than clip.
                    img = img.point(lambda v: v / 256).convert("L")
                return img.convert("RGB")
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused, too many pixels ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageNetFolder(torch.utils.data.Dataset):
    """Images under class folders named by wnid, labelled by the mapping file's order.

    Args:
        root: folder holding ``LOC_synset_mapping.txt`` and ``val/`` (or the class folders).
        transform: PIL image -> tensor.
        mapping: mapping file; default ``root/LOC_synset_mapping.txt``.
    """

    def __init__(self, root: str | os.PathLike, transform=None, mapping: str | os.PathLike | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: data folder not found")
        self.root = root
        self.wnids, self.class_names = read_synset_mapping(mapping or root / MAPPING_FILE)
        index = {w: i for i, w in enumerate(self.wnids)}
        image_root = root / "val" if (root / "val").is_dir() else root
        class_dirs = sorted(d for d in image_root.iterdir() if d.is_dir())
        if not class_dirs:
            raise DataError(f"{image_root}: no class folders (expected {image_root}/<wnid>/*.JPEG)")
        unknown = [d.name for d in class_dirs if d.name not in index]
        if unknown:
            raise DataError(f"{image_root}: class folders not in the mapping file: {', '.join(unknown[:5])}"
                            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        self.samples = [(p, index[d.name]) for d in class_dirs for p in _list_images(d)]
        if not self.samples:
            raise DataError(f"{image_root}: class folders hold no images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        img = load_image(path)
        return (self.transform(img) if self.transform else img), label


def imagenet_categories() -> list[str]:
    """torchvision's 1000 ImageNet class names (torchvision imported here, not with this module:
    it brings torch._dynamo, 0.2 GB and a second of every command that reads a file)."""
    from torchvision.models import SqueezeNet1_0_Weights
    return list(SqueezeNet1_0_Weights.IMAGENET1K_V1.meta["categories"])
