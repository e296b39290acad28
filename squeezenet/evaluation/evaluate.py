"""Top-1 / top-5 evaluation and prediction with the preprocessing the weights carry."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from ..data.imagenet import ImageNetFolder, load_image
from ..data.unlabelled import UnlabelledImages
from ..errors import ConfigError
from ..export.engine import make_engine
from ..metrics import topk_hits
from ..weights import LoadedWeights, load_weights


def _progress(total: int, desc: str, enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


@torch.inference_mode()
def evaluate_loader(model, loader: torch.utils.data.DataLoader, *, progress: bool | None = None,
                    desc: str = "eval") -> dict:
    """Top-1 and top-5 of ``model`` (a module or an inference engine) over ``loader`` (the
    training loop's ``squeezenet.training.evaluate`` is the one ``evaluate``: sharded, with
    test-time views).

    Returns:
        ``{"top1", "top5", "images", "seconds", "images_per_s"}`` with accuracies as fractions.
    """
    if isinstance(model, nn.Module):
        model.eval()
    correct1 = correct5 = seen = 0
    start = time.perf_counter()
    with _progress(len(loader.dataset), desc, progress) as bar:
        for images, labels in loader:
            hits1, hits5 = topk_hits(model(images), labels)
            correct1 += hits1
            correct5 += hits5
            seen += labels.numel()
            bar.update(labels.numel())
            bar.set_postfix(top1=f"{correct1 / seen:.3f}", top5=f"{correct5 / seen:.3f}")
    seconds = time.perf_counter() - start
    if seen == 0:
        raise ConfigError("no images to evaluate")
    return {"top1": correct1 / seen, "top5": correct5 / seen, "images": seen, "seconds": seconds,
            "images_per_s": seen / seconds if seconds > 0 else 0.0}


def make_loader(data: str | os.PathLike, weights: LoadedWeights, batch_size: int = 50,
                workers: int | None = None) -> torch.utils.data.DataLoader:
    """An ordered loader over an ImageNet validation folder with the weights' preprocessing."""
    ds = ImageNetFolder(data, weights.preprocessing.transform())
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       persistent_workers=False)


def evaluate_weights(weights: str | os.PathLike | LoadedWeights, data: str | os.PathLike, *,
                     batch_size: int = 50, workers: int | None = None, progress: bool | None = None,
                     engine: str | None = None, calibration=None, log=None) -> dict:
    """Load weights (any supported file), evaluate on an ImageNet validation folder with the
    chosen inference engine (see ``squeezenet.export.engine``)."""
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    loader = make_loader(data, lw, batch_size, workers)
    if lw.num_classes < len(loader.dataset.wnids):
        raise ConfigError(f"{lw.path}: weights have {lw.num_classes} classes but the mapping file lists "
                         f"{len(loader.dataset.wnids)}")
    if calibration is not None:
        _refuse_overlap(calibration, loader.dataset)
    runner = make_engine(lw, engine, calibration, log)
    result = evaluate_loader(runner, loader, progress=progress)
    result.update({"weights": str(lw.path), "weights_kind": lw.kind, "model": lw.model_name, "engine": runner.name,
                   "preprocessing": lw.preprocessing.to_dict()})
    if getattr(runner, "choice", None):
        result["engine_choice"] = runner.choice
    return result


def _refuse_overlap(calibration: str | os.PathLike, dataset: ImageNetFolder) -> None:
    """int8 calibrated on the evaluation images would report an optimistic accuracy."""
    calib = {p.resolve() for p in UnlabelledImages(calibration, transform=None).files}
    shared = [p for p, _ in dataset.samples if p.resolve() in calib]
    if shared:
        raise ConfigError(f"{calibration}: {len(shared)} calibration image(s) are also evaluation images "
                         f"(e.g. {shared[0]}); calibrate on other images")


@torch.inference_mode()
def predict(weights: str | os.PathLike | LoadedWeights, images: list, *, top: int = 5,
            mapping: str | os.PathLike | None = None, engine: str | None = None, calibration=None,
            log=None) -> list[dict]:
    """Top-``top`` classes with probabilities for each image path, through ``engine``."""
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}")
    for path in images:  # before building an engine, which can take seconds
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image")
    names = lw.class_names_or_default(mapping)
    model = make_engine(lw, engine, calibration, log)
    transform = lw.preprocessing.transform()
    results = []
    for path in images:
        x = transform(load_image(path)).unsqueeze(0)
        probs = torch.softmax(model(x).float(), dim=1)[0]
        p, idx = probs.topk(min(top, probs.numel()))
        results.append({"image": str(path), "predictions": [
            {"class_index": int(i), "class_name": names[int(i)] if int(i) < len(names) else str(int(i)),
             "probability": float(v)} for v, i in zip(p, idx)]})
    return results


def preload(data: str | os.PathLike, preprocessing, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of an ImageNet validation folder as one tensor (to evaluate many models)."""
    ds = ImageNetFolder(data, preprocessing.transform())
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    loader = torch.utils.data.DataLoader(ds, batch_size=50, num_workers=workers)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@torch.inference_mode()
def accuracy_on_tensors(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 50) -> dict:
    """Top-1/top-5 and the top-1 predictions of ``model`` on preloaded tensors."""
    model.eval()
    logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    hits1, hits5 = topk_hits(logits, labels)
    return {"top1": hits1 / len(labels), "top5": hits5 / len(labels),
            "images": len(labels), "predictions": logits.argmax(1).tolist()}
