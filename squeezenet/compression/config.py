"""What one compression run does: ``CompressionConfig`` and the layer-spec mini-language."""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

from ..errors import ConfigError
from ..weights.codecs import get_codec


def parse_layer_spec(spec: str | float | int | dict | None, layers: list[str], what: str,
                     cast=float) -> dict:
    """Parse ``"0.5"`` (every layer) or ``"features.3.*=0.5,classifier.1=0.2"`` into layer -> value.

    Patterns are shell globs over module names; later entries win. Unknown patterns fail.
    """
    if spec is None:
        return {}
    if isinstance(spec, dict):
        return dict(spec)
    if isinstance(spec, (int, float)):
        return {n: cast(spec) for n in layers}
    out: dict = {}
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            try:
                value = cast(part)
            except ValueError:
                raise ConfigError(f"{what}: cannot read {part!r} (expected a number or PATTERN=VALUE)") from None
            out.update({n: value for n in layers})
            continue
        pattern, _, text = part.partition("=")
        try:
            value = cast(text)
        except ValueError:
            raise ConfigError(f"{what}: cannot read value {text!r} for {pattern!r}") from None
        hits = [n for n in layers if fnmatch.fnmatchcase(n, pattern.strip())]
        if not hits:
            raise ConfigError(f"{what}: pattern {pattern!r} matches no layer; layers are {', '.join(layers)}")
        out.update({n: value for n in hits})
    return out


QUANTIZERS = ("auto", "fisher", "uniform", "trellis")
EFFORTS = ("auto", "fast", "best")
# what a model outputs, for the distortion compression measures (``outputs.py``)
OUTPUT_KINDS = ("auto", "logits", "probs", "sigmoid", "mse")


@dataclass
class CompressionConfig:
    """Settings of one compression run.

    Attributes:
        density: "auto" (the default profile for dense weights, none for already-sparse
            ones), "profile", "keep" (no pruning), a float, or a layer spec / dict.
        bits: bits per layer, an int or a layer spec / dict (1..8).
        codebook_dtype: "f4" (exact), "f2" (half the codebook bytes) or "auto": f4 for layers
            whose weights were already shared (kept exactly), f2 where k-means changed them
            (its error dwarfs half-precision rounding).
        kmeans_iters: Lloyd iterations.
        sensitivity: prune by |w| > sensitivity * std(w) instead of by density.
        codec: a layer codec of ``weights.codecs``: "range" (context-modelled range coding,
            file version 3) or "huffman" (the paper's coding, version 1).
        size_budget: if set, the file's hard limit in bytes; bits then come from a
            rate-distortion search (range codec) or a bit allocation (Huffman) and need
            calibration images.
        finetune_steps: distillation steps for centroids and biases after quantization (None:
            150 with a size budget and the range codec, else 0); needs calibration images.
        finetune_lr: Adam learning rate of that distillation.
        error_feedback: None (the default): on with calibration inputs, off with retraining
            (``RetrainConfig``: on the CIFAR-10 fast model at 147,000 bytes it lost 1.29 points
            after centroid retraining, against 0.95 without). True: with a size budget and the
            range codec, quantize each layer's columns in turn and feed its output error on the
            calibration inputs back into the columns not yet quantized (GPTQ), on a grid 1.7x
            the high-rate step (plain ECSQ: 0.6x);
            False quantizes every weight on its own. On the published SqueezeNet, held-out
            top-1 agreement with ImageNet calibration images: 89.3% -> 92.9% at 400 kB, 80.9%
            -> 88.4% at 350 kB; with CIFAR-10 ones (another domain, measured on the 0.6x grid)
            87.0% -> 78.2% at 400 kB: the calibration images must come from the model's domain.
        fold_batch_norm: fold each batch norm into the convolution before it first (fewer
            bytes: a bias per channel instead of four statistics; pruning then sees the
            effective weights), in place; with retraining, after pruning and retraining. The
            file holds the folded model.
        output: what the model outputs, for the distortion that sensitivities, the choice of
            quantizer and distillation measure (``outputs.py``): "auto" (read off the outputs),
            "logits", "probs", "sigmoid" or "mse".
        quantizer: with a size budget, how the bytes are spread over layers: "fisher" (steps
            weighted by each layer's Fisher sensitivity), "uniform" (one step for every layer,
            the MPEG NNC recipe), "trellis" (one step, on a four-state trellis of two
            quantizers, coded by the trellis codec: NNC's dependent quantization; no error
            feedback), or "auto": all of them and the geometric middle of the first two, each
            fitted to the budget (on large models, but for the first: judged within 10% of it,
            their distortions carried to it, and a middle closer than both ends refined once,
            halfway toward the closer end), keeping the one whose outputs on the
            calibration inputs are closest to the original model's
            (``budget.auto_candidates``: without "trellis" when centroids are tuned after, or
            with error feedback on a large model).
        calibration_inputs: at most this many calibration inputs go into sensitivities and
            error feedback (a forward and backward pass each; 256 images are what the published
            SqueezeNet's figures were measured with; on a 22M-parameter audio model their
            second moments are about 13 s of its 30 s on 2 cores).
        effort: how hard a size budget searches. "best": ``quantizer`` as asked ("auto": every
            candidate, judged). "fast": "auto" fits the uniform quantizer alone with error
            feedback (MPEG NNC's one step: no sensitivity pass, no candidates). "auto"
            (default): "fast" on models of over 4M weights (each candidate costs them seconds
            of passes, and uniform was kept at every budget of CREPE full), else "best".
    """
    density: str | float | dict = "auto"
    bits: int | str | dict = 8
    codebook_dtype: str = "auto"
    kmeans_iters: int = 30
    sensitivity: float | None = None
    codec: str = "range"
    size_budget: int | None = None
    finetune_steps: int | None = None
    finetune_lr: float = 1e-4
    error_feedback: bool | None = None
    fold_batch_norm: bool = False
    output: str = "auto"
    quantizer: str = "auto"
    calibration_inputs: int = 256
    effort: str = "auto"

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {self.output!r}")
        if self.quantizer not in QUANTIZERS:
            raise ConfigError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {self.quantizer!r}")
        get_codec(self.codec)  # raises ConfigError naming the known codecs
        if self.codebook_dtype not in ("auto", "f4", "f2"):
            raise ConfigError(f"codebook dtype must be auto, f4 or f2, got {self.codebook_dtype!r}")
        if self.size_budget is not None and not 0 < self.size_budget <= 512 << 20:
            raise ConfigError(f"size budget must be a positive number of bytes, got {self.size_budget}")
        if self.effort not in EFFORTS:
            raise ConfigError(f"effort must be one of {', '.join(EFFORTS)}, got {self.effort!r}")
        if self.calibration_inputs < 1:
            raise ConfigError(f"calibration inputs must be at least 1, got {self.calibration_inputs}")
        if self.finetune_steps is not None and self.finetune_steps < 0:
            raise ConfigError(f"fine-tuning steps must be >= 0, got {self.finetune_steps}")

    def distill_steps(self, batches: bool = True) -> int:
        """Distillation steps this run takes: ``finetune_steps``, else 150 at a size budget with
        range coding when the calibration comes as batches (a folder of images or a loader;
        most of what distillation recovers, within 10 minutes on 2 cores for SqueezeNet v1.0),
        else none (a tensor of inputs: the time a model's distillation takes is unknown)."""
        if self.finetune_steps is not None:
            return self.finetune_steps
        return 150 if self.size_budget and self.any_levels and batches else 0

    @property
    def any_levels(self) -> bool:
        """Whether the codec takes codebooks of any size, which a size budget's
        rate-distortion search needs (else the budget is met by a bit allocation)."""
        return get_codec(self.codec).any_levels

    def feedback(self, retraining: bool) -> bool:
        """Whether error feedback runs: ``error_feedback``, else on unless retraining follows."""
        return self.error_feedback if self.error_feedback is not None else not retraining

    def layer_bits(self, layers: list[str]) -> dict[str, int]:
        bits = parse_layer_spec(self.bits, layers, "bits", int)
        full = {n: bits.get(n, 8) for n in layers}
        for n, b in full.items():
            if not 1 <= b <= 8:
                raise ConfigError(f"bits must be in 1..8, got {b} for {n}")
        return full


@dataclass
class RetrainConfig:
    """Retraining with labels (``compress --data``), beside the ``CompressionConfig`` it serves:
    the paper's stages through the training loop (prune, retrain with masks, share, fine-tune the
    centroids with labels).

    Attributes:
        data: labelled image folders (``DIR/train/<class>/...`` with ``DIR/val`` or ``DIR/test``).
        epochs: retraining epochs after pruning.
        finetune_epochs: centroid fine-tuning epochs with labels (None: ``epochs``).
        lr: learning rate (None: a tenth of the recipe's: the model is trained already).
        max_steps: at most this many steps an epoch (0: whole epochs).
        recipe: a training recipe (YAML); None: the checkpoint's, else the one the data call for.
    """
    data: str | os.PathLike
    epochs: int = 1
    finetune_epochs: int | None = None
    lr: float | None = None
    max_steps: int = 0
    recipe: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0 or (self.finetune_epochs is not None and self.finetune_epochs < 0) or self.max_steps < 0:
            raise ConfigError("retraining epochs and steps must be >= 0")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"retraining learning rate must be positive, got {self.lr}")
