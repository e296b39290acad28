"""The trellis codec (dependent quantization) on tiny exact inputs, and its file records."""
import itertools

import numpy as np
import pytest

from squeezenet.errors import ConfigError
from squeezenet.weights.codecs import LayerError, LayerInput, get_codec
from squeezenet.weights.codecs.trellis import NEXT, integers, reconstruct, run_length, weights_of

CODEC = get_codec("trellis")


def test_reconstruction_rule_and_state_walk_exact():
    # Q0 doubles k; Q1 gives 2k - sgn(k): the odd multiples and zero
    assert reconstruct(np.array([-2, -1, 0, 1, 2]), np.zeros(5, np.int64)).tolist() == [-4, -2, 0, 2, 4]
    assert reconstruct(np.array([-2, -1, 0, 1, 2]), np.ones(5, np.int64)).tolist() == [-3, -1, 0, 1, 3]
    # state 0 (Q0): j=2 -> k=1, odd -> state 2 (Q1): j=3 -> k=2, even -> state 1 (Q0): j=-4 -> k=-2
    k, q, ok = integers(np.array([[2, 3, -4, 0]]))
    assert ok and k.tolist() == [[1, 2, -2, 0]] and q.tolist() == [[0, 1, 0, 1]]
    assert NEXT[1, 0] == 2 and NEXT[2, 1] == 3
    # an odd multiple where the state holds Q0 is off the trellis
    assert not integers(np.array([[1, 0]]))[2]


def test_run_length_follows_kernels_then_input_rows():
    assert run_length((8, 4, 3, 3)) == 9 and run_length((8, 4, 64, 1)) == 64
    assert run_length((8, 4, 1, 1)) == 4 and run_length((360, 2048)) == 2048


def _trellis_layer(shape, seed=0, scale=4):
    """Multiples on the trellis: random integers k walked through the state machine."""
    rng = np.random.default_rng(seed)
    run = run_length(shape)
    k = rng.integers(-scale, scale + 1, (int(np.prod(shape)) // run, run)) * (rng.random((1, run)) < 0.7)
    q = np.zeros(k.shape, np.int64)
    state = np.zeros(k.shape[0], np.int8)
    for t in range(run):
        q[:, t] = state >> 1
        state = NEXT[state, k[:, t] & 1]
    return reconstruct(k, q).reshape(-1)


def _input(shape, j, step, bias=None, bias_dtype="f4"):
    values = weights_of(step, j)
    mask = j != 0
    codebook = np.unique(values[mask])
    return LayerInput("layer", shape, codebook, np.searchsorted(codebook, values), mask, bias, step=step,
                      bias_dtype=bias_dtype)


@pytest.mark.parametrize("shape", [(6, 5, 3, 3), (7, 12), (4, 8, 1, 1)])
def test_round_trip_is_bit_exact(shape):
    j = _trellis_layer(shape)
    bias = np.linspace(-1, 1, shape[0]).astype(np.float32)
    record = CODEC.encode(_input(shape, j, 0.0123, bias, "f2"))
    sizes = CODEC.check(record.meta, j.size, shape[0])
    assert sizes == [len(s) for s in record.sections]
    out = CODEC.decode(record.meta, record.sections, j.size)
    assert np.array_equal(out.weight, weights_of(0.0123, j))
    assert np.array_equal(out.mask, j != 0) and np.array_equal(out.codebook[out.index[out.mask]], out.weight[out.mask])
    assert np.array_equal(out.bias, bias.astype(np.float16).astype(np.float32))


def test_weights_off_the_trellis_or_the_grid_are_refused():
    shape = (4, 9)
    j = _trellis_layer(shape)
    off_grid = _input(shape, j, 0.5)
    off_grid.codebook = off_grid.codebook + 0.01
    with pytest.raises(ConfigError, match="multiples"):
        CODEC.encode(off_grid)
    j_bad = j.copy().reshape(-1, 9)
    j_bad[:, 0] = 1  # an odd multiple at the start of a run, where the state holds Q0
    with pytest.raises(ConfigError, match="trellis"):
        CODEC.encode(_input(shape, j_bad.reshape(-1), 0.5))
    with pytest.raises(ConfigError, match="step"):
        CODEC.encode(LayerInput("x", shape, np.ones(1, np.float32), np.zeros(36, np.int64), np.ones(36, bool), None))


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(step=-1.0), "step"),
    (lambda m: m.update(run=7), "divide"),
    (lambda m: m.update(magnitudes=[1 << 20, 0]), "magnitude"),
    (lambda m: m["sizes"].__setitem__(1, 5), "section sizes"),
    (lambda m: m.update(nnz=10 ** 9), "kept weights"),
])
def test_bad_records_rejected(edit, match):
    j = _trellis_layer((6, 5, 3, 3))
    meta = CODEC.encode(_input((6, 5, 3, 3), j, 0.1)).meta
    edit(meta)
    with pytest.raises(LayerError, match=match):
        CODEC.check(meta, j.size, 0)


def test_garbage_stream_raises_or_keeps_its_promises():
    shape = (16, 8, 3, 3)
    j = _trellis_layer(shape)
    record = CODEC.encode(_input(shape, j, 0.1))
    rng = np.random.default_rng(1)
    stream = rng.integers(0, 256, len(record.sections[2]), dtype=np.uint8).tobytes()
    try:
        out = CODEC.decode(record.meta, [record.sections[0], record.sections[1], stream], j.size)
    except LayerError:
        return
    assert int(out.mask.sum()) == record.meta["nnz"] and not np.array_equal(out.weight, weights_of(0.1, j))


def test_bruteforce_agrees_with_the_trellis_walk():
    # every integer sequence is a valid path; the walk and reconstruct are each other's inverse
    for seq in itertools.product(range(-2, 3), repeat=4):
        k = np.array([seq])
        q = np.zeros_like(k)
        state = 0
        for t in range(4):
            q[0, t] = state >> 1
            state = NEXT[state, k[0, t] & 1]
        k2, q2, ok = integers(reconstruct(k, q))
        assert ok and np.array_equal(k2, k) and np.array_equal(q2, q)


def test_huffman_files_of_an_unnamed_architecture_are_refused_not_written_unreadable():
    import torch.nn as nn

    from squeezenet.compression import CompressionConfig, compress_
    from squeezenet.weights import encode
    model = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ConfigError, match="Huffman"):
        compress_(model, CompressionConfig(codec="huffman", bits=4, density="keep"))
        encode(model)
