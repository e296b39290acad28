"""Entropy-constrained quantization and the size-budget search on small exact inputs."""

import inspect

import numpy as np
import pytest
import torch

from squeezenet.compression import rdquant
from squeezenet.weights.sqz import decode, encode
from squeezenet.compression.pruning import prunable_layers
from squeezenet.models import create_model
from squeezenet.preprocessing import CIFAR10


def test_ecsq_without_rate_term_rounds_to_bin_centroids():
    v = np.array([0.9, 1.1, 2.0, -1.0, 0.0, 0.3])
    mask = np.array([True, True, True, True, False, True])
    q = rdquant.ecsq(v, mask, delta=1.0, lam=0.0, codebook_dtype="f4")
    # bins: {0.9, 1.1} -> 1.0, {2.0} -> 2.0, {-1.0}, and 0.3 rounds to zero (becomes pruned)
    assert q.codebook.tolist() == [-1.0, 1.0, 2.0]
    assert q.mask.tolist() == [True, True, True, True, False, False]
    assert np.allclose(q.weight(), [1.0, 1.0, 2.0, -1.0, 0.0, 0.0])
    assert q.neg == 1


def test_ecsq_rate_term_prunes_rare_small_values():
    # Kept weights are at +-2 among as many pruned ones; a lone 0.6 costs many bits as its own
    # level (1 in 201) and little error as a zero, which is common.
    v = np.concatenate([np.full(50, 2.0), np.full(50, -2.0), [0.6], np.zeros(100)])
    mask = np.arange(v.size) < 101
    plain = rdquant.ecsq(v, mask, delta=0.5, lam=0.0, codebook_dtype="f4")
    rd = rdquant.ecsq(v, mask, delta=0.5, lam=0.2, codebook_dtype="f4")
    assert plain.mask.sum() == 101 and rd.mask.sum() == 100 and not rd.mask[100]
    assert rd.codebook.tolist() == [-2.0, 2.0]


def _correlated_layer(seed=0, out=16, d=36, n=2000):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=(n, d))
    mask = rng.random((out, d)) < 0.6
    return rng.normal(0, 0.05, (out, d)) * mask, mask, x


def test_error_feedback_halves_output_error_at_the_same_step_and_keeps_pruned_weights_zero():
    w, mask, x = _correlated_layer()
    h = x.T @ x / x.shape[0]
    plain = rdquant.ecsq(w.reshape(-1), mask.reshape(-1), 0.02, 0.0).weight().reshape(w.shape)
    fed = rdquant.ecsq_error_feedback(w, mask, rdquant.feedback_factor(h), 0.02, 0.0).weight().reshape(w.shape)
    assert not fed[~mask].any()
    err = [np.linalg.norm((w - q) @ x.T) for q in (plain, fed)]
    assert err[1] < 0.7 * err[0]


def test_error_feedback_levels_stay_on_the_grid_its_errors_were_fed_back_from():
    # coarse step and a rate term: the weights an index takes after compensation do not average
    # to its grid value, and a level moved to their mean would shift all of them after the fact
    w, mask, x = _correlated_layer(2)
    h = x.T @ x / x.shape[0]
    fed = rdquant.ecsq_error_feedback(w, mask, rdquant.feedback_factor(h), 0.05, 1e-3, codebook_dtype="f4")
    assert fed.codebook.size > 1
    assert np.allclose(fed.codebook / 0.05, np.rint(fed.codebook / 0.05), atol=1e-5)


def test_error_feedback_beats_plain_ecsq_on_held_out_inputs_when_calibrated_on_fewer_than_its_columns():
    # inputs with a common offset (post-ReLU activations have one) and 48 calibration inputs
    # for 64 columns: the second moment is singular, and only the damping keeps the fed-back
    # errors out of directions calibration never saw
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(8, 64))

    def inputs(n):
        return 2.0 + 0.3 * rng.normal(size=(n, 8)) @ mix + 0.3 * rng.normal(size=(n, 64))
    w, calibration, held_out = rng.normal(0, 0.05, (32, 64)), inputs(48), inputs(4000)
    mask = np.ones(w.shape, bool)
    blocks = [(0, 64, calibration.T @ calibration / 48)]
    damp = rdquant.feedback_damping(blocks, rows=48)
    assert damp == rdquant.FEEDBACK_DAMPING_PARTIAL
    factor = rdquant.feedback_factors(blocks, damp)
    plain = rdquant.ecsq(w.reshape(-1), mask.reshape(-1), 0.1, 0.002).weight().reshape(w.shape)
    fed = rdquant.ecsq_error_feedback(w, mask, factor, 0.1, 0.002).weight().reshape(w.shape)
    err = [np.linalg.norm((w - q) @ held_out.T) for q in (plain, fed)]
    assert err[1] < 0.75 * err[0]


def test_feedback_damping_is_gptqs_for_whole_second_moments_of_enough_rows_else_larger():
    whole, split = [(0, 64, None)], [(0, 32, None), (32, 64, None)]
    assert rdquant.feedback_damping(whole, rows=64) == rdquant.FEEDBACK_DAMPING == 0.01
    assert rdquant.feedback_damping(whole, rows=63) == rdquant.FEEDBACK_DAMPING_PARTIAL
    assert rdquant.feedback_damping(split, rows=10_000) == rdquant.FEEDBACK_DAMPING_PARTIAL


def test_error_feedback_with_uncorrelated_inputs_changes_no_later_column():
    # identity second moment: the inverse's Cholesky factor is diagonal, nothing to feed back;
    # each weight takes its nearest grid level (no rate term)
    w, mask, _ = _correlated_layer(1)
    factor = rdquant.feedback_factor(np.eye(w.shape[1]), damp=0.0)
    fed = rdquant.ecsq_error_feedback(w, mask, factor, 0.01, 0.0, codebook_dtype="f4")
    q = np.rint(w / 0.01) * mask
    assert np.array_equal(fed.mask.reshape(w.shape), q != 0)
    assert np.allclose(fed.weight().reshape(w.shape)[q != 0], w[q != 0], atol=0.01)


def test_layer_hessians_are_the_second_moment_of_each_layers_inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 4), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    x = torch.randn(10, 2, 4, 4)  # the 4x4 conv has one output position: its unfolded input is x itself
    rows = {}
    h = rdquant.layer_hessians(model, x, batch_size=3, rows=rows)
    assert rows == {"0": 10, "2": 10}  # one output position of the conv per input
    flat = x.reshape(10, -1).double()
    assert [(s, e) for s, e, _ in h["0"]] == [(0, 32)]
    assert np.allclose(h["0"][0][2], (flat.T @ flat / 10).numpy())
    mid = model[1](model[0](x)).detach().double()
    assert np.allclose(h["2"][0][2], (mid.T @ mid / 10).numpy())


def test_ecsq_error_bounded_by_step():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 0.1, 10_000)
    mask = np.abs(v) > 0.05
    q = rdquant.ecsq(v, mask, delta=0.01, lam=0.0)
    err = np.abs(q.weight() - np.where(mask, v, 0))
    assert err[q.mask].max() <= 0.01  # within one step (centroid in its bin, float16 rounding)
    assert not q.mask[~mask].any()    # pruned weights stay pruned


def test_search_budget_returns_the_largest_fit():
    def sizes(lam):  # size falls as lam grows
        return int(1000 / lam), lam

    lam, size, payload = rdquant.search_budget(sizes, 0.01, 100.0, budget=500)
    assert size <= 500 and size >= 495 and payload == lam
    with pytest.raises(ValueError, match="cannot fit"):
        rdquant.search_budget(sizes, 0.01, 100.0, budget=5)


def test_fisher_is_larger_for_a_layer_that_matters_more():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[2].weight.mul_(10)  # the second layer's outputs move ten times faster per unit of the first's weights
    s = rdquant.fisher_sensitivity(model, torch.randn(32, 4))
    assert set(s) == {"0", "2"} and all(v > 0 for v in s.values())
    assert s["0"] > s["2"]


TINY = {"base_e": 16, "incr_e": 16, "small_input": True}  # a 15,090-parameter SqueezeNet


def test_quantize_for_budget_is_a_hard_limit_and_round_trips():
    torch.manual_seed(0)
    model = _copy(create_model("squeezenet_from_metaparameters", num_classes=10, **TINY))
    sens = {n: 1.0 for n in prunable_layers(model)}

    def serialize(m):
        return encode(m, "squeezenet_from_metaparameters", model_kwargs=TINY, preprocessing=CIFAR10.to_dict(),
                              codebook_dtype="f2")

    full = len(serialize(_shared_copy(model)))
    # 20 budgets from half to the whole of the 8-bit file: never one byte over
    for budget in np.geomspace(full / 2, full, 20).astype(int):
        m = _copy(model)
        info = rdquant.quantize_for_budget_(m, sens, budget, serialize)
        data = serialize(m)
        assert len(data) == info["bytes"] <= budget
        _, state, _ = decode(data)
        for n, layer in prunable_layers(m).items():
            assert torch.equal(state[f"{n}.weight"], layer.weight.detach())


def test_error_feedback_takes_a_coarser_grid_by_default(monkeypatch):
    # 0.6 of the high-rate step for plain ECSQ, 1.7 with error feedback (both measured best)
    torch.manual_seed(0)
    model = _copy(create_model("squeezenet_from_metaparameters", num_classes=10, **TINY))
    sens = {n: 1.0 for n in prunable_layers(model)}
    hessians = rdquant.layer_hessians(model, torch.randn(4, 3, 32, 32))
    seen = []
    real = rdquant.quantize_layers
    signature = inspect.signature(real)

    def spy(*a, **k):
        seen.append(signature.bind(*a, **k).arguments["step_scale"])
        return real(*a, **k)

    monkeypatch.setattr(rdquant, "quantize_layers", spy)
    size = len(encode(_shared_copy(model), "squeezenet_from_metaparameters", model_kwargs=TINY))

    def serialize(m):
        return encode(m, "squeezenet_from_metaparameters", model_kwargs=TINY)

    factors = {n: rdquant.feedback_factors(h) for n, h in hessians.items()}
    for kw, scale in (({}, 0.6), ({"factors": factors}, 1.7), ({"factors": factors, "step_scale": 0.9}, 0.9)):
        seen.clear()
        assert rdquant.quantize_for_budget_(_copy(model), sens, size // 2, serialize, **kw)["bytes"] <= size // 2
        assert seen and set(seen) == {scale}


def _copy(model):
    m = create_model("squeezenet_from_metaparameters", num_classes=10, **TINY).eval()
    m.load_state_dict(model.state_dict())
    return m


def _shared_copy(model):
    from squeezenet.compression.quantization import share_weights_
    m = _copy(model)
    share_weights_(m, 8)
    return m


def _random_calibration_and_tiny_weights(tmp_path, images: int, seed: int):
    """A folder of random 40x40 images and a random small-input squeezenet1_1 as LoadedWeights."""
    from PIL import Image

    from squeezenet.weights import LoadedWeights
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10, small_input=True)
    lw = LoadedWeights("squeezenet1_1", model.state_dict(), CIFAR10, num_classes=10, model_kwargs={"small_input": True})
    return calib, lw


@pytest.mark.slow
def test_compress_weights_with_budget_and_calibration(tmp_path):
    from squeezenet.compression import CompressionConfig, compress_weights
    from squeezenet.weights import load_weights
    calib, lw = _random_calibration_and_tiny_weights(tmp_path, images=12, seed=0)
    out = tmp_path / "m.sqz"
    data, _, rep = compress_weights(lw, CompressionConfig(size_budget=150_000, finetune_steps=2, quantizer="fisher"),
                                    calibration=calib,
                                    calibration_images=8, out=out)
    assert len(data) == rep["bytes"] == out.stat().st_size <= 150_000
    assert rep["finetune"]["steps"] == 2 and rep["codec"] == "range"
    back = load_weights(out).build_model()
    x = torch.randn(2, 3, 32, 32)
    assert torch.isfinite(back(x)).all()
    with pytest.raises(ValueError, match="cannot fit"):
        compress_weights(lw, CompressionConfig(size_budget=2_000, finetune_steps=0), calibration=calib,
                         calibration_images=4)
    with pytest.raises(ValueError, match="calibration"):
        compress_weights(lw, CompressionConfig(size_budget=150_000))


@pytest.mark.slow
def test_error_feedback_at_a_budget_is_plumbed_through_and_stays_within_it(tmp_path):
    # Whether feedback helps depends on the model and on calibration images from its domain
    # (measured on the published SqueezeNet in bench_codecs); here: both quantizers run and fit.
    from squeezenet.compression import CompressionConfig, compress_weights
    calib, lw = _random_calibration_and_tiny_weights(tmp_path, images=8, seed=1)
    files = {}
    for feedback in (False, True):
        data, _, _ = compress_weights(lw, CompressionConfig(size_budget=60_000, finetune_steps=0, quantizer="fisher",
                                                            error_feedback=feedback), calibration=calib,
                                      calibration_images=8)
        assert 50_000 < len(data) <= 60_000
        files[feedback] = decode(data)[1]
    assert any(not torch.equal(files[True][k], files[False][k]) for k in files[True] if k.endswith("weight"))


def test_a_calibration_folder_is_read_only_by_the_stages_that_use_it(tmp_path):
    """``squeezenet reproduce`` passes its folder to every row, the lossless and bits-only ones too."""
    from squeezenet.compression import CompressionConfig, compress_weights
    from squeezenet.errors import DataError
    _, lw = _random_calibration_and_tiny_weights(tmp_path, images=1, seed=0)
    empty = tmp_path / "no_images"
    empty.mkdir()
    data, _, rep = compress_weights(lw, CompressionConfig(bits=6, density=0.5), calibration=empty)
    assert len(data) == rep["bytes"] > 0
    with pytest.raises(DataError, match="no images"):  # a budget reads it
        compress_weights(lw, CompressionConfig(size_budget=150_000, finetune_steps=0), calibration=empty)


def _sampled_patches(name, m, x, positions, g):
    """``_patch_gather``'s (N, C, P, taps) as unfolded rows (N * P, C * taps), ``F.unfold``'s column order."""
    picked = rdquant._patch_gather(name, m, x, positions, g)
    return picked.transpose(1, 2).reshape(-1, picked.shape[1] * picked.shape[3])


@pytest.mark.parametrize("conv,shape", [(torch.nn.Conv2d(3, 4, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
                                         (5, 3, 11, 13)),
                                        (torch.nn.Conv1d(20, 4, 64, stride=3, padding=7, dilation=2), (5, 20, 300))])
def test_sampled_patches_are_the_unfolded_columns_of_the_positions_drawn(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    got = _sampled_patches("c", conv, x, 7, torch.Generator().manual_seed(0))
    if isinstance(conv, torch.nn.Conv1d):
        args = [(v[0], 1) for v in (conv.kernel_size, conv.dilation)] + [(conv.padding[0], 0), (conv.stride[0], 1)]
        x = x.unsqueeze(-1)
    else:
        args = [conv.kernel_size, conv.dilation, conv.padding, conv.stride]
    cols = torch.nn.functional.unfold(x, args[0], dilation=args[1], padding=args[2], stride=args[3])
    pick = torch.randint(cols.shape[2], (7,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(got, cols[:, :, pick].permute(0, 2, 1).reshape(-1, cols.shape[1]))


def test_feedback_factors_are_upper_cholesky_factors_of_the_damped_inverses():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12))
    h = x.T @ x / 64
    h[3, :] = h[:, 3] = 0.0  # an input that is always zero
    blocks = [(0, 5, h[:5, :5]), (5, 10, h[5:10, 5:10]), (10, 12, h[10:, 10:])]
    f = rdquant.feedback_factors(blocks, damp=0.01)
    assert f.columns == 12 and [u.shape for _, u in f.groups] == [(2, 5, 5), (1, 2, 2)]
    for starts, u in f.groups:
        for s, ub in zip(starts, u):
            hb = h[s:s + ub.shape[0], s:s + ub.shape[0]].copy()
            d = np.diag(hb).copy()
            d[d <= 0] = 1.0
            np.fill_diagonal(hb, d + 0.01 * d.mean())
            assert np.allclose(np.triu(ub), ub) and np.allclose(ub.T @ ub, np.linalg.inv(hb))
    with pytest.raises(ValueError):
        rdquant.FeedbackFactor([(np.array([0, 7]), f.groups[0][1])], 1.0, 12)  # not side by side


def test_feedback_factors_overwrite_the_second_moments_layer_hessians_gives_and_equal_a_copys():
    model = torch.nn.Sequential(torch.nn.Conv1d(8, 4, 3))
    x = torch.randn(6, 8, 20)
    kept = rdquant.layer_hessians(model, x)["0"]
    copies = [(s, e, h.copy()) for s, e, h in kept]
    given = rdquant.feedback_factors(copies, overwrite=False)
    assert all(np.array_equal(h, c) for (_, _, h), (_, _, c) in zip(kept, copies))  # left as they were
    assert not any(np.shares_memory(u, h) for _, u in given.groups for _, _, h in copies)
    written = rdquant.feedback_factors(kept, overwrite=True)
    (_, u), = written.groups
    assert np.shares_memory(u, kept[0][2])  # the factors took the second moments' memory
    assert np.allclose(u, given.groups[0][1]) and written.scale == pytest.approx(given.scale)


def test_value_bins_know_the_largest_kept_magnitude_and_steps_use_it():
    from squeezenet.compression.levels import layer_step
    rng = np.random.default_rng(1)
    w = rng.normal(size=5000) * 0.1
    w[17] = -3.0  # the largest magnitude, negative
    mask = np.ones(w.size, bool)
    mask[3] = False
    bins = rdquant.ValueBins(w[mask], n_bins=64)
    assert bins.abs_max == 3.0
    for lam in (1e-12, 1e-4):  # the floor of the step (2,000 levels a side), then the slope's step
        assert layer_step(w, mask, lam, 1.0, bins.abs_max) == layer_step(w, mask, lam, 1.0)
    assert layer_step(w, mask, 1e-12, 1.0) == pytest.approx(3.0 / 2000)


def test_blocked_second_moments_of_a_convolution_are_the_diagonal_blocks_of_the_whole(monkeypatch):
    # 10 channels x 3 taps = 30 columns in blocks of whole channels: 12, 12 and a narrower 6
    monkeypatch.setattr(rdquant, "FEEDBACK_FULL", 16)
    monkeypatch.setattr(rdquant, "FEEDBACK_BLOCK", 12)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv1d(10, 4, 3, padding=1, dilation=2))
    x = torch.randn(6, 10, 40)
    rows = {}
    h = rdquant.layer_hessians(model, x, batch_size=4, positions=5, rows=rows)["0"]
    assert [(s, e) for s, e, _ in h] == [(0, 12), (12, 24), (24, 30)] and rows == {"0": 30}
    g = torch.Generator().manual_seed(0)  # the same draws, batch by batch, unfolded whole
    flat = torch.cat([_sampled_patches("0", model[0], x[i:i + 4], 5, g) for i in (0, 4)]).double()
    whole = (flat.T @ flat / 6).numpy()
    for s, e, block in h:
        assert np.allclose(block, whole[s:e, s:e], rtol=1e-5, atol=1e-6)
