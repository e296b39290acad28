"""Deep Compression of any PyTorch model, in one verb (in the style of torchao's ``quantize_``).

    from squeezenet.compression import CompressionConfig, compress_
    from squeezenet.weights import save_compressed, load_compressed
    report = compress_(model, CompressionConfig(density=0.33, bits=6))   # in place, any nn.Module
    save_compressed(model, "model.sqz")                                  # the exact file
    state_dict = load_compressed("model.sqz").state_dict                 # strict-loadable

Convolutions (1-D/2-D/3-D, grouped and depthwise), linear layers and every other floating-point
parameter of 2-5 dimensions (LSTM matrices, attention in-projections, embedding tables:
``models.layers.TensorLayer``) are pruned, weight-shared and entropy-coded; 1-D and integer
tensors of the state dict are stored exactly. Masks and codebooks stay on the modules as buffers
(``weight_mask``, ``weight_codebook``, ``weight_index``; ``<param>_mask``, ... on the module
that owns a tensor layer), so training with ``after_step_`` keeps them in place and checkpoints
carry them.
"""
from __future__ import annotations

import copy
import importlib
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..data.unlabelled import UnlabelledImages
from ..errors import ConfigError
from ..models.fold import fold_batch_norm_, has_batch_norm
from ..models.layers import prunable_layers, state_aliases
from ..models.standin import StateDictModule, module_from_state_dict
from ..utils import atomic_write_bytes, numpy_small_pages
from ..weights import LoadedWeights, load_weights
from ..weights.sqz import RAW_DTYPES, encode
from .budget import JUDGE_INPUTS, fit_budget_
from .config import CompressionConfig, parse_layer_spec
from .fastconv import one_dimensional_convolutions
from .finetune import batch_inputs, distill_shared_
from .outputs import resolve_output_kind
from .progress import around_bars, showing, wanted
from .pruning import PruneConfig, prune_
from .quantization import place_shared_weights_, share_weights_
from .report import CompressionReport
from .sensitivity import choose_bits_for_budget

__all__ = ["Calibration", "compress_", "compress_weights", "calibration_from_folder", "load_calibration"]


RAW_TYPES = {t for _, t in RAW_DTYPES.values()}


def _quiet(*_args, **_kwargs) -> None:
    pass


@dataclass
class Calibration:
    """Unlabelled inputs for a size budget and for distillation.

    Attributes:
        inputs: a batch (N, ...) for layer sensitivities (Fisher information) and for measuring
            output distortion; any shape the model takes, images or not.
        loader: batches of (augmented) inputs for distillation; ``None``: distillation, when
            asked for, takes ``inputs`` as given, in batches.
    """
    inputs: torch.Tensor
    loader: object = None


def as_calibration(calibration, limit: int = 512) -> Calibration | None:
    """A ``Calibration`` from what the user has: a ``Calibration``, a tensor of inputs (N, ...),
    or any iterable of batches (a DataLoader; ``(inputs, labels)`` batches give their inputs),
    of which the first ``limit`` inputs are the sensitivity batch and all are distillation's."""
    if calibration is None or isinstance(calibration, Calibration):
        return calibration
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() < 1 or calibration.shape[0] == 0:
            raise ConfigError("calibration inputs must be a non-empty batch (N, ...)")
        return Calibration(calibration)
    if isinstance(calibration, (str, os.PathLike)):
        raise ConfigError("a calibration folder needs its preprocessing: use calibration_from_folder "
                          "(or compress_weights / the CLI, which know the model's)")
    try:
        batches = iter(calibration)
    except TypeError:
        raise ConfigError(f"calibration must be a Calibration, a tensor or an iterable of batches, "
                          f"not {type(calibration).__name__}") from None
    parts, n = [], 0
    for batch in batches:
        x = batch_inputs(batch)
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"calibration batches must be tensors (or (inputs, labels)), not {type(x).__name__}")
        parts.append(x)
        n += x.shape[0]
        if n >= limit:
            break
    if not parts:
        raise ConfigError("the calibration iterable gave no batches")
    return Calibration(torch.cat(parts)[:limit], calibration)


def calibration_from_folder(folder: str | os.PathLike, preprocessing, images: int = 256, steps: int = 0,
                            batch_size: int = 16, seed: int = 0) -> Calibration:
    """Calibration from a folder of images: ``images`` of them (half mirrored) for sensitivities,
    and random crops and mirrors for ``steps`` distillation batches, so a few hundred images
    give thousands of views."""
    ds = UnlabelledImages(folder, preprocessing.transform(), limit=images, seed=seed)
    x = torch.stack([ds[i] for i in range(len(ds))])
    x = torch.where((torch.arange(x.shape[0]) % 2 == 1).view(-1, 1, 1, 1), x.flip(3), x)
    loader = None
    if steps:
        views = UnlabelledImages(folder, preprocessing.transform(augment=True), limit=steps * batch_size)
        loader = torch.utils.data.DataLoader(views, batch_size=batch_size, shuffle=True, num_workers=1,
                                             generator=torch.Generator().manual_seed(seed))
    return Calibration(x, loader)


def load_calibration(source: str | os.PathLike, preprocessing=None, images: int = 256, steps: int = 0,
                     limit: int = 512) -> Calibration:
    """Calibration from what a command line names: a folder of images (``calibration_from_folder``
    with the model's ``preprocessing``), a tensor file (``.pt``, ``.npy``, ``.npz`` holding one
    (N, ...) batch, the first ``limit`` inputs taken), or ``package.module:function`` returning
    a tensor or an iterable of batches."""
    text = str(source)
    path = Path(text)
    if path.is_dir():
        if preprocessing is None:
            raise ConfigError(f"{path}: a folder of images needs the model's preprocessing")
        return calibration_from_folder(path, preprocessing, images, steps)
    if path.is_file():
        return as_calibration(_tensor_file(path)[:limit], limit)
    if ":" in text and not path.suffix:
        module, _, attr = text.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"cannot import calibration {text!r} (package.module:function): {e}") from None
        return as_calibration(fn(), limit)
    raise ConfigError(f"{text}: calibration must be a folder of images, a .pt/.npy/.npz file or "
                      f"package.module:function")


def _tensor_file(path: Path) -> torch.Tensor:
    """The one batch a ``.pt`` / ``.npy`` / ``.npz`` file holds (never unpickled)."""
    try:
        if path.suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and len(obj) == 1:
                obj = next(iter(obj.values()))
        elif path.suffix in (".npy", ".npz"):
            obj = np.load(path, allow_pickle=False)
            if isinstance(obj, np.lib.npyio.NpzFile):
                with obj:
                    if len(obj.files) != 1:
                        raise ConfigError(f"{path}: holds {len(obj.files)} arrays; give a file of one batch")
                    obj = obj[obj.files[0]]
            obj = torch.from_numpy(np.ascontiguousarray(obj))
        else:
            raise ConfigError(f"{path}: calibration files must be .pt, .npy or .npz")
    except (OSError, ValueError, RuntimeError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{path}: cannot read calibration inputs: {str(e).splitlines()[0]}") from None
    if not isinstance(obj, torch.Tensor) or obj.dim() < 1 or obj.shape[0] == 0:
        raise ConfigError(f"{path}: must hold one non-empty (N, ...) tensor")
    return obj.float() if obj.is_floating_point() else obj


def overall_density(model: nn.Module) -> float:
    """Share of non-zero weights over the coded layers."""
    layers = prunable_layers(model).values()
    total = sum(m.weight.numel() for m in layers)
    return sum(int((m.weight != 0).sum()) for m in layers) / max(total, 1)


def prune_stage_(model: nn.Module, config: CompressionConfig) -> dict[str, float]:
    """Prune in place per ``config.density`` (or ``config.sensitivity``); returns density per layer."""
    names = list(prunable_layers(model))
    density = config.density
    if density == "auto":
        # At a size budget the rate-distortion search zeroes weights itself, per layer, where
        # a zero is cheaper; pruning first would impose it on models that do not tolerate it.
        budget = config.size_budget and config.any_levels
        density = "keep" if budget or overall_density(model) < 0.6 else "profile"
    if config.sensitivity is not None:
        return prune_(model, PruneConfig(sensitivity=config.sensitivity))
    if density == "keep":
        return prune_(model, PruneConfig(density={n: 1.0 for n in names}))
    if density == "profile":
        return prune_(model, PruneConfig())
    spec = parse_layer_spec(density, names, "density")
    for n, d in spec.items():
        if not 0.0 < d <= 1.0:
            raise ConfigError(f"density must be in (0, 1], got {d} for {n}")
    return prune_(model, PruneConfig(density=spec))


def share_stage_(model: nn.Module, bits: dict[str, int], codebook_dtype: str = "auto", iters: int = 30) -> dict:
    """Weight sharing in place with the given bits per layer; picks codebook storage per layer
    and rounds f2 codebooks in the model too, so the model equals what the file will hold."""
    layers = prunable_layers(model)
    names = list(layers)
    exact = {n: int(torch.unique(layers[n].weight[layers[n].weight_mask]).numel()) <= 2 ** bits[n] for n in names}
    centroids = share_weights_(model, bits, iters)
    dtypes = {n: ("f4" if exact[n] else "f2") if codebook_dtype == "auto" else codebook_dtype for n in names}
    with torch.no_grad():
        for n in names:
            if dtypes[n] == "f2":
                layers[n].weight_codebook.copy_(layers[n].weight_codebook.half().float())
                place_shared_weights_(layers[n])
    return {"bits": bits, "centroids": centroids, "codebook_dtype": dtypes, "lossless": exact}


def compress_(model: nn.Module, config: CompressionConfig | None = None, *, calibration=None,
              model_name: str = "", model_kwargs: dict | None = None, preprocessing: dict | None = None,
              class_names: list | None = None, retrain: Callable[[nn.Module, str], None] | None = None,
              log: Callable[..., None] = _quiet, progress: bool | None = None) -> CompressionReport:
    """Deep Compression of ``model`` in place: prune, share weights (k-means, or rate-distortion
    optimised levels for a size budget), optionally retrain or distil, ready to write.

    Args:
        model: any module; its conv and linear layers are coded, everything else kept exactly.
        config: what to do (``CompressionConfig``).
        calibration: unlabelled inputs, needed by a size budget and by distillation: a
            ``Calibration``, a tensor (N, ...) or an iterable of batches (``as_calibration``).
        model_name, model_kwargs, preprocessing, class_names: what the file records, so that
            ``load_compressed`` can rebuild the model (``model_name``: a registered name,
            ``torchvision:NAME`` or ``package.module:function``; "" for none).
        retrain: ``retrain(model, stage)`` is called after pruning (stage "pruned") and after
            weight sharing (stage "shared"), e.g. a training loop with ``after_step_`` as its
            hook: the paper's masked retraining and centroid fine-tuning with labels.
        log: progress messages.
        progress: a bar on stderr for each named stage (sensitivities, second moments, each
            quantizer tried, distillation); None: where stderr is a terminal.

    Returns:
        A ``CompressionReport``: ``bytes`` (the exact file size), ``fp32_bytes`` and ``ratio``
        against the model's fp32 state dict, per-layer rows, seconds, and in ``details`` the
        densities, bits or levels and the budget's quantizer and candidates.

    Raises:
        ValueError: bad options, missing calibration, or a budget nothing fits.
    """
    return _compress(model, config, calibration, model_name, model_kwargs, preprocessing, class_names, retrain, log,
                     progress)[1]


def _compress(model, config, calibration, model_name, model_kwargs, preprocessing, class_names, retrain,
              log, progress=None) -> tuple[bytes, CompressionReport]:
    shown = wanted(progress)
    with showing(shown):
        return _compress_shown(model, config, calibration, model_name, model_kwargs, preprocessing, class_names,
                               retrain, around_bars(log), shown)


def _compress_shown(model, config, calibration, model_name, model_kwargs, preprocessing, class_names, retrain,
                    log, shown: bool) -> tuple[bytes, CompressionReport]:
    config = config or CompressionConfig()
    config = replace(config, error_feedback=config.feedback(retraining=retrain is not None))
    fp32 = fp32_bytes(model)  # the model as given, before any folding
    calibration = as_calibration(calibration)
    steps = config.distill_steps(calibration is None or calibration.loader is not None)
    _check_request(model, config, calibration, steps)
    start = time.perf_counter()
    if config.fold_batch_norm and has_batch_norm(model):
        model_name, model_kwargs = _fold_(model, model_name, model_kwargs, log)
    teacher = copy.deepcopy(model).eval() if steps else None
    names = list(prunable_layers(model))
    achieved = prune_stage_(model, config)
    kept = sum(int(m.weight_mask.sum()) for m in prunable_layers(model).values())
    total = sum(m.weight.numel() for m in prunable_layers(model).values())
    log(f"pruned: {kept:,} of {total:,} weights kept ({kept / total:.1%})")
    report = {"codec": config.codec, "kept_weights": kept, "total_weights": total, "density": achieved}
    if retrain is not None:
        retrain(model, "pruned")
    bias_dtype = "f4"
    file_info = {"model_name": model_name, "model_kwargs": dict(model_kwargs or {}), "preprocessing": preprocessing,
                 "class_names": class_names, "codec": config.codec}

    def serialize(m, cb_dtype="f2"):
        return encode(m, **file_info, codebook_dtype=cb_dtype, bias_dtype=bias_dtype)

    if config.size_budget and config.any_levels:
        bias_dtype = cb_dtype = "f2"  # at a budget, 2 bytes a bias buy more than the rounding costs
        report.update(_budget_stage_(model, config, calibration, lambda m: serialize(m, cb_dtype),
                                     tuned_after=bool(steps or retrain is not None), log=log))
    else:
        if config.size_budget:
            layer_bits, _ = choose_bits_for_budget(model, calibration.inputs[:16], config.size_budget)
            log(f"bits chosen for {config.size_budget:,} bytes: {sorted(layer_bits.values())}")
        else:
            layer_bits = config.layer_bits(names)
        info = share_stage_(model, layer_bits, config.codebook_dtype, config.kmeans_iters)
        cb_dtype = info["codebook_dtype"]
        report.update({"bits": info["bits"], "codebook_dtype": info["codebook_dtype"],
                       "lossless_layers": sum(info["lossless"].values())})
    # Packed codebooks are a few bytes longer or shorter once centroids move; where that crosses
    # the budget, the centroids that fitted are put back (the tuned biases stay).
    fitted = {n: m.weight_codebook.detach().clone() for n, m in prunable_layers(model).items()} \
        if config.size_budget and (steps or retrain is not None) else None
    if retrain is not None:
        retrain(model, "shared")
        _round_to_file_precision_(model, cb_dtype, bias_dtype)  # fine-tuned centroids, as the file stores them
    data = None
    if steps:
        kind = report.get("output") or resolve_output_kind(config.output, model, calibration.inputs)
        loader = calibration.loader if calibration.loader is not None else \
            torch.utils.data.DataLoader(calibration.inputs, batch_size=16, shuffle=True,
                                        generator=torch.Generator().manual_seed(0))
        losses = distill_shared_(model, teacher, loader, steps, config.finetune_lr, output=kind, progress=shown)
        _round_to_file_precision_(model, cb_dtype, bias_dtype)
        report["finetune"] = {"steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}
        log(f"distillation: KL {losses[0]:.4f} -> {losses[-1]:.4f} over {steps} steps")
    if fitted is not None:
        _keep_trellis_levels_(model, fitted)
        data = serialize(model, cb_dtype)
        if len(data) > config.size_budget:
            _restore_codebooks_(model, fitted)
            log(f"fine-tuned centroids took {len(data) - config.size_budget} bytes too many: kept the biases only")
            report["centroids_kept"] = False
            data = None
    model.compressed_as = {**file_info, "codebook_dtype": cb_dtype, "bias_dtype": bias_dtype}
    data = data or encode(model)
    if config.size_budget and len(data) > config.size_budget:  # a hard limit, whatever happened above
        raise ConfigError(f"the file came out at {len(data):,} bytes, over the budget of {config.size_budget:,}")
    return data, CompressionReport.of_file(data, fp32, time.perf_counter() - start, **report)


def _check_request(model: nn.Module, config: CompressionConfig, calibration, steps: int) -> None:
    if (config.size_budget or steps) and calibration is None:
        raise ConfigError("a size budget and distillation need calibration inputs (unlabelled)")
    if (config.size_budget or steps) and isinstance(model, StateDictModule):
        raise ConfigError("a size budget and distillation run the model on the calibration inputs: name its "
                          "architecture (--model package.module:function, or a checkpoint that records it)")
    if not prunable_layers(model):
        raise ConfigError("the model has no convolution or linear layer to compress")
    unstorable = [f"{k} ({v.dtype})" for k, v in model.state_dict().items() if v.dtype not in RAW_TYPES]
    if unstorable:
        raise ConfigError(f"the file format cannot store {', '.join(unstorable[:5])}"
                          + (f" and {len(unstorable) - 5} more" if len(unstorable) > 5 else "")
                          + f"; it stores {', '.join(sorted(str(t).removeprefix('torch.') for t in RAW_TYPES))}")


def _budget_stage_(model: nn.Module, config: CompressionConfig, calibration, serialize, tuned_after: bool,
                   log) -> dict:
    """Fit the size budget by rate-distortion search (``budget.fit_budget_``); the report's rows."""
    with torch.no_grad():  # the file will hold half-precision biases: tune with them
        for m in prunable_layers(model).values():
            if m.bias is not None:
                m.bias.copy_(m.bias.half().float())
    n = min(calibration.inputs.shape[0], config.calibration_inputs + JUDGE_INPUTS)
    log(f"calibration: {n} of {calibration.inputs.shape[0]} inputs; fitting {config.size_budget:,} bytes")
    # Fine-tuned centroids (distilled or retrained) pack a few bytes longer or shorter: leave
    # them 16 bytes a layer.
    margin = 16 * len(prunable_layers(model)) if tuned_after else 0
    # numpy_small_pages: arrays of tens of megabytes made and freed by each quantization pass
    with numpy_small_pages(), one_dimensional_convolutions(model):
        info = fit_budget_(model, config, calibration.inputs[:n], max(config.size_budget - margin, 1), serialize,
                           tuned_after=tuned_after, log=log)
    log(f"quantized: {info['kept_weights']:,} weights kept, levels per layer {min(info['levels'].values())}.."
        f"{max(info['levels'].values())}, {info['bytes']:,} bytes")
    report = {key: info[key] for key in ("output", "quantizer", "calibration_inputs", "judge_inputs", "levels",
                                         "kept_weights")}
    report["slope"] = info["lam"]
    if "candidates" in info:
        report["candidates"] = info["candidates"]
    return report


@torch.no_grad()
def _keep_trellis_levels_(model: nn.Module, codebooks: dict) -> None:
    """Layers on the trellis (``weight_step``) take back their levels after centroid tuning (the
    trellis codec holds multiples of the step only); their tuned biases stay."""
    for name, m in prunable_layers(model).items():
        if getattr(m, "weight_step", None) is not None:
            m.weight_codebook.copy_(codebooks[name])
            levels = m.weight_codebook[m.weight_index.long()].to(m.weight.dtype)
            m.weight.copy_(torch.where(m.weight_mask, levels, torch.zeros_like(levels)))


@torch.no_grad()
def _restore_codebooks_(model: nn.Module, codebooks: dict) -> None:
    for name, m in prunable_layers(model).items():
        m.weight_codebook.copy_(codebooks[name])
        place_shared_weights_(m)


@torch.no_grad()
def _round_to_file_precision_(model: nn.Module, cb_dtype, bias_dtype: str) -> None:
    """Round fine-tuned centroids and biases to what the file stores, so model == file."""
    for name, m in prunable_layers(model).items():
        dt = cb_dtype.get(name, "f4") if isinstance(cb_dtype, dict) else cb_dtype
        if dt == "f2":
            m.weight_codebook.copy_(m.weight_codebook.half().float())
            place_shared_weights_(m)
        if bias_dtype == "f2" and m.bias is not None:
            m.bias.copy_(m.bias.half().float())


def model_for_compression(weights) -> nn.Module:
    """The model of ``LoadedWeights`` to compress: built where its architecture is known, else a
    stand-in holding its state dict (``models.standin``)."""
    if weights.has_architecture:
        return weights.build_model()
    return module_from_state_dict(weights.state_dict)


def fp32_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict with floats at 4 bytes (the size ratios are against this),
    each tensor counted once however many names it has (a tied embedding)."""
    state = model.state_dict()
    aliases = state_aliases(state)
    return sum(4 * v.numel() if v.is_floating_point() else v.numel() * v.element_size()
               for k, v in state.items() if k not in aliases)


def _fold_(model: nn.Module, model_name: str, model_kwargs: dict | None, log) -> tuple[str, dict]:
    """Fold batch norm into the convolutions in place; returns the architecture the file records:
    a ``batch_norm=True`` SqueezeNet folds into its plain architecture, another model's folded
    file records none (its state dict no longer fits the original one)."""
    fold_batch_norm_(model)
    kwargs = dict(model_kwargs or {})
    if kwargs.get("batch_norm"):
        kwargs["batch_norm"] = False
    elif model_name:
        model_name = ""
        log("folded batch norm: the file records the state dict only (the architecture changed)")
    return model_name, kwargs


def fold_for_compression(model: nn.Module, weights, log: Callable[..., None] = _quiet):
    """(folded copy of the model, the weights' record for it), as ``_fold_`` names it."""
    if not has_batch_norm(model):
        return model, weights
    folded = copy.deepcopy(model)
    name, kwargs = _fold_(folded, weights.model_name, weights.model_kwargs, log)
    record = LoadedWeights(name, folded.state_dict(), weights.preprocessing, weights.num_classes, kwargs,
                           weights.class_names, weights.kind, weights.path, weights.extra)
    if name:
        record.build_model()  # the folded weights fit the plain architecture
    return folded, record


def compress_weights(weights, config: CompressionConfig | None = None, *, calibration=None,
                     calibration_images: int = 256, out: str | os.PathLike | None = None,
                     log: Callable[..., None] = _quiet, progress: bool | None = None) -> tuple[bytes, nn.Module, dict]:
    """``compress_`` for a weights file (or ``LoadedWeights``): what ``squeezenet compress`` runs.

    Args:
        weights: any file ``load_weights`` reads, or ``LoadedWeights``.
        config: the ``CompressionConfig``.
        calibration: unlabelled inputs for a size budget and distillation: a folder of images, a
            tensor file, ``package.module:function`` (``load_calibration``), a tensor or batches.
        calibration_images: how many of them to take for sensitivities.
        out: where to write the file, if anywhere.
        log, progress: as ``compress_``.

    Returns:
        (file bytes, compressed model, ``CompressionReport``).
    """
    config = config or CompressionConfig()
    lw = weights if isinstance(weights, LoadedWeights) else load_weights(weights)
    model = model_for_compression(lw)
    calib = None
    if isinstance(calibration, (str, os.PathLike)):
        if config.size_budget or config.distill_steps():  # otherwise nothing reads it: not loaded
            calib = load_calibration(calibration, lw.preprocessing, calibration_images, config.distill_steps())
    elif calibration is not None:
        calib = as_calibration(calibration)
    data, report = _compress(model, config, calib, lw.model_name, lw.model_kwargs,
                             lw.preprocessing.to_dict() if lw.has_architecture else None, lw.class_names, None, log,
                             progress)
    if out is not None:
        atomic_write_bytes(out, data)
        report = report.with_details(out=str(out))
    return data, model, report.with_details(weights=str(lw.path), model=lw.model_name or "(state dict)")
