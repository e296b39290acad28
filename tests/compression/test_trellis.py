"""The trellis quantizer: Viterbi against brute force on tiny exact inputs, and the size budget
on the trellis (file version 4, decoded weights equal to the installed ones)."""
import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from squeezenet.compression import CompressionConfig, compress_, rdquant
from squeezenet.compression.budget import _restore, _snapshot
from squeezenet.compression.trellis import _viterbi, ideal_bits, trellis_layer
from squeezenet.weights.codecs.trellis import NEXT, integers, reconstruct
from squeezenet.weights.sqz import decode, encode, size_report


def _walk(k):
    q = np.zeros_like(k)
    state = 0
    for t in range(k.size):
        q[t] = state >> 1
        state = NEXT[state, k[t] & 1]
    return reconstruct(k, q)


def test_viterbi_finds_the_least_squared_error_path_exactly():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1.0, (5, 4))
    step = 0.4
    flat_bits = np.zeros((2, 3)), np.zeros((2, 16))  # lam = 0: distortion only
    got = _viterbi(w, np.ones(w.shape, bool), step, 0.0, *flat_bits)
    for r in range(w.shape[0]):
        best = min(((w[r] - _walk(np.array(s)) * step) ** 2).sum() for s in itertools.product(range(-4, 5), repeat=4))
        q = integers(np.stack([_walk(got[r])]))[1][0]
        err = ((w[r] - reconstruct(got[r], q.astype(np.int64)) * step) ** 2).sum()
        assert err == pytest.approx(best, abs=1e-12)


def test_trellis_error_lies_between_the_fine_and_the_coarse_grid():
    rng = np.random.default_rng(1)
    w = rng.laplace(0, 0.2, 64 * 9)
    step = 0.1
    j = trellis_layer(w, (8, 8, 3, 3), step, lam=0.0)
    err = ((w - j * step) ** 2).sum()
    fine = ((w - np.rint(w / step) * step) ** 2).sum()            # the union of both quantizers
    coarse = ((w - np.rint(w / (4 * step)) * 4 * step) ** 2).sum()  # Q0 with even k only: one valid path
    assert fine <= err < coarse
    assert integers(j.reshape(-1, 9))[2]                              # on the trellis


def test_slope_trades_error_for_bits_and_pruned_weights_stay_zero():
    rng = np.random.default_rng(2)
    w = rng.laplace(0, 0.2, 32 * 9)
    keep = rng.random(w.size) < 0.6
    low = trellis_layer(w, (4, 8, 3, 3), 0.05, 0.0, keep)
    high = trellis_layer(w, (4, 8, 3, 3), 0.05, 0.05, keep)
    assert (low[~keep] == 0).all() and (high[~keep] == 0).all()
    assert ideal_bits(high.reshape(-1, 9)) < ideal_bits(low.reshape(-1, 9))
    assert ((w - high * 0.05) ** 2).sum() > ((w - low * 0.05) ** 2).sum()


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(4, 16, 5), nn.ReLU(), nn.Conv1d(16, 16, 5), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 12, 10)).eval()


def _serialize(m):
    return encode(m, "", codebook_dtype="f2", bias_dtype="f2")


def test_budget_on_the_trellis_fits_and_decodes_to_the_installed_weights():
    model = _model()
    full = len(_serialize(_shared(copy.deepcopy(model))))
    budget = full // 5
    info = rdquant.quantize_for_budget_(model, {n: 1.0 for n in ("0", "2", "5")}, budget, _serialize, trellis=True)
    data = _serialize(model)
    assert len(data) == info["bytes"] <= budget
    header, state, shared = decode(data)
    assert header["version"] == 4 and {layer["coding"] for layer in header["layers"]} == {"trellis"}
    for n in ("0", "2", "5"):
        assert torch.equal(state[f"{n}.weight"], getattr(model, n).weight.detach())
    assert size_report(data)["bytes"] == len(data)


def _shared(model):
    from squeezenet.compression.quantization import share_weights_
    share_weights_(model, 8)
    return model


def test_restoring_a_plain_candidate_drops_the_trellis_step():
    model = _model()
    plain = _snapshot(model)
    rdquant.quantize_for_budget_(model, {n: 1.0 for n in ("0", "2", "5")}, 6000, _serialize, trellis=True)
    assert model[0].weight_step is not None
    _restore(model, plain)
    assert "weight_step" not in model[0]._buffers


def test_auto_measures_the_trellis_and_leaves_it_out_when_centroids_are_tuned_after():
    model = _model()
    x = torch.randn(64, 4, 20)
    report = compress_(copy.deepcopy(model), CompressionConfig(size_budget=6000), calibration=x, log=lambda *a: None)
    assert "trellis" in report["candidates"]
    assert all(c["bytes"] <= 6000 for c in report["candidates"].values())
    tuned = compress_(copy.deepcopy(model), CompressionConfig(size_budget=6000, finetune_steps=2), calibration=x,
                      log=lambda *a: None)
    assert "trellis" not in tuned["candidates"]


def test_explicit_trellis_with_distillation_keeps_its_levels():
    model = _model()
    x = torch.randn(64, 4, 20)
    compress_(model, CompressionConfig(size_budget=6000, quantizer="trellis", finetune_steps=3), calibration=x,
              log=lambda *a: None)
    header, state, _ = decode(_serialize(model))
    assert header["version"] == 4
    assert all(torch.equal(state[f"{n}.weight"], getattr(model, n).weight.detach()) for n in ("0", "2", "5"))


def test_one_step_quantizers_skip_the_sensitivity_pass(monkeypatch):
    from squeezenet.compression import budget

    def no_sensitivities(*a, **k):
        raise AssertionError("sensitivities measured for a quantizer that does not use them")

    monkeypatch.setattr(budget, "fisher_sensitivity", no_sensitivities)
    for name in ("trellis", "uniform"):
        report = compress_(_model(), CompressionConfig(size_budget=6000, quantizer=name),
                           calibration=torch.randn(32, 4, 20), log=lambda *a: None)
        assert report["quantizer"] == name and report["bytes"] <= 6000


def test_candidates_are_judged_on_inputs_the_fit_did_not_see():
    from squeezenet.compression.budget import split_calibration
    x = torch.arange(400).float()[:, None]
    fit, judge = split_calibration(x, 256)
    assert fit.shape[0] == 256 and judge.shape[0] == 128 and not set(fit[:, 0].tolist()) & set(judge[:, 0].tolist())
    fit, judge = split_calibration(x[:100], 256)   # no spare inputs: all fit, the first judge
    assert fit.shape[0] == 100 and judge.shape[0] == 100
    report = compress_(_model(), CompressionConfig(size_budget=6000, calibration_inputs=32),
                       calibration=torch.randn(64, 4, 20), log=lambda *a: None)
    assert report["calibration_inputs"] == 32 and report["judge_inputs"] == 32
