"""Relative position coding of sparse weights (Deep Compression, sec. 4), shared by both formats.

A kept weight is coded by its gap to the previous kept one. A gap too long for the alphabet
is split: ``span`` positions at a time are consumed by a *filler* symbol, then the remainder
is coded. The published ``.net`` file makes the filler an entry of gap ``span - 1`` holding
weight index 0 (the paper's zero padding); our version 1 files give it a symbol of its own.
"""
from __future__ import annotations

import numpy as np


def relative_gaps(positions: np.ndarray, span: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaps of strictly increasing ``positions`` over ``0..span-1``, fillers for longer gaps.

    Returns:
        (symbols, real): the symbol stream (fillers are ``filler``) and, for each position, the
        index of its symbol in the stream.

    Raises:
        ValueError: positions not strictly increasing and non-negative.
    """
    positions = np.asarray(positions, np.int64)
    if positions.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    raw = np.diff(positions, prepend=-1) - 1
    if (raw < 0).any():
        raise ValueError("positions must be strictly increasing and non-negative")
    fillers = raw // span           # a gap g needs g // span fillers, then g % span
    real = np.cumsum(fillers + 1) - 1
    symbols = np.full(int(real[-1]) + 1, filler, np.int64)
    symbols[real] = raw % span
    return symbols, real


def absolute_positions(symbols: np.ndarray, span: int, filler: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``relative_gaps``: (positions of every symbol, which symbols are real).

    A filler advances ``span`` positions whatever its value, so the ``.net`` file's fillers
    (value ``span - 1``) and ours (value ``span``) decode alike.
    """
    symbols = np.asarray(symbols, np.int64)
    is_filler = symbols == filler
    step = np.where(is_filler, span, symbols + 1)
    return np.cumsum(step) - 1, ~is_filler
