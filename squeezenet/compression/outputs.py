"""Distortion in the model's output space, whatever the output is.

Rate allocation, sensitivities and distillation all need one number for "how far is the
compressed model's output from the original's". What that number should be depends on what
the model outputs:

* ``logits`` (a classifier's scores): KL of the softmax distributions.
* ``probs`` (already a softmax: rows in [0, 1] summing to 1): KL of those distributions.
* ``sigmoid`` (independent probabilities, e.g. multi-label or pitch-bin activations): the
  Bernoulli KL summed over outputs.
* ``mse`` (regression, embeddings, anything else): half the squared error summed over outputs,
  the KL of unit-variance Gaussians centred on the outputs.

Each kind comes with a Fisher sample (``fisher_sample_loss``): a scalar whose weight gradient,
squared, is an unbiased sample of the diagonal Fisher information of that distortion, so that
``distortion ~ 0.5 * sum(F * dW**2)`` for small weight changes ``dW``. Tuples, lists and dicts of
outputs are flattened and concatenated per input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .config import OUTPUT_KINDS

_EPS = 1e-6


def flatten_outputs(out) -> torch.Tensor:
    """A model's output as one (N, features) float tensor (tuples, lists and dicts concatenated)."""
    if isinstance(out, torch.Tensor):
        return out.float().reshape(out.shape[0], -1) if out.dim() else out.float().reshape(1, 1)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        parts = [flatten_outputs(o) for o in out if isinstance(o, (torch.Tensor, tuple, list, dict))]
        if parts:
            return torch.cat(parts, 1)
    raise ConfigError(f"cannot measure distortion on a model output of type {type(out).__name__}")


def detect_output_kind(y: torch.Tensor) -> str:
    """The kind of a batch of (flattened) outputs: ``probs`` for rows of a distribution,
    ``sigmoid`` for values all in [0, 1], ``logits`` for classifier-shaped scores (2-D output with
    at least two columns from a plain tensor), ``mse`` otherwise."""
    y = y.detach().float()
    if y.numel() and float(y.min()) >= 0.0 and float(y.max()) <= 1.0:
        if y.shape[1] > 1 and torch.allclose(y.sum(1), torch.ones(y.shape[0]), atol=1e-3):
            return "probs"
        return "sigmoid"
    return "logits" if y.shape[1] > 1 else "mse"


def resolve_output_kind(kind: str, model, inputs: torch.Tensor) -> str:
    """``kind``, or for ``auto`` the kind ``detect_output_kind`` reads off the model's outputs on a
    few inputs (a non-tensor output is never taken for logits)."""
    if kind not in OUTPUT_KINDS:
        raise ConfigError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    if kind != "auto":
        return kind
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(inputs[:8])
    finally:
        model.train(was_training)
    found = detect_output_kind(flatten_outputs(out))
    if found == "logits" and not isinstance(out, torch.Tensor):
        return "mse"
    return found


def distortion(reference: torch.Tensor, output: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over inputs of the output-space distortion of ``output`` against ``reference``
    (both flattened, (N, features)); differentiable in ``output``."""
    if kind == "logits":
        return F.kl_div(F.log_softmax(output, 1), F.log_softmax(reference, 1), log_target=True,
                        reduction="batchmean")
    if kind == "probs":
        p = reference.clamp_min(_EPS)
        return (p * (p.log() - output.clamp_min(_EPS).log())).sum(1).mean()
    if kind == "sigmoid":
        p = reference.clamp(_EPS, 1 - _EPS)
        q = output.clamp(_EPS, 1 - _EPS)
        return (p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())).sum(1).mean()
    if kind == "mse":
        return 0.5 * ((output - reference) ** 2).sum(1).mean()
    raise ConfigError(f"unknown output kind {kind!r}")


def fisher_sample_loss(y: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A scalar whose gradient is a sample of the score of the output distribution ``kind`` puts
    around ``y`` (flattened outputs of a batch), summed over the batch.

    The squared gradient of the batch sum estimates the sum of the per-input Fisher diagonals:
    the scores have zero mean under the model, so cross terms vanish in expectation.
    """
    if kind in ("logits", "probs"):
        logp = F.log_softmax(y, 1) if kind == "logits" else y.clamp_min(_EPS).log()
        label = torch.multinomial(logp.detach().exp(), 1, generator=generator)
        return -logp.gather(1, label).sum()
    if kind == "sigmoid":
        p = y.clamp(_EPS, 1 - _EPS)
        target = torch.bernoulli(p.detach(), generator=generator)
        return -(target * p.log() + (1 - target) * (1 - p).log()).sum()
    if kind == "mse":  # Gaussian of unit variance: the score is the noise itself
        noise = torch.randn(y.shape, generator=generator)
        return -(noise * y).sum()
    raise ConfigError(f"unknown output kind {kind!r}")
