"""Canonical Huffman coding of small integer alphabets, C-backed through ``bitarray``.

A code is stored as its canonical description only: ``count[l]``, the number of symbols of
code length ``l``, and the symbols in canonical order (by length, then by value). Encoding
and decoding run in C (``bitarray.encode`` and ``bitarray.util.canonical_decode``); nothing
loops over bits in Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from bitarray import bitarray, frozenbitarray
from bitarray.util import canonical_decode, canonical_huffman

MAX_CODE_LENGTH = 48  # a Huffman code over n <= 2**20 symbols is never longer than this


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
    _, count, symbols = canonical_huffman({int(s): int(f) for s, f in zip(uniq, freq)})
    return HuffmanTable(list(count), [int(s) for s in symbols])


def encoded_bits(values: np.ndarray, table: HuffmanTable) -> int:
    """Bits ``values`` take under ``table`` (no encoding is done)."""
    if len(table.symbols) == 0:
        return 0
    lengths = table.code_lengths()
    uniq, freq = np.unique(np.asarray(values), return_counts=True)
    return int(sum(lengths[int(s)] * int(f) for s, f in zip(uniq, freq)))


def encode(values: np.ndarray, table: HuffmanTable) -> bitarray:
    """Encode ``values`` with ``table``; returns the bit stream."""
    out = bitarray(endian="big")
    if np.asarray(values).size:
        out.encode(table.codes(), np.asarray(values).tolist())
    return out


def decode(bits: bitarray, table: HuffmanTable, n: int) -> np.ndarray:
    """Decode exactly ``n`` symbols from ``bits``.

    Raises:
        HuffmanError: the stream holds fewer symbols or leftover bits beyond byte padding.
    """
    if n == 0:
        return np.zeros(0, np.int64)
    if not table.symbols:
        raise HuffmanError("empty code table for a non-empty stream")
    if len(table.symbols) == 1:
        if len(bits) < n:
            raise HuffmanError("bit stream is truncated")
        return np.full(n, table.symbols[0], np.int64)
    if len(bits) > n * (len(table.count) - 1) + 7:
        raise HuffmanError("bit stream is longer than its symbols can be")
    try:
        it = canonical_decode(bits, table.count, table.symbols)
        out = np.fromiter(it, dtype=np.int64, count=n)
    except (ValueError, StopIteration) as e:
        raise HuffmanError(f"bit stream does not decode ({e})") from None
    return out
