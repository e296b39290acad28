"""Timing several inference paths fairly on a shared machine."""
from __future__ import annotations

import time

import numpy as np


def time_interleaved(paths: dict, x, seconds: float, rounds: int = 6, min_iters: int = 5) -> dict:
    """Latencies of every path on ``x``, measured in interleaved rounds (``seconds`` per path in all).

    Timing paths one after another lets the load of a shared machine drift between rows (the
    same model timed in two consecutive rows differed by up to 14% here); in rounds, each path
    runs for ``seconds / rounds`` per round in a rotating order, so every row sees the same
    stretch of time and slow moments are shared rather than charged to one row.
    """
    names = list(paths)
    lat = {n: [] for n in names}
    for n in names:  # warm-up: first calls allocate, compile kernels and fill caches
        paths[n](x)
        paths[n](x)
    slice_s = seconds / rounds
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            while True:
                t = time.perf_counter()
                paths[n](x)
                lat[n].append(time.perf_counter() - t)
                if time.perf_counter() - start >= slice_s and len(lat[n]) >= min_iters * (r + 1) // rounds:
                    break
    out = {}
    for n in names:
        q = np.percentile(lat[n], [50, 90, 99]) * 1e3
        out[n] = {"images_per_s": x.shape[0] * len(lat[n]) / sum(lat[n]), "p50_ms": float(q[0]),
                  "p90_ms": float(q[1]), "p99_ms": float(q[2]), "iterations": len(lat[n])}
    return out
