"""Training checkpoints (atomic, pickle-free), RNG state for bit-exact resume, metric logs."""
from __future__ import annotations

import csv
import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..weights import save_checkpoint
from ..weights.loading import CHECKPOINT_FORMAT
from .config import TrainConfig, TrainingError


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy_keys"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((s["python_version"], tuple(s["python"]), None))


@torch.no_grad()
def attach_missing_buffers_(model: nn.Module, state_dict: dict) -> None:
    """Register, before ``load_state_dict``, the buffers a checkpoint holds that the fresh model
    lacks (compression's ``weight_mask``, ``weight_codebook``, ``weight_index``...)."""
    have = set(model.state_dict())
    modules = dict(model.named_modules())
    for key, value in state_dict.items():
        owner, _, leaf = key.rpartition(".")
        if key not in have and owner in modules and isinstance(value, torch.Tensor):
            modules[owner].register_buffer(leaf, value.clone())


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_training_checkpoint(path: Path, model, optimizer, scheduler, cfg: TrainConfig, epoch: int,
                             best: float, classes: list[str], history: list[dict], stage: str = "train",
                             ema=None, lookahead=None) -> None:
    """``state_dict`` holds the weights to use: the moving average when ``ema`` (a ``WeightEMA``) is
    given, with the raw weights and the update count under ``ema`` for resuming; a ``Lookahead``'s
    slow copy and step count go under ``lookahead``."""
    m = unwrap(model)
    state = dict(m.state_dict())
    extra = {}
    if ema is not None:
        extra["ema"] = {"raw_state_dict": {k: v.detach().cpu() for k, v in state.items()},
                        "updates": ema.updates, "decay": ema.decay}
        state = dict(ema.module.state_dict())
    if lookahead is not None:
        extra["lookahead"] = lookahead.state_dict()
    save_checkpoint(path, cfg.model, state, preprocessing=cfg.prep, num_classes=len(classes),
                    model_kwargs=cfg.model_kwargs, class_names=classes,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), epoch=epoch,
                    config=dataclasses.asdict(cfg), rng=_rng_state(), best_top1=best, history=history, stage=stage,
                    **extra)


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


def load_training_checkpoint(path) -> dict:
    """A ``last.pt`` / ``best.pt`` written by ``train`` (weights_only), checked to hold an optimizer."""
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
