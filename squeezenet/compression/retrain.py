"""Deep Compression with retraining on labelled image folders, through the training loop.

Stages (accuracy measured after each): original -> pruned -> pruned and retrained with masks
-> weight-shared -> centroids fine-tuned with labels -> written, decoded from disk.
"""
from __future__ import annotations

import time
from pathlib import Path
from dataclasses import replace

import torch

from ..models.fold import has_batch_norm
from ..training import Dist, TrainingError, build_data, evaluate, load_config, train
from ..weights import LoadedWeights, load_weights
from ..weights.sqz import decode, save_compressed
from .api import Calibration, compress_, fold_for_compression, fp32_bytes, prune_stage_
from ..errors import ConfigError
from .config import CompressionConfig, RetrainConfig
from .report import CompressionReport
from .finetune import after_step_, before_step_
from .pruning import apply_masks_, mask_gradients_, remove_masks_


def compress_with_retraining(weights, config: CompressionConfig, retraining: RetrainConfig, out,
                             log=print) -> dict:
    """Prune, retrain, share, fine-tune centroids with labels, entropy-code and write ``out``.

    ``config`` is the same ``CompressionConfig`` as ``compress_``'s: density "auto" prunes by the
    profile here (retraining recovers what pruning costs), a ``size_budget`` (bytes, a hard limit)
    makes the sharing stage the rate-distortion search, its inputs 256 training images (labels
    unused), and error feedback is off unless asked for. Distillation (``finetune_steps``) does
    not apply: the centroids are fine-tuned with labels (``retraining.finetune_epochs``)."""
    if config.finetune_steps:
        raise ConfigError("finetune_steps distil without labels; with retraining the centroids are fine-tuned "
                          "with labels (RetrainConfig.finetune_epochs, --retrain-epochs)")
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    data, bits, size_budget = retraining.data, config.bits, config.size_budget
    density = "profile" if config.density == "auto" else config.density
    cfg = _retraining_recipe(lw, retraining)
    train_b, eval_b, classes = build_data(data, cfg, Dist(), cfg.batch_size, log)
    if lw.class_names and list(lw.class_names) != classes:
        raise TrainingError(f"{data}: classes {classes} differ from the checkpoint's {lw.class_names}")
    model = lw.build_model()
    fp32 = fp32_bytes(model)  # the model as given, before any folding
    stages = []

    def measure(stage: str) -> None:
        r = evaluate(model, eval_b, Dist(), flip=cfg.eval_flip, translate=cfg.eval_translate)
        stages.append({"stage": stage, "top1": r["top1"], "top5": r["top5"]})
        log(f"{stage:<34} top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}")

    start = time.perf_counter()
    measure("original")
    ft = retraining.epochs if retraining.finetune_epochs is None else retraining.finetune_epochs
    folded_after_pruning = config.fold_batch_norm and has_batch_norm(model)

    def retrain_pruned(m) -> None:
        measure("pruned")
        if retraining.epochs:
            train(cfg, data, None, model=m, before_step=mask_gradients_, after_step=apply_masks_,
                  progress=None, log=log)
            measure("pruned + retrained")

    def retrain(m, stage: str) -> None:  # compress_'s hook: the paper's retraining stages
        if stage == "pruned":
            if not folded_after_pruning:
                retrain_pruned(m)
        else:
            measure("weight-shared (rate-distortion levels)" if size_budget else f"weight-shared ({bits} bits)")
            if ft:
                cfg.epochs = ft
                train(cfg, data, None, model=m, before_step=before_step_, after_step=after_step_, progress=None,
                      log=log)
                measure("centroids fine-tuned")

    if folded_after_pruning:
        # Prune and retrain with batch norm still in place, then fold: without its norms the
        # network retrains worse (CIFAR-10 squeezenet1_1 at 24% density, 5 epochs: 0.852 top-1
        # retrained with batch norm, 0.843 folded first), and folding only rescales each
        # output channel, so the pruned zeros stay zero.
        prune_stage_(model, CompressionConfig(density=density))
        retrain_pruned(model)
        remove_masks_(model)  # a layer without a norm after it (conv10) would keep its mask buffer
        model, lw = fold_for_compression(model, lw, log)
        measure("batch norm folded")
        density = "keep"
    calibration = None
    if size_budget:
        calibration = Calibration(_first_images(train_b, 256))
    compress_(model, replace(config, density=density, finetune_steps=0, fold_batch_norm=False),
              calibration=calibration, retrain=retrain, model_name=lw.model_name, model_kwargs=lw.model_kwargs,
              preprocessing=lw.preprocessing.to_dict(), class_names=classes, log=log)
    save_compressed(model, out)
    data = Path(out).read_bytes()
    model = lw.build_model()
    model.load_state_dict(decode(data, out)[1])
    measure("file (decoded from disk)")
    return CompressionReport.of_file(data, fp32, time.perf_counter() - start, out=str(out),
                                     stages=stages, top1=stages[-1]["top1"], top5=stages[-1]["top5"],
                                     top1_lost=stages[0]["top1"] - stages[-1]["top1"])


def _retraining_recipe(lw: LoadedWeights, retraining: RetrainConfig):
    """The training recipe of the retraining stages: the checkpoint's own (or the one named), run
    for ``retraining.epochs`` on a cosine schedule from a tenth of its learning rate (the model is
    trained already) unless ``retraining.lr`` is given."""
    saved_cfg = (lw.extra or {}).get("config") or {}
    overrides = {"model": lw.model_name, "model_kwargs": lw.model_kwargs, "epochs": retraining.epochs,
                 "schedule": "cosine", "max_steps_per_epoch": retraining.max_steps}
    if retraining.recipe is None and saved_cfg:
        keep = {k: v for k, v in saved_cfg.items() if k not in overrides}
        cfg = load_config(None, **keep, **overrides)
    else:
        cfg = load_config(retraining.recipe, **overrides)
    cfg.lr = retraining.lr if retraining.lr is not None else cfg.lr * 0.1
    return cfg


def _first_images(batches, n: int):
    batches.set_epoch(0)
    xs, seen = [], 0
    for x, _ in batches:
        xs.append(x.contiguous())
        seen += len(x)
        if seen >= n:
            break
    return torch.cat(xs)[:n]
