import numpy as np
import pytest
from bitarray import bitarray

from squeezenet.weights import huffman


@pytest.mark.parametrize("values", [[3, 3, 3, 1, 1, 0], list(range(256)) * 3, [7], [0, 1]])
def test_round_trip_exact(values):
    v = np.array(values)
    table = huffman.build_table(v)
    bits = huffman.encode(v, table)
    assert len(bits) == huffman.encoded_bits(v, table)
    assert huffman.decode(bits.tobytes(), len(bits), table, len(v)).tolist() == values


def test_canonical_lengths_follow_frequencies():
    v = np.array([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2)
    table = huffman.build_table(v)
    lengths = table.code_lengths()
    assert lengths == {0: 1, 1: 2, 2: 3, 3: 3}
    codes = table.codes()
    assert codes[0].to01() == "0" and codes[1].to01() == "10" and {codes[2].to01(), codes[3].to01()} == {"110", "111"}


def test_empty_stream():
    table = huffman.build_table(np.array([], np.int64))
    assert huffman.encode(np.array([], np.int64), table) == bitarray()
    assert huffman.decode(b"", 0, table, 0).size == 0


def test_invalid_tables_rejected():
    with pytest.raises(huffman.HuffmanError, match="prefix"):
        huffman.validate_table([0, 2, 1], [0, 1, 2], 4)  # Kraft sum > 1
    with pytest.raises(huffman.HuffmanError, match="prefix"):
        huffman.validate_table([0, 1, 0, 1], [0, 1], 4)  # incomplete
    with pytest.raises(huffman.HuffmanError, match="twice"):
        huffman.validate_table([0, 2], [1, 1], 4)
    with pytest.raises(huffman.HuffmanError, match="outside"):
        huffman.validate_table([0, 2], [0, 9], 4)


def test_truncated_stream_rejected():
    v = np.arange(50) % 7
    table = huffman.build_table(v)
    bits = huffman.encode(v, table)
    with pytest.raises(huffman.HuffmanError):
        huffman.decode(bits.tobytes(), len(bits) // 2, table, len(v))
    with pytest.raises(huffman.HuffmanError, match="truncated"):
        huffman.decode(bits.tobytes()[:2], len(bits), table, len(v))


@pytest.mark.parametrize("window", [1, 3, 16])
def test_codes_longer_than_the_window_decode_bit_by_bit(monkeypatch, window):
    """A skewed (Fibonacci-like) alphabet gives codes far longer than a small lookup window;
    the numpy decoder must agree with bitarray's C canonical decoder on every symbol."""
    from bitarray.util import canonical_decode

    rng = np.random.default_rng(0)
    freq = [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144]
    v = rng.permutation(np.repeat(np.arange(len(freq)), freq))
    table = huffman.build_table(v)
    assert len(table.count) - 1 > 3  # some codes are longer than the small windows
    bits = huffman.encode(v, table)
    monkeypatch.setattr(huffman, "WINDOW", window)
    out = huffman.decode(bits.tobytes(), len(bits), table, len(v))
    assert out.tolist() == v.tolist() == list(canonical_decode(bits, table.count, table.symbols))
