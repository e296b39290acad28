"""The size-budget stage: the rate allocation that fits a model into a number of bytes.

One global slope spreads the bytes over layers (``rdquant``); how each layer's step follows
the slope is the quantizer: ``fisher`` weighs it by the layer's sensitivity (the high-rate
optimum when the sensitivities are right), ``uniform`` gives every layer the same step (MPEG
NNC's recipe, safe when they are not), ``trellis`` the same on NNC's dependent quantizer
(``trellis.py``). Sensitivities measured on a few hundred inputs can be off by orders of
magnitude on models they do not describe well (a layer pruned to 2% of its weights destroyed a
pitch tracker at 2 MB), so by default every candidate is fitted to the budget and the one whose
outputs on calibration inputs the fit did not see stay closest to the original model's is kept:
never worse, on those inputs, than the uniform quantizer at the same size. Models sized on
estimates (``rdquant.sized_on_estimates``: millions of weights, seconds a quantization pass)
fit the first candidate, judge the others within ``CANDIDATE_TOLERANCE`` of the budget with
their distortions carried to it (``at_budget``), and fit only the one kept.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ..memory import release_memory
from ..models.layers import prunable_layers
from ..weights.sqz import CODING_BUFFERS
from .config import CompressionConfig
from .progress import stage, tick
from .outputs import distortion, flatten_outputs, resolve_output_kind
from .quantization import _set_buffer
from .rdquant import (HESSIAN_POSITIONS, SecondMomentSums, feedback_damping, feedback_factors, feedback_memory,
                      fisher_sensitivity, quantize_for_budget_, sized_on_estimates)

# Sensitivity exponent of each quantizer: a layer's slope is lam / s**exponent. "trellis" is
# "uniform" on the trellis codec's dependent quantizer, without error feedback (MPEG NNC's DQ).
QUANTIZER_EXPONENT = {"fisher": 1.0, "three_quarters": 0.75, "middle": 0.5, "quarter": 0.25, "uniform": 0.0,
                      "trellis": 0.0}
TRELLIS = "trellis"
# Inputs whose outputs judge the candidates (a forward pass each).
JUDGE_INPUTS = 128
# Where sizes are estimated, candidates after the first are judged at the first size within this
# fraction of the budget, either side, their distortions carried to the budget (``at_budget``;
# the candidates of one budget differ by tens of percent, CREPE full at 2.3 MB 0.25 to 0.74).
CANDIDATE_TOLERANCE = 0.1
# Models sized on estimates (millions of weights) spend most of their time in forward and backward
# passes, so they take fewer of them. Inputs whose Fisher information weighs their layers (a
# backward pass each: 26 s for 256 on a 22M-weight audio model on 2 cores; its per-layer means
# settle early, on 128 inputs within 0.90-0.98 of their value on 384); inputs that judge their
# candidates; output positions an input that sum each convolution's input second moments. CREPE
# full (1,000 held-out frames, +-0.5 points): 128 / 128 / 64 kept 99.2% of frames at 2.3 MB and
# 89.2% at 1.4 MB in 93 and 87 s; 64 / 64 / 32 99.2% and 88.7% in 71 and 67 s.
LARGE_MODEL_SENSITIVITY_INPUTS = 64
LARGE_MODEL_JUDGE_INPUTS = 64
LARGE_MODEL_POSITIONS = 32
# ``effort="fast"`` (the default on models of over ``FAST_WEIGHTS`` weights): the uniform
# quantizer alone. CREPE full (1,000 held-out frames; 2.3 / 1.4 MB): the full search kept
# uniform at both budgets, 99.2% / 88.8% of frames within 10 cents in 73 / 67 s; uniform alone
# 99.4% / 89.2% in 41 / 40 s. Cheaper second moments cost more than they saved at 1.4 MB: on 128
# inputs 84.3%, in blocks of 512 columns 83.4%, both 77.3%.
FAST_WEIGHTS = 4_000_000
# Output positions an input whose patches sum a convolution's second moments on the fast path:
# the blocks' products are half its second-moment pass. CREPE full, 2.3 / 1.4 MB: 32 positions
# 99.4% / 89.2% of frames (3.1 / 12.5 cents), 16 99.6% / 89.1% (1.9 / 13.7), 8 at 1.4 MB 87.9%.
FAST_POSITIONS = 16


@torch.no_grad()
def model_outputs(model: nn.Module, inputs: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """The model's flattened outputs (``outputs.flatten_outputs``) on ``inputs``, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([flatten_outputs(model(inputs[i:i + batch_size]))
                          for i in range(0, inputs.shape[0], batch_size)])
    finally:
        model.train(was_training)


@torch.no_grad()
def judged_distortion(model: nn.Module, inputs: torch.Tensor, reference: torch.Tensor, kind: str,
                      batch_size: int = 16) -> float:
    """``distortion`` of the model's outputs on ``inputs`` against ``reference`` (``model_outputs``
    of the original), a batch at a time: the mean over inputs, without the outputs of all of them
    and their softmaxes in memory at once (a language model's 64 judge sequences: 268 MB each)."""
    was_training = model.training
    model.eval()
    total, rows = 0.0, 0
    try:
        for i in range(0, inputs.shape[0], batch_size):
            out = flatten_outputs(model(inputs[i:i + batch_size]))
            total += float(distortion(reference[rows:rows + out.shape[0]], out, kind)) * out.shape[0]
            rows += out.shape[0]
    finally:
        model.train(was_training)
    return total / max(rows, 1)


def fit_budget_(model: nn.Module, config: CompressionConfig, inputs: torch.Tensor, budget: int, serialize,
                log=print, tuned_after: bool = False) -> dict:
    """Quantize ``model`` in place to fit ``budget`` bytes (``serialize`` gives the exact file).

    Args:
        inputs: calibration inputs. The first ``config.calibration_inputs`` measure
            sensitivities and feed error feedback; up to ``JUDGE_INPUTS`` others judge the
            candidates (``LARGE_MODEL_JUDGE_INPUTS`` sized on estimates; ``split_calibration``).
        tuned_after: centroids are fine-tuned afterwards (distillation, retraining). "auto" then
            leaves the trellis out: its levels stay on the trellis grid, so tuning gives it
            nothing, and candidates are compared before tuning.

    Returns:
        ``quantize_for_budget_``'s report plus ``output`` (the distortion's kind), ``quantizer``
        (the one kept) and ``candidates`` (each one's bytes and calibration distortion).
    """
    kind = resolve_output_kind(config.output, model, inputs)
    large = sized_on_estimates(model, config.error_feedback)
    fast = fast_effort(model, config)
    names = [config.quantizer] if config.quantizer != "auto" else ["uniform"] if fast else \
        auto_candidates(config.error_feedback, large, tuned_after)
    inputs, judge = split_calibration(inputs, config.calibration_inputs, judged=len(names) > 1,
                                      judges=LARGE_MODEL_JUDGE_INPUTS if large else JUDGE_INPUTS)
    if any(QUANTIZER_EXPONENT[n] for n in names):
        sens = fisher_sensitivity(model, inputs[:LARGE_MODEL_SENSITIVITY_INPUTS] if large else inputs, output=kind)
    else:  # one step for every layer: no sensitivities to measure (a backward pass per input)
        sens = {n: 1.0 for n in prunable_layers(model)}
    positions = FAST_POSITIONS if fast else LARGE_MODEL_POSITIONS if large else HESSIAN_POSITIONS
    factors = feedback_factors_of(model, inputs, log, positions=positions,
                                  store=np.float32 if large else np.float64) \
        if config.error_feedback and names != [TRELLIS] else None

    def fit(name, what="quantizer", **search):
        trellis = name == TRELLIS
        with stage(f"{what} {name}", unit="quantization passes"):
            return quantize_for_budget_(model, _weighted(sens, name), budget, serialize,
                                        factors=None if trellis else factors, trellis=trellis, **search)

    counts = {"calibration_inputs": inputs.shape[0], "judge_inputs": judge.shape[0]}
    if len(names) == 1:
        return {**fit(names[0]), **counts, "output": kind, "quantizer": names[0]}
    chosen = _CandidateSearch(model, judge, kind, budget, large, fit, log).run(names)
    return {**chosen, **counts, "output": kind}


def fast_effort(model: nn.Module, config: CompressionConfig) -> bool:
    """Whether ``config.effort`` searches fast on ``model`` (``CompressionConfig.effort``)."""
    if config.effort != "auto":
        return config.effort == "fast"
    return sum(m.weight.numel() for m in prunable_layers(model).values()) > FAST_WEIGHTS


def feedback_factors_of(model: nn.Module, inputs: torch.Tensor, log=print, positions: int = HESSIAN_POSITIONS,
                        store=np.float64) -> dict:
    """Error feedback's factors of each layer's input second moments on ``inputs``: factored once
    for every candidate (a fifth of a 22M-weight model's time went to factoring them again for
    each), one layer at a time from the float32 sums, each layer's float64 second moments
    overwritten by their factors (no second copy in memory), kept packed (``kernels.Panels``:
    half the memory). ``store``: the factors' dtype (float32 for models sized on estimates: half
    the memory again, held through the whole search)."""
    log(f"error feedback: {feedback_memory(model) / 2**20:,.0f} MiB of input second moments")
    rows: dict[str, int] = {}
    sums = SecondMomentSums(model, inputs, rows=rows, positions=positions)
    factors = {}
    with stage("factoring second moments", total=len(sums.parts), unit="layer"):
        for n in list(sums.parts):
            blocks = sums.pop(n, store)
            factors[n] = feedback_factors(blocks, feedback_damping(blocks, rows[n]), overwrite=True, store=store,
                                          pack=True)
            del blocks
            tick()
    release_memory()  # the sums' and the factoring's temporaries
    return factors


class _CandidateSearch:
    """``auto``'s search: each candidate quantizer fitted (or, sized on estimates, judged near the
    budget), the one whose outputs on the judge inputs stay closest to the original model's kept.

    Sized on estimates, the first candidate is fitted to the budget (it is the one most often
    kept) and the others judged near it, their distortions carried to the budget (``at_budget``):
    only the one kept is then fitted (a 22M-weight model's quantization pass is seconds). The
    ECSQ quantizers start from what the first one learnt of the estimate and share the exact
    bytes per order-0 byte; only the first serializes. The refinement between the middle and an
    end is fitted too: it is kept more often than not where it is tried, and a judged candidate
    kept costs two passes more. It starts from the estimate corrections of the two it lies
    between.
    """

    def __init__(self, model: nn.Module, judge: torch.Tensor, kind: str, budget: int, large: bool, fit, log):
        self.model, self.judge, self.kind, self.budget, self.large, self.fit, self.log = \
            model, judge, kind, budget, large, fit, log
        self.reference = model_outputs(model, judge)
        self.original = _snapshot(model, weights=True)
        # the quantizers' reference weights are the original snapshot's, not a copy of their own
        self.reference_weights = {n: s["weight"].float().reshape(-1).numpy() for n, s in self.original.items()}
        self.weights = sum(m.weight.numel() for m in prunable_layers(model).values())
        self.best = self.fitted = None
        self.candidates: dict = {}
        self.learnt: dict = {}

    def run(self, names: list[str]) -> dict:
        """Try ``names`` in turn (a refinement may join them); the kept one's report, fitted."""
        names = list(names)
        for i, name in enumerate(names):
            self._try(name, first=i == 0)
            if self.large and name == names[-1] == "fisher" and self.best[1] == "middle":
                names.append(_between(self.candidates))  # the loop takes it next
        return self._kept()

    def _try(self, name: str, first: bool) -> None:
        _restore(self.model, self.original)
        family = TRELLIS if name == TRELLIS else "ecsq"
        known = dict(self.learnt.get(family, {}))
        if name in BETWEEN:
            known["aim"] = math.sqrt(self.learnt["middle"]["aim"] * self.learnt[BETWEEN[name]]["aim"])
        fitted_now = self.large and (first or name in BETWEEN)
        info = self.fit(name, tolerance=None if fitted_now else CANDIDATE_TOLERANCE,
                        aim=known.get("aim"), coded_ratio=known.get("coded_ratio"),
                        coded_fixed=known.get("coded_fixed", 0), reference=self.reference_weights)
        coding = {"coded_ratio": info["coded_ratio"], "coded_fixed": info["coded_fixed"]}
        self.learnt.setdefault(family, {"aim": info["aim"]}).update(coding)
        self.learnt[name] = {"aim": info["aim"], "near": info["lam"], **coding}
        measured = self._distortion()
        d = at_budget(measured, info["bytes"], self.budget, self.weights) if self.large else measured
        self.candidates[name] = {"bytes": info["bytes"], "distortion": d}
        self.log(f"quantizer {name}: {info['bytes']:,} bytes, {self.kind} distortion {measured:.4g} on "
                 f"{self.judge.shape[0]} inputs" + (f" ({d:.4g} at {self.budget:,} bytes)" if d != measured else ""))
        if self.best is None or d < self.best[0]:
            self.best = (d, name, info, _snapshot(self.model))
        if info["fitted"] and (self.fitted is None or measured < self.fitted[0]):  # measured, as a refit is
            self.fitted = (measured, name, info, self.best[3] if self.best[1] == name else _snapshot(self.model))

    def _distortion(self) -> float:
        return judged_distortion(self.model, self.judge, self.reference, self.kind)

    def _kept(self) -> dict:
        """The best candidate, fitted to the budget now where it was only judged; a candidate
        already fitted and closer than the refit stays."""
        _, name, info, state = self.best
        if info["fitted"]:
            _restore(self.model, state)
        else:  # fitted to the budget now, from where it was judged
            _restore(self.model, self.original)
            info = self.fit(name, "fitting", **self.learnt[name], reference=self.reference_weights)
            d = self._distortion()
            self.candidates[name] = {"bytes": info["bytes"], "distortion": d}
            self.log(f"quantizer {name} fitted: {info['bytes']:,} bytes, {self.kind} distortion {d:.4g}")
            # A distortion judged off the budget is an estimate (a few percent of the bytes moved
            # CIFAR's uniform candidate from 0.00112 to 0.00132 where middle, fitted, had 0.00118):
            # a candidate already fitted and closer stays.
            if self.fitted is not None and self.fitted[0] < d:
                _, name, info, state = self.fitted
                _restore(self.model, state)
                self.log(f"quantizer {self.fitted[1]}, fitted first, is closer: kept")
        self.log(f"kept quantizer {name}")
        return {**info, "quantizer": name, "candidates": self.candidates}


# The refinements of the middle, and the end of each.
BETWEEN = {"quarter": "uniform", "three_quarters": "fisher"}


def _between(candidates: dict) -> str:
    """The exponent halfway between the middle's and that of whichever of uniform and fisher
    was closer: on a model sized on estimates, where a candidate is one quantization pass, the
    middle kept is refined once (CREPE full at 2.3 MB, middle alone: exponent 0.5 98.6% of
    held-out frames within 10 cents, 0.35 99.1%, 0.65 98.7%)."""
    return "quarter" if candidates["uniform"]["distortion"] <= candidates["fisher"]["distortion"] \
        else "three_quarters"


def at_budget(distortion_: float, size: int, budget: int, weights: int) -> float:
    """A distortion measured at ``size`` bytes carried to ``budget``: at high rate each bit a
    weight halves its squared error, so D ~ 2**(-2 * 8 * bytes / weights) (CREPE full at 2.3 MB:
    8% fewer bytes than the budget, 9% more distortion). Candidates judged a few percent either
    side of the budget are compared at it."""
    return distortion_ * 2.0 ** (-16.0 * (budget - size) / weights)


def auto_candidates(error_feedback: bool, large: bool, tuned_after: bool = False) -> list[str]:
    """The quantizers ``auto`` compares, the one most often kept first: without the trellis when
    centroids are tuned after (its levels stay on the trellis grid, so tuning gives it nothing)
    or, with error feedback, on models sized on estimates: it was never kept where error
    feedback ran (four bench models, twelve budgets: docs/any-model.md), and it took 170 s of a
    22M-weight model's compress."""
    names = ["middle", "uniform", "fisher", TRELLIS]
    if tuned_after or (error_feedback and large):
        names.remove(TRELLIS)
    return names


def split_calibration(inputs: torch.Tensor, fit: int, judged: bool = True,
                      judges: int = JUDGE_INPUTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs that fit the quantizers, inputs that judge them), disjoint. Error feedback fits
    the layers' outputs on its inputs, so judged on those it looks better than it is (CREPE
    full at 2.3 MB: kept over the trellis on its own calibration inputs, 95.3% of held-out
    frames within 10 cents against the trellis's 97.7%). The judges are the inputs after the
    first ``fit``; with no more than ``fit`` inputs (a folder of 125 images), the first
    ``judges`` of them judge, since every input is worth more to the fit there."""
    if not judged:
        return inputs[:fit], inputs[:0]
    if inputs.shape[0] > fit:
        return inputs[:fit], inputs[fit:fit + judges]
    return inputs, inputs[:judges]


def _weighted(sens: dict[str, float], quantizer: str) -> dict[str, float]:
    exponent = QUANTIZER_EXPONENT[quantizer]
    return {n: s ** exponent for n, s in sens.items()}


def _snapshot(model: nn.Module, weights: bool = False) -> dict:
    """The coded layers' weights and coding buffers, to restore later. A quantized layer's weight
    is its levels at its indices (``install_``), so it is left out where it is exactly that and
    rebuilt on restore: each candidate kept in memory then costs its indices and masks (3 bytes a
    weight), not a float copy of the model besides (a 98M-weight model: 392 MB a candidate).
    ``weights``: keep every weight all the same."""
    out = {}
    for n, m in prunable_layers(model).items():
        state = {k: getattr(m, k).detach().clone() for k in CODING_BUFFERS if getattr(m, k, None) is not None}
        if weights or not _is_levels(m.weight, state):
            state["weight"] = m.weight.detach().clone()
        out[n] = state
    return out


def _levels_weight(state: dict, like: torch.Tensor) -> torch.Tensor | None:
    """The weight a layer's coding buffers give (its levels at its indices, 0 where pruned)."""
    if not all(k in state for k in ("weight_codebook", "weight_index", "weight_mask")):
        return None
    index = state["weight_index"].long().clamp_(0, max(state["weight_codebook"].numel() - 1, 0))
    values = state["weight_codebook"][index] if state["weight_codebook"].numel() else torch.zeros(index.shape)
    return torch.where(state["weight_mask"].bool(), values, 0.0).to(like.dtype)


def _is_levels(weight: torch.Tensor, state: dict) -> bool:
    rebuilt = _levels_weight(state, weight)
    return rebuilt is not None and rebuilt.shape == weight.shape and torch.equal(rebuilt, weight.detach())


@torch.no_grad()
def _restore(model: nn.Module, state: dict) -> None:
    for n, m in prunable_layers(model).items():
        for k in CODING_BUFFERS:  # a buffer the state lacks goes (a trellis step on a plain layer)
            if k not in state[n] and k in m._buffers:
                del m._buffers[k]
        for k, v in state[n].items():
            if k == "weight":
                m.weight.copy_(v)
            else:
                _set_buffer(m, k, v.clone())
        if "weight" not in state[n]:
            m.weight.copy_(_levels_weight(state[n], m.weight))
