"""Range coding of quantized layers (format version 2) on tiny exact inputs."""
import numpy as np
import pytest

from squeezenet.weights import entropy


def test_count_quantization_is_exact_for_small_values_and_close_for_large():
    codes = entropy.quantize_count(np.arange(16), 15 * entropy.SCALE // 15)  # total = SCALE: counts kept as they are
    assert entropy.dequantize_count(codes).tolist() == list(range(16))
    big = np.array([1000, 65536, 12345, 1])
    back = entropy.dequantize_count(entropy.quantize_count(big, entropy.SCALE))
    assert back[-1] == 1 and back[1] == 65536
    assert np.all(np.abs(back - big) <= big / 16)  # 4-bit mantissa: within 1/16
    assert entropy.quantize_count(np.array([0, 5]), 5)[0] == 0  # zero stays zero, nonzero stays nonzero


def test_layer_symbols_exact():
    # codebook [-0.5, -0.1, 0.2, 0.7]: neg = 2; indices 0,1 negative (rank from zero: 1, 0), 2,3 positive (0, 1)
    index = np.array([0, 1, 2, 3, 0, 3])
    mask = np.array([True, True, True, True, False, True])
    flags, neg_rank, pos_rank = entropy.layer_symbols(index, mask, neg=2, taps=3)
    assert flags.tolist() == [[1, 1, 2], [2, 0, 2]]
    assert neg_rank.tolist() == [1, 0] and pos_rank.tolist() == [0, 1, 1]


def test_flag_histograms_use_previous_tap():
    flags = np.array([[0, 1, 1], [2, 2, 0]], np.int32)
    h = entropy.flag_histograms(flags)
    assert h[entropy.FIRST_TAP].tolist() == [1, 0, 1]  # tap 0: one pruned, one positive
    assert h[0].tolist() == [0, 1, 0]                   # after a pruned tap: a negative
    assert h[1].tolist() == [0, 1, 0] and h[2].tolist() == [1, 0, 1]


@pytest.mark.parametrize("taps,k,neg,density", [(1, 1, 0, 1.0), (9, 5, 2, 0.3), (4, 200, 120, 0.05), (1, 3, 3, 0.5),
                                                (9, 2, 0, 0.0), (49, 17, 8, 0.9)])
def test_round_trip(taps, k, neg, density):
    rng = np.random.default_rng(taps * 1000 + k)
    numel = taps * 37
    mask = rng.random(numel) < density
    index = rng.integers(0, k, numel)
    table, stream = entropy.encode_layer(index, mask, neg, k, taps)
    assert len(table) == entropy.model_table_size(k)
    idx2, mask2 = entropy.decode_layer(table, stream, numel, neg, k, taps, int(mask.sum()))
    assert np.array_equal(mask2, mask)
    assert np.array_equal(idx2[mask], index[mask])


def test_coded_size_close_to_the_ideal():
    rng = np.random.default_rng(0)
    taps, k, neg = 9, 64, 32
    index = np.clip(np.rint(rng.normal(32, 6, 9 * 4000)), 0, 63).astype(np.int64)
    mask = rng.random(index.size) < 0.35
    table, stream = entropy.encode_layer(index, mask, neg, k, taps)
    ideal = entropy.ideal_bits(index, mask, neg, k, taps) / 8
    assert ideal <= len(stream) <= ideal * 1.02 + 16


def test_wrong_kept_count_is_an_error():
    index = np.array([0, 1, 1, 0])
    mask = np.array([True, True, False, True])
    table, stream = entropy.encode_layer(index, mask, 1, 2, 1)
    with pytest.raises(entropy.EntropyError, match="kept weights"):
        entropy.decode_layer(table, stream, 4, 1, 2, 1, nnz=2)
    with pytest.raises(entropy.EntropyError, match="model table"):
        entropy.decode_layer(table[:-1], stream, 4, 1, 2, 1, nnz=3)


@pytest.mark.parametrize("dtype", ["f4", "f2"])
def test_codebook_packing_round_trips_and_shrinks(dtype):
    rng = np.random.default_rng(1)
    v = np.sort(rng.normal(0, 0.1, 300)).astype(np.float32)
    if dtype == "f2":
        v = np.unique(v.astype(np.float16)).astype(np.float32)
    v = np.concatenate([[-3.0], v, [0.0, 5.0]]).astype(np.float32)  # a negative outlier, zero, a large value
    v = np.unique(v)
    packed = entropy.pack_codebook(v, dtype)
    assert np.array_equal(entropy.unpack_codebook(packed, v.size, dtype), v)
    assert len(packed) < 0.85 * v.size * (4 if dtype == "f4" else 2)
    with pytest.raises(entropy.EntropyError):
        entropy.unpack_codebook(packed, v.size + 1, dtype)
    with pytest.raises(entropy.EntropyError):
        entropy.unpack_codebook(packed[:-3], v.size, dtype)
    with pytest.raises(ValueError, match="sorted"):
        entropy.pack_codebook(v[::-1].copy(), dtype)


def test_coding_the_flags_a_chunk_at_a_time_gives_the_one_stream(monkeypatch):
    rng = np.random.default_rng(4)
    index = rng.integers(0, 12, 9 * 5000).astype(np.int16)
    mask = rng.random(index.size) < 0.6
    whole = entropy.encode_layer(index, mask, 5, 12, 9)
    monkeypatch.setattr(entropy, "ENCODE_CHUNK", 777)  # chunks that split taps and contexts
    assert entropy.encode_layer(index, mask, 5, 12, 9) == whole
    idx, kept = entropy.decode_layer(*whole, index.size, 5, 12, 9, int(mask.sum()))[:2]
    assert np.array_equal(kept, mask) and np.array_equal(idx[mask], index[mask])


def test_ideal_bits_from_level_counts_equal_those_of_the_layers_symbols(monkeypatch):
    rng = np.random.default_rng(5)
    index = rng.integers(0, 9, 4 * 3000).astype(np.int16)
    mask = rng.random(index.size) < 0.7
    index[~mask] = 77  # anything where pruned
    flags, neg_rank, pos_rank = entropy.layer_symbols(index, mask, 4, 4)
    expect = sum(entropy.code_length(c) for c in list(entropy.flag_histograms(flags))
                 + [np.bincount(neg_rank), np.bincount(pos_rank)])
    monkeypatch.setattr(entropy, "COUNT_CHUNK", 1000)  # counted a chunk at a time
    assert entropy.ideal_bits(index, mask, 4, 9, 4) == pytest.approx(expect, rel=1e-12)
    assert np.array_equal(entropy.level_counts(index, mask, 9), np.bincount(index[mask], minlength=9))
    assert np.array_equal(entropy.bincount(pos_rank, minlength=20), np.bincount(pos_rank, minlength=20))


@pytest.mark.parametrize("case", ["sorted", "shuffled", "unused level", "int64 index"])
def test_range_codec_gives_the_same_weights_from_any_codebook_order(case):
    from squeezenet.errors import ConfigError
    from squeezenet.weights.codecs.base import LayerInput
    from squeezenet.weights.codecs.range import RangeCodec

    rng = np.random.default_rng(3)
    levels = np.array([-0.5, -0.25, 0.125, 0.5, 1.0], np.float32)
    index = rng.integers(0, levels.size, 4000).astype(np.int16)
    mask = rng.random(4000) < 0.3
    index[~mask] = rng.integers(0, levels.size, int((~mask).sum()))  # garbage where pruned
    expected = np.where(mask, levels[index], 0)
    codebook = levels
    if case == "shuffled":
        perm = rng.permutation(levels.size)
        codebook, index = levels[perm], np.argsort(perm).astype(np.int16)[index]
    elif case == "unused level":
        codebook = np.append(levels, np.float32(7.0))
    elif case == "int64 index":
        index = index.astype(np.int64)
    codec = RangeCodec()
    record = codec.encode(LayerInput("x", (4000,), codebook, index, mask, None))
    decoded = codec.decode(record.meta, record.sections, 4000)
    np.testing.assert_array_equal(np.asarray(decoded.weight).reshape(-1), expected)
    assert record.meta["k"] == levels.size  # unused levels are dropped
    bad = index.astype(np.int64)
    bad[np.flatnonzero(mask)[0]] = codebook.size  # a kept weight past the codebook
    with pytest.raises(ConfigError, match="out of range"):
        codec.encode(LayerInput("x", (4000,), codebook, bad if case == "int64 index" else bad.astype(np.int16),
                                mask, None))
