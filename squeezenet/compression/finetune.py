"""Fine-tuning shared weights after quantization.

With labels, centroid fine-tuning runs through the training loop (``squeezenet.training``).
Without them, ``distill_shared_`` fine-tunes the centroids and biases so that the compressed
model reproduces the uncompressed one's outputs on unlabelled images the user gives (for an
ImageNet model, e.g. CIFAR-10 training images resized), keeping evaluation images unseen.
"""
from __future__ import annotations

import itertools
import sys

import torch
import torch.nn as nn
from tqdm import tqdm

from ..cpu import has_native_bf16
from .outputs import distortion, flatten_outputs
from .pruning import apply_masks_
from .quantization import snap_shared_weights_, sum_cluster_gradients_


def after_step_(model: nn.Module) -> None:
    """Keep pruned weights at zero and shared weights on their centroids (the training hook)."""
    apply_masks_(model)
    snap_shared_weights_(model)


def before_step_(model: nn.Module) -> None:
    """Turn weight gradients into centroid gradients (mean over each cluster), zero pruned ones."""
    sum_cluster_gradients_(model)


def distill_shared_(student: nn.Module, teacher: nn.Module, loader, steps: int, lr: float = 1e-4,
                    temperature: float = 1.0, progress: bool | None = None, bf16: bool | None = None,
                    output: str = "logits") -> list[float]:
    """Fine-tune ``student``'s centroids and biases towards ``teacher``'s outputs.

    Args:
        loader: batches of inputs, any shape (``(inputs, labels)`` batches give their inputs).
        temperature: softens logits (``output="logits"`` only).
        bf16: forward and backward passes under bf16 autocast (the centroids, their Adam state
            and the loss stay float32), with channels-last activations for image batches;
            None: where the CPU has native bf16 and the inputs are images, where it makes a step
            2.5x faster (measured, SqueezeNet v1.0 on AMX); emulated bf16 elsewhere would be
            slower than float32. The teacher's targets are computed in float32 either way.
        output: the kind of the models' outputs (``outputs.py``); the loss is its distortion.

    Returns the loss of each step. The student stays pruned and weight-shared throughout.
    """
    if steps <= 0:
        return []
    images = _is_image_batch(_first_batch(loader))
    if bf16 is None:
        bf16 = has_native_bf16() and images
    channels_last = bf16 and images  # NHWC is what oneDNN's bf16 kernels want
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.to(memory_format=torch.channels_last)
    try:
        return _distill(student, teacher, loader, steps, lr, temperature, progress, bf16, channels_last, output)
    finally:
        if channels_last:  # both back to the usual layout; the values never changed, only their memory order
            student.to(memory_format=torch.contiguous_format)
            teacher.to(memory_format=torch.contiguous_format)


def batch_inputs(batch):
    """The inputs of a batch: ``(inputs, labels)`` batches give their first item."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _first_batch(loader):
    return batch_inputs(next(iter(loader)))


def _is_image_batch(x) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[1] in (1, 3, 4)


def _distill(student, teacher, loader, steps, lr, temperature, progress, bf16, channels_last, output) -> list[float]:
    teacher.eval()
    # Dropout off: distillation matches deterministic outputs; batch statistics are absent anyway.
    student.eval()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    losses = []
    show = sys.stderr.isatty() if progress is None else progress
    batches = itertools.cycle(loader) if len(loader) < steps else iter(loader)
    with tqdm(total=steps, desc="distill", disable=not show) as bar:
        for _ in range(steps):
            x = next(batches)
            x = batch_inputs(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                target = flatten_outputs(teacher(x))
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                out = flatten_outputs(student(x)).float()
            if output == "logits":  # softened by the temperature (Hinton et al.), rescaled by its square
                loss = distortion(target / temperature, out / temperature, output) * temperature ** 2
            else:
                loss = distortion(target, out, output)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            before_step_(student)
            opt.step()
            after_step_(student)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses
