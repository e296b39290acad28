"""The compiled inner loops give what their plain torch / numpy references give, on tiny inputs."""
import numpy as np
import pytest
import torch

from squeezenet.compression import kernels, rdquant


def _factors(g: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(g, width, width + 7))
    h = torch.from_numpy(x @ x.transpose(0, 2, 1) / width)
    rdquant._factor_stack_(h, 0.01)
    return h.numpy()


def test_numba_is_installed_so_the_compiled_path_is_the_one_tested():
    assert kernels.available()


@pytest.mark.parametrize("g,width,out", [(1, 5, 3), (1, 70, 9), (3, 40, 33), (2, 64, 70)])
def test_compiled_error_feedback_matches_the_torch_reference(g, width, out):
    rng = np.random.default_rng(g * 100 + width)
    u = _factors(g, width)
    w = rng.normal(0, 0.05, (g, width, out))
    mask = rng.random((g, width, out)) < 0.8
    bits = rng.uniform(1, 6, 31)
    w_before = w.copy()
    fast = kernels.feedback_blocks(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, block=16)
    slow = kernels.feedback_blocks_reference(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, block=16)
    assert np.array_equal(fast, slow)
    assert np.array_equal(w, w_before)  # the input is not written into
    assert (fast[~mask] == 0).all() and (fast != 0).any()


@pytest.mark.parametrize("counts", [False, True])
def test_compiled_ecsq_grid_is_bit_identical_to_numpy(counts):
    rng = np.random.default_rng(3)
    v = rng.laplace(0, 0.02, 5000)
    c = rng.integers(1, 9, v.size).astype(float) if counts else None
    for delta, lam in ((0.01, 1e-5), (0.002, 1e-7), (0.05, 1e-3)):
        q, levels, qmin, bits = kernels.ecsq_grid(v, 11, delta, lam, 4, c)
        rq, rlevels, rqmin, rbits = kernels.ecsq_grid_reference(v, 11, delta, lam, 4, c)
        assert np.array_equal(q, rq) and qmin == rqmin
        assert np.array_equal(levels, rlevels) and np.array_equal(bits, rbits)


def test_blocks_quant_matches_layer_quant_of_the_same_grid_indices():
    rng = np.random.default_rng(5)
    out, g, width = 6, 3, 4
    full = rng.integers(-3, 4, (out, g * width)).astype(np.int16)  # grid indices of a layer (out, D)
    mask = full != 0
    mask[0, :3] = False  # pruned positions: their grid index is 0, as error feedback leaves them
    full = np.where(mask, full, 0).astype(np.int16)
    q_blocks = np.ascontiguousarray(full.reshape(out, g, width).transpose(1, 2, 0))  # (G, B, out)
    levels = np.arange(-5, 6) * 0.1
    expect = rdquant._layer_quant(full[mask].astype(np.int64), levels, -5, mask.reshape(-1), "f2")
    got = rdquant._blocks_quant([(0, q_blocks)], levels, -5, (out, g * width), "f2")
    assert np.array_equal(got.codebook, expect.codebook) and np.array_equal(got.mask, expect.mask)
    assert np.array_equal(got.index[got.mask], expect.index[expect.mask])


def test_float32_factors_are_read_as_they_are_with_the_float64_result():
    # models sized on estimates keep their factors in float32; the feedback reads them without a
    # float64 copy and gives what the same factors widened to float64 give
    rng = np.random.default_rng(5)
    u = _factors(2, 64).astype(np.float32)
    w = rng.normal(0, 0.05, (2, 64, 40))
    mask = rng.random(w.shape) < 0.8
    bits = rng.uniform(1, 6, 31)
    narrow = kernels.feedback_blocks(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, block=16)
    wide = kernels.feedback_blocks(w, mask, u.astype(np.float64), 1.3, 0.01, 2e-4, -15, bits, block=16)
    assert np.array_equal(narrow, wide)
    assert (narrow != 0).any()


def test_float32_factoring_stays_close_to_float64_at_the_partial_damping():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 96, 200))
    h = x @ x.transpose(0, 2, 1) / 200
    blocks = [(96 * i, 96 * (i + 1), h[i]) for i in range(3)]
    f64 = rdquant.feedback_factors(blocks, rdquant.FEEDBACK_DAMPING_PARTIAL)
    f32 = rdquant.feedback_factors(blocks, rdquant.FEEDBACK_DAMPING_PARTIAL, store=np.float32)
    (_, u64), = f64.groups
    (_, u32), = f32.groups
    assert u32.dtype == np.float32 and u64.dtype == np.float64
    assert np.abs(u32 - u64).max() <= 1e-4 * np.abs(u64).max()
    assert f32.scale == pytest.approx(f64.scale, rel=1e-5)


@pytest.mark.parametrize("dtype,width", [(np.float64, 70), (np.float32, 64), (np.float64, 16)])
def test_packed_factors_hold_half_and_feed_back_what_the_whole_ones_do(dtype, width):
    rng = np.random.default_rng(7)
    u = _factors(3, width).astype(dtype)
    packed = kernels.Panels(u, 16)
    assert np.array_equal(packed.full(), u) and packed.shape == u.shape
    assert not any(np.shares_memory(p, u) for p in packed.panels)  # a view would hold all of u
    if width >= 64:
        assert packed.nbytes < 0.65 * u.nbytes
    w = rng.normal(0, 0.05, (3, width, 21))
    mask = rng.random(w.shape) < 0.8
    bits = rng.uniform(1, 6, 31)
    whole = kernels.feedback_blocks(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, block=16)
    assert np.array_equal(kernels.feedback_blocks(w, mask, packed, 1.3, 0.01, 2e-4, -15, bits, block=16), whole)
    # panels of other rows than the feedback's block, and the path without numba: unpacked
    assert np.array_equal(kernels.feedback_blocks(w, mask, packed, 1.3, 0.01, 2e-4, -15, bits, block=8),
                          kernels.feedback_blocks(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, block=8))
    assert np.array_equal(kernels.feedback_blocks_reference(w, mask, packed, 1.3, 0.01, 2e-4, -15, bits, 16), whole)


def test_a_layer_quantized_with_packed_factors_is_the_one_whole_factors_give():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 96))
    h = x.T @ x / 200
    blocks = [(0, 48, h[:48, :48].copy()), (48, 96, h[48:, 48:].copy())]
    whole = rdquant.feedback_factors(blocks, 0.01)
    packed = rdquant.feedback_factors(blocks, 0.01, pack=True)
    assert isinstance(packed.groups[0][1], kernels.Panels) and packed.scale == whole.scale
    w = rng.normal(0, 0.05, (10, 96))
    mask = np.ones(w.size, bool)
    a = rdquant.ecsq_error_feedback(w, mask, whole, 0.01, 1e-4)
    b = rdquant.ecsq_error_feedback(w, mask, packed, 0.01, 1e-4)
    assert np.array_equal(a.index, b.index) and np.array_equal(a.codebook, b.codebook)


def test_a_tall_layer_fed_back_a_slice_of_rows_at_a_time_gets_the_same_indices(monkeypatch):
    rng = np.random.default_rng(9)
    u = _factors(2, 48)
    w = rng.normal(0, 0.05, (2, 48, 300))
    mask = rng.random(w.shape) < 0.8
    bits = rng.uniform(1, 6, 31)
    whole = rdquant._feedback_blocks(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, 16)
    monkeypatch.setattr(rdquant, "FEEDBACK_CHUNK", 2 * 48 * 70)  # 70 rows a slice: five slices
    assert np.array_equal(rdquant._feedback_blocks(w, mask, u, 1.3, 0.01, 2e-4, -15, bits, 16), whole)


@pytest.mark.parametrize("n,dtype", [(300, torch.float64), (512, torch.float32), (100, torch.float64)])
def test_triangular_inverse_by_halves_matches_the_solve(n, dtype):
    rng = np.random.default_rng(n)
    x = torch.from_numpy(rng.normal(size=(2, n, n + 40)))
    lower = torch.linalg.cholesky(x @ x.transpose(1, 2) / n + 0.3 * torch.eye(n)).to(dtype)
    got = rdquant.lower_inverse(lower)
    expect = torch.linalg.solve_triangular(lower.double(), torch.eye(n, dtype=torch.float64).expand(2, n, n),
                                           upper=False)
    assert got.dtype == dtype and torch.equal(torch.tril(got), got)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    assert (got.double() - expect).abs().max() <= tol * expect.abs().max()


@pytest.mark.parametrize("width,panel", [(20, 7), (16, 16), (33, 8)])
def test_second_moments_summed_on_the_upper_panels_and_mirrored_are_the_whole_product(width, panel, monkeypatch):
    monkeypatch.setattr(rdquant, "MOMENT_PANEL", panel)
    rng = np.random.default_rng(width)
    a = torch.zeros(3, width, width, dtype=torch.float64)
    whole = torch.zeros_like(a)
    for _ in range(2):  # sums over batches
        xs = torch.from_numpy(rng.normal(size=(3, 50, width)))
        rdquant._accumulate_upper_(a, xs)
        whole.baddbmm_(xs.transpose(1, 2), xs)
    assert torch.allclose(a, whole) == (panel >= width)  # panels below the diagonal left out ...
    assert torch.allclose(rdquant._mirror_upper_(a), whole, rtol=1e-12, atol=1e-12)  # ... until mirrored
