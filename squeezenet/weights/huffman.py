"""Canonical Huffman coding of small integer alphabets.

A code is stored as its canonical description only: ``count[l]``, the number of symbols of
code length ``l``, and the symbols in canonical order (by length, then by value). Encoding runs
in C through ``bitarray`` (imported when a file is written); decoding needs numpy only, so that
``squeezenet.reader`` reads the paper's coding without anything else: one table lookup per
symbol over the next ``WINDOW`` bits, computed for every bit position at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CODE_LENGTH = 48  # a Huffman code over n <= 2**20 symbols is never longer than this
WINDOW = 16           # codes up to this long decode by one lookup; longer (rare) ones bit by bit


class HuffmanError(ValueError):
    """A code table is not a valid prefix code, or a bit stream does not decode."""


@dataclass
class HuffmanTable:
    """Canonical code: ``count[l]`` symbols of length ``l`` (count[0] == 0), ``symbols`` in canonical order."""
    count: list
    symbols: list

    def code_lengths(self) -> dict:
        lengths = {}
        i = 0
        for length, c in enumerate(self.count):
            for s in self.symbols[i:i + c]:
                lengths[s] = length
            i += c
        return lengths

    def codes(self) -> dict:
        """Symbol -> frozenbitarray, rebuilt from the canonical description."""
        from bitarray import frozenbitarray

        validate_table(self.count, self.symbols, alphabet_size=None)
        out = {}
        code = 0
        i = 0
        for length in range(1, len(self.count)):
            code <<= 1
            for s in self.symbols[i:i + self.count[length]]:
                out[s] = frozenbitarray(format(code, f"0{length}b"))
                code += 1
            i += self.count[length]
        if len(self.symbols) == 1 and not out:
            out[self.symbols[0]] = frozenbitarray("0")
        return out


def validate_table(count: list, symbols: list, alphabet_size: int | None) -> None:
    """Check that ``count``/``symbols`` describe a complete prefix code over distinct symbols.

    Raises:
        HuffmanError: if the lengths over- or under-fill the code space (Kraft sum != 1,
            except the single-symbol code), symbols repeat or fall outside the alphabet.
    """
    if len(count) > MAX_CODE_LENGTH + 1 or (count and count[0] != 0):
        raise HuffmanError("code table has an invalid length histogram")
    if any(c < 0 for c in count) or sum(count) != len(symbols):
        raise HuffmanError("code table counts do not match its symbol list")
    if len(set(symbols)) != len(symbols):
        raise HuffmanError("code table lists a symbol twice")
    if alphabet_size is not None and any(not (0 <= s < alphabet_size) for s in symbols):
        raise HuffmanError(f"code table has a symbol outside 0..{alphabet_size - 1}")
    if len(symbols) <= 1:
        if len(symbols) == 1 and count != [0, 1]:
            raise HuffmanError("a single-symbol code must have length 1")
        return
    # Kraft: sum 2^-l == 1 exactly for a complete prefix code (integers: scale by 2^maxlen).
    maxlen = len(count) - 1
    kraft = sum(c << (maxlen - length) for length, c in enumerate(count))
    if kraft != 1 << maxlen:
        raise HuffmanError("code table is not a complete prefix code (Kraft sum != 1)")


def build_table(values: np.ndarray) -> HuffmanTable:
    """The canonical Huffman code of the symbol frequencies in ``values`` (non-negative ints)."""
    values = np.asarray(values)
    if values.size == 0:
        return HuffmanTable([], [])
    uniq, freq = np.unique(values, return_counts=True)
    if uniq.size == 1:
        return HuffmanTable([0, 1], [int(uniq[0])])
    from bitarray.util import canonical_huffman

    _, count, symbols = canonical_huffman({int(s): int(f) for s, f in zip(uniq, freq)})
    return HuffmanTable(list(count), [int(s) for s in symbols])


def encoded_bits(values: np.ndarray, table: HuffmanTable) -> int:
    """Bits ``values`` take under ``table`` (no encoding is done)."""
    if len(table.symbols) == 0:
        return 0
    lengths = table.code_lengths()
    uniq, freq = np.unique(np.asarray(values), return_counts=True)
    return int(sum(lengths[int(s)] * int(f) for s, f in zip(uniq, freq)))


def encode(values: np.ndarray, table: HuffmanTable):
    """Encode ``values`` with ``table``; returns the bit stream (a ``bitarray``, first bit = MSB)."""
    from bitarray import bitarray

    out = bitarray(endian="big")
    if np.asarray(values).size:
        out.encode(table.codes(), np.asarray(values).tolist())
    return out


def decode(data: bytes, nbits: int, table: HuffmanTable, n: int) -> np.ndarray:
    """Decode exactly ``n`` symbols from the first ``nbits`` bits of ``data`` (most significant
    bit of each byte first).

    Raises:
        HuffmanError: the stream holds fewer symbols or leftover bits beyond byte padding.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    if not table.symbols:
        raise HuffmanError("empty code table for a non-empty stream")
    if nbits > 8 * len(data):
        raise HuffmanError("bit stream is truncated")
    if len(table.symbols) == 1:
        if nbits < n:
            raise HuffmanError("bit stream is truncated")
        return np.full(n, table.symbols[0], np.int64)
    maxlen = len(table.count) - 1
    if nbits > n * maxlen + 7:
        raise HuffmanError("bit stream is longer than its symbols can be")
    width = min(maxlen, WINDOW)
    bits = np.unpackbits(np.frombuffer(data, np.uint8))[:nbits]
    padded = np.concatenate([bits, np.zeros(width, np.uint8)]).astype(np.int32)
    window = np.zeros(nbits, np.int32)  # the next `width` bits from every position, as an integer
    for j in range(width):
        window = (window << 1) | padded[j:j + nbits]
    sym_of, len_of = _lookup(table, width)
    lengths = len_of[window].tolist()
    starts, long_codes = [], {}
    append = starts.append
    p = 0
    try:
        for _ in range(n):  # the one sequential step: each code starts where the last one ended
            length = lengths[p]
            if length == 0:  # a code longer than the window
                long_codes[len(starts)], length = _decode_one(bits, p, table)
            append(p)
            p += length
    except IndexError:  # p ran past the last bit
        raise HuffmanError("bit stream is truncated") from None
    if p > nbits:
        raise HuffmanError("bit stream is truncated")
    out = sym_of[window[np.asarray(starts, np.int64)]]
    for i, s in long_codes.items():
        out[i] = s
    return out


def _lookup(table: HuffmanTable, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbol and code length for every ``width``-bit value whose prefix is a code of at most
    ``width`` bits (length 0 for the prefixes of longer codes)."""
    sym_of = np.zeros(1 << width, np.int64)
    len_of = np.zeros(1 << width, np.int32)
    code, i = 0, 0
    for length in range(1, len(table.count)):
        code <<= 1
        for s in table.symbols[i:i + table.count[length]]:
            if length <= width:
                lo, hi = code << (width - length), (code + 1) << (width - length)
                sym_of[lo:hi], len_of[lo:hi] = s, length
            code += 1
        i += table.count[length]
    return sym_of, len_of


def _decode_one(bits: np.ndarray, p: int, table: HuffmanTable) -> tuple[int, int]:
    """(symbol, length) of the one code starting at bit ``p``, bit by bit (canonical decoding)."""
    code = first = index = 0
    for length in range(1, len(table.count)):
        if p + length > bits.size:
            break
        code |= int(bits[p + length - 1])
        count = table.count[length]
        if code - first < count:
            return table.symbols[index + code - first], length
        index += count
        first = (first + count) << 1
        code <<= 1
    raise HuffmanError("bit stream is truncated")
