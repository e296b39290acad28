"""Cross-calibration: a file calibrated on one half of a labelled folder, scored on the other half.

A size-budget file's error feedback and distillation fit its calibration images, so scoring it on
them flatters it. Here image ``i`` of the folder belongs to fold ``i % 2``; the file calibrated on
fold ``k`` is scored only on the views of fold ``1 - k``, and the two files' scores are pooled, so
every image is scored once, by the file that never saw it.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.imagenet import ImageNetFolder
from .fidelity import fidelity, load_views, logits

FOLDS = 2
VIEWS_PER_IMAGE = {"centre": 2, "ten_crop": 10}


def split_folds(data: str | os.PathLike, root: str | os.PathLike, folds: int = FOLDS) -> list[Path]:
    """Folders of symlinks under ``root``, one per fold: image ``i`` of ``data`` goes to fold ``i % folds``.

    They are unlabelled calibration folders (``compress --calibration``).
    """
    samples = ImageNetFolder(data).samples
    out = [Path(root) / f"fold{k}" for k in range(folds)]
    for k, fold in enumerate(out):
        fold.mkdir(parents=True)
        for i, (path, _) in enumerate(samples):
            if i % folds == k:
                os.symlink(Path(path).resolve(), fold / f"{i:04d}_{Path(path).name}")
    return out


@dataclass
class HeldOutViews:
    """A labelled folder's views with the reference model's logits on them.

    ``views`` holds ``per_image`` consecutive views of each image (``fidelity.load_views``);
    ``centre`` the centre crops that top-1 / top-5 are scored on.
    """
    views: torch.Tensor
    per_image: int
    centre: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor  # the reference model's logits on ``views``

    @classmethod
    def load(cls, data: str | os.PathLike, preprocessing, reference_model, kind: str = "centre") -> "HeldOutViews":
        ds = ImageNetFolder(data, preprocessing.transform())
        paths = [s[0] for s in ds.samples]
        views = load_views(paths, preprocessing, kind)
        # "centre" views are the centre crops and their mirrors: the crops need no second read
        centre = views[::VIEWS_PER_IMAGE[kind]] if kind == "centre" else torch.stack([ds[i][0] for i in range(len(ds))])
        labels = torch.tensor([s[1] for s in ds.samples])
        return cls(views, VIEWS_PER_IMAGE[kind], centre, labels, logits(reference_model, views))

    def image_fold(self) -> torch.Tensor:
        return torch.arange(len(self.labels)) % FOLDS

    def view_fold(self) -> torch.Tensor:
        return self.image_fold().repeat_interleave(self.per_image)


def score(models: list[torch.nn.Module], held: HeldOutViews, scored_folds: list[int] | None = None) -> dict:
    """Agreement and KL with the reference over the views, top-1 / top-5 on the centre crops.

    Args:
        models: one model, scored on every image (``scored_folds`` None), or one per fold.
        scored_folds: the fold each model is scored on (the one it was not calibrated on).
    """
    student, reference, tops, labels = [], [], [], []
    for k, model in enumerate(models):
        if scored_folds is None:
            on_view = torch.ones(len(held.views), dtype=torch.bool)
            on_image = torch.ones(len(held.labels), dtype=torch.bool)
        else:
            on_view, on_image = held.view_fold() == scored_folds[k], held.image_fold() == scored_folds[k]
        student.append(logits(model, held.views[on_view]))
        reference.append(held.reference[on_view])
        tops.append(logits(model, held.centre[on_image]).topk(5, 1).indices)
        labels.append(held.labels[on_image])
    f = fidelity(torch.cat(student), torch.cat(reference))
    top, y = torch.cat(tops), torch.cat(labels)
    return {"agreement": f["agreement"], "kl": f["kl"], "views": f["inputs"], "images": int(len(y)),
            "top1": (top[:, 0] == y).float().mean().item(), "top5": (top == y[:, None]).any(1).float().mean().item()}


def cross_calibrated(compress: Callable[[Path], tuple[bytes, dict]], build_model: Callable[[], torch.nn.Module],
                     data: str | os.PathLike, held: HeldOutViews) -> dict:
    """Make one file per fold with ``compress(calibration_folder) -> (file bytes, state dict)``, and
    score each on the other fold's images.

    Returns ``score``'s figures with ``bytes`` (the larger file), ``fold_bytes`` and ``files``
    (each fold's bytes, calibrated on fold k).
    """
    files, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for fold in split_folds(data, tmp):
            blob, state = compress(fold)
            model = build_model()
            model.load_state_dict(state)
            files.append(blob)
            models.append(model)
    result = score(models, held, scored_folds=[1 - k for k in range(FOLDS)])
    sizes = [len(b) for b in files]
    return {"bytes": max(sizes), "fold_bytes": sizes, **result, "files": files}
