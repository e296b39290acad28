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
    assert huffman.decode(bits, table, len(v)).tolist() == values


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
    assert huffman.decode(bitarray(), table, 0).size == 0


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
        huffman.decode(bits[: len(bits) // 2], table, len(v))
