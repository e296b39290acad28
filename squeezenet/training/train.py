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

from ..models import create_model
from .checkpoint import (
    _append_csv,
    _set_rng_state,
    _tensorboard,
    attach_missing_buffers_,
    load_training_checkpoint,
    save_training_checkpoint,
    unwrap,
)
from .config import TrainConfig, TrainingError, input_size_warning, save_config
from .data import build_data, sample_images
from .distributed import setup_distributed
from .loop import (
    Lookahead,
    TimeBudgetScheduler,
    WeightEMA,
    bf16_pays,
    evaluate,
    init_stem_whitening_,
    init_xavier_,
    make_optimizer,
    make_scheduler,
    train_one_epoch,
)


def _evaluation_seconds(cfg: TrainConfig, images: int, epoch: dict, measured: float | None) -> float:
    """Seconds to keep back for the final evaluation and checkpoint: a measured evaluation, or an
    estimate from training speed (a forward pass costs about a third of a training step)."""
    if measured is not None:
        return 1.2 * measured + 5.0
    views = (2 if cfg.eval_flip else 1) * (3 if cfg.eval_translate else 1)
    return images * views / max(3.0 * epoch["images_per_s"], 1e-9) * 1.2 + 5.0


def _initial_model(cfg: TrainConfig, model: nn.Module | None, classes: list, train_b, resuming: bool,
                   say) -> nn.Module:
    """The given model (its class count checked), else ``cfg.model`` with its initialisation."""
    if model is not None:
        if getattr(unwrap(model), "num_classes", len(classes)) != len(classes):
            raise TrainingError(f"model has {unwrap(model).num_classes} classes, the data {len(classes)}")
        return model
    model = create_model(cfg.model, num_classes=len(classes), **cfg.model_kwargs)
    if cfg.init == "xavier":
        init_xavier_(model)
    if cfg.stem_whitening and not resuming:
        sample = sample_images(train_b, 2048, cfg.seed)
        n_set = init_stem_whitening_(model, sample)
        say(f"stem: {n_set} filters start as a patch-whitening basis of {len(sample):,} training images")
    return model


def _resume_(resume, model: nn.Module, opt, sched, budget: float) -> dict:
    """Load a training checkpoint into the model, optimizer, schedule and random generators."""
    ck = load_training_checkpoint(resume)
    m = unwrap(model)
    # with EMA, "state_dict" holds the averaged weights (what users evaluate) and the raw ones sit beside
    saved_ema = ck["ema"] if isinstance(ck.get("ema"), dict) else None
    raw = saved_ema["raw_state_dict"] if saved_ema else ck["state_dict"]
    attach_missing_buffers_(m, raw)  # masks and codebooks of a model being compressed
    m.load_state_dict(raw)
    opt.load_state_dict(ck["optimizer"])
    if not budget and "elapsed_s" in ck["scheduler"]:
        raise TrainingError(f"{resume}: this run's schedule follows a time budget; resume it with the "
                            "recipe it started with (time_budget_min)")
    sched.load_state_dict(ck["scheduler"])
    _set_rng_state(ck["rng"])
    return ck


def _weight_averaging(cfg: TrainConfig, model: nn.Module, sched, steps: int, budget: float, ck: dict | None,
                      after_step, say):
    """(EMA, Lookahead, the after-step hook): each as the recipe asks, restored from a resumed
    checkpoint, and neither where compression's hook keeps masks and shared weights."""
    ema = lookahead = None
    keeps_masks = after_step is not None  # compression's hook: averaging would move pruned and shared weights
    if cfg.ema_decay and keeps_masks:
        say("ema_decay ignored: an average of the weights would leave the masks and shared values this training keeps")
    elif cfg.ema_decay:
        ema = WeightEMA(model, cfg.ema_decay)
        saved_ema = ck["ema"] if ck is not None and isinstance(ck.get("ema"), dict) else None
        if saved_ema:
            ema.module.load_state_dict(ck["state_dict"])
            ema.updates = int(saved_ema["updates"])
        after_step = ema.update
    if cfg.lookahead_decay and keeps_masks:
        say("lookahead_decay ignored: pulling the weights back would leave the masks and shared values this "
            "training keeps")
    elif cfg.lookahead_decay:
        total_steps = max(1, steps * cfg.epochs)
        lookahead = Lookahead(model, cfg.lookahead_decay,
                              (lambda: sched.progress) if budget else (lambda: sched.last_epoch / total_steps))
        if ck is not None and isinstance(ck.get("lookahead"), dict):
            lookahead.load_state_dict(ck["lookahead"])
        after_step = lookahead.update
    return ema, lookahead, after_step


def _warn_dead_classes(ev: dict, classes: list, say) -> None:
    # a class missing among a handful of test images can be chance; with 5 or more a class, a dead score
    if ev["never_predicted"] and ev["images"] >= 5 * len(classes):
        names = ", ".join(classes[i] for i in ev["never_predicted"][:10])
        say(f"warning: {len(ev['never_predicted'])} class(es) never predicted on the test images ({names}); "
            "a class score stuck below zero behind the ReLU on conv10 gets no gradient: "
            "model_kwargs final_relu: false lets it recover")


def _report_epoch(cfg: TrainConfig, metrics: dict, tr: dict, ev: dict, budget_spent: float | None, board,
                  say) -> None:
    """One log line per epoch, and the metrics to TensorBoard where it is on."""
    epoch = metrics["epoch"]
    spent = f", {budget_spent:.0%} of the time budget" if budget_spent is not None else ""
    say(f"epoch {epoch}/{cfg.epochs}{spent}: loss {tr['loss']:.4f}, train top-1 {tr['top1']:.4f}"
        + (f", test top-1 {ev['top1']:.4f}, top-5 {ev['top5']:.4f}" if ev else "")
        + f", {tr['seconds']:.0f} s, {tr['images_per_s']:.0f} images/s")
    if board is not None:
        for k, v in metrics.items():
            if k != "epoch" and v is not None:
                board.add_scalar(k, v, epoch)
        board.flush()


def _wrap(model: nn.Module, cfg: TrainConfig, d) -> nn.Module:
    """The module the steps run through: DDP across processes, compiled if the recipe asks."""
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device] if d.device.type == "cuda" else None)
    return torch.compile(net) if cfg.compile else net


def _announce(cfg: TrainConfig, images: int, d, lr: float, autocast: bool, budget: float, say) -> None:
    warning = input_size_warning(cfg)
    if warning:
        say(warning)
    length = (f"for {cfg.time_budget_min:g} minutes (at most {cfg.epochs} epochs)" if budget
              else f"x {cfg.epochs} epochs")
    say(f"training {cfg.model} on {images:,} images {length}, "
        f"{d.world} process(es) on {d.device}, global batch {cfg.batch_size}, lr {lr:.4g}, "
        f"bf16 {'on' if autocast else 'off'}, channels_last {cfg.channels_last}")


@dataclass
class _Run:
    """What one training run carries from epoch to epoch (``train``)."""
    cfg: TrainConfig
    d: object
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: object
    train_b: object
    eval_b: object
    classes: list
    budget: float
    started: float
    ema: object
    lookahead: object
    after_step: Callable | None
    autocast: bool
    out: Path | None
    board: object
    show: object
    say: Callable
    stage: str
    start_epoch: int = 0
    best: float = -1.0
    history: list = field(default_factory=list)
    eval_seconds: float | None = None


def train(cfg: TrainConfig, data: str | os.PathLike, out: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, *, model: nn.Module | None = None,
          before_step: Callable | None = None, after_step: Callable | None = None,
          stage: str = "train", progress: bool | None = None, log: Callable = print) -> dict:
    """Train ``cfg.model`` (or the given ``model``) on ``data``; returns the final metrics.

    Writes ``metrics.csv``, ``last.pt`` (every epoch) and ``best.pt`` into ``out`` on rank 0.
    """
    started = time.monotonic()  # a time budget counts from here: data loading is part of the run
    run = _prepare_run(cfg, data, out, resume, model, after_step, stage, progress, log, started)
    metrics: dict = {}
    for epoch in range(run.start_epoch, cfg.epochs):
        metrics, last = _train_epoch(run, epoch, before_step)
        if last:
            if run.budget and epoch + 1 < cfg.epochs:
                run.say(f"time budget of {cfg.time_budget_min:g} minutes spent after {epoch + 1} epochs "
                        f"({time.monotonic() - started:.0f} s)")
            break
    if run.d.world > 1:
        dist.barrier()
    result = dict(metrics)
    result.update({"best_top1": run.best, "classes": run.classes, "processes": run.d.world,
                   "out": str(run.out) if run.out else None})
    return result


def _prepare_run(cfg: TrainConfig, data, out, resume, model, after_step, stage, progress, log, started) -> _Run:
    """Processes, seeds, data, model, optimizer, schedule and averaging of a run, resumed where asked."""
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
    model = _initial_model(cfg, model, classes, train_b, resume is not None, say).to(d.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = cfg.lr * cfg.batch_size / cfg.lr_reference_batch
    opt = make_optimizer(model, cfg, lr)
    steps = len(train_b) if not cfg.max_steps_per_epoch else min(cfg.max_steps_per_epoch, len(train_b))
    budget = cfg.time_budget_min * 60.0
    sched = (TimeBudgetScheduler(opt, cfg, steps, budget, d, started) if budget
             else make_scheduler(opt, cfg, steps))
    start_epoch, best, history, ck = 0, -1.0, [], None
    if resume is not None:
        ck = _resume_(resume, model, opt, sched, budget)
        start_epoch, best, history = int(ck["epoch"]) + 1, float(ck["best_top1"]), list(ck.get("history") or [])
        say(f"resumed from {resume} at epoch {start_epoch + 1}")
    ema, lookahead, after_step = _weight_averaging(cfg, model, sched, steps, budget, ck, after_step, say)
    autocast = cfg.bf16 in (True, "true") or (cfg.bf16 == "auto" and bf16_pays(d.device))
    net = _wrap(model, cfg, d)
    out = Path(out) if out else None
    if out and d.main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")  # the resolved recipe: --config reads it back
    show = (progress if progress is not None else (True if sys.stderr.isatty() else "lines")) if d.main else False
    _announce(cfg, len(train_b) * per_rank * d.world, d, lr, autocast, budget, say)
    board = _tensorboard(out) if (out and d.main) else None
    return _Run(cfg, d, net, opt, sched, train_b, eval_b, classes, budget, started, ema, lookahead, after_step,
                autocast, out, board, show, say, stage, start_epoch, best, history)


def _train_epoch(run: _Run, epoch: int, before_step: Callable | None) -> tuple[dict, bool]:
    """One epoch: train, evaluate when due, report, checkpoint on rank 0. Returns (metrics, last)."""
    cfg, sched = run.cfg, run.sched
    tr = train_one_epoch(run.net, run.train_b, run.opt, sched, d=run.d, epoch=epoch, autocast=run.autocast,
                         label_smoothing=cfg.label_smoothing, max_steps=cfg.max_steps_per_epoch,
                         before_step=before_step, after_step=run.after_step, progress=run.show)
    last = epoch + 1 == cfg.epochs or getattr(sched, "done", False)
    if last and run.lookahead is not None:
        run.lookahead.finish(run.net)
    if run.budget and not last:  # keep back time for the final evaluation: the same images x views
        sched.reserve_s = _evaluation_seconds(cfg, len(run.eval_b.sampler) * run.d.world, tr, run.eval_seconds)
    t_eval = time.perf_counter()
    ev = {}
    if (epoch + 1) % cfg.eval_every == 0 or last:
        ev = evaluate(run.ema.module if run.ema else run.net, run.eval_b, run.d, run.autocast, cfg.eval_flip,
                      cfg.eval_translate)
    if ev:
        run.eval_seconds = time.perf_counter() - t_eval
        if last:
            _warn_dead_classes(ev, run.classes, run.say)
    metrics = {"epoch": epoch + 1, "train_loss": tr["loss"], "train_top1": tr["top1"],
               "val_loss": ev.get("loss"), "top1": ev.get("top1"), "top5": ev.get("top5"),
               "lr": sched.get_last_lr()[0], "seconds": tr["seconds"], "images_per_s": tr["images_per_s"]}
    run.history.append(metrics)
    improved = ev and ev["top1"] > run.best
    if improved:
        run.best = ev["top1"]
    _report_epoch(cfg, metrics, tr, ev, sched.progress if run.budget else None, run.board, run.say)
    if run.out and run.d.main:
        _append_csv(run.out / "metrics.csv", metrics)
        for name in ("last.pt", "best.pt") if improved else ("last.pt",):
            save_training_checkpoint(run.out / name, run.net, run.opt, sched, cfg, epoch, run.best, run.classes,
                                     run.history, run.stage, run.ema, run.lookahead)
    return metrics, last
