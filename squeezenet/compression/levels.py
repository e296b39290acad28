"""What every quantizer of the size budget hands on: a layer's levels (``LayerQuant``), and the
step that high-rate theory gives a layer at its slope (``layer_step``)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LN2 = math.log(2.0)


@dataclass
class LayerQuant:
    """A quantized layer: sorted nonzero levels, an index per position, and the kept mask."""
    codebook: np.ndarray   # float32[k], ascending
    index: np.ndarray      # int16[numel], index into codebook where mask
    mask: np.ndarray       # bool[numel]
    step: float | None = None  # the trellis quantizer's step (``trellis.py``): levels are on its trellis

    @property
    def neg(self) -> int:
        return int((self.codebook < 0).sum())

    def weight(self) -> np.ndarray:
        out = np.zeros(self.mask.size, np.float32)
        out[self.mask] = self.codebook[self.index[self.mask]]
        return out



def layer_step(w: np.ndarray, mask: np.ndarray, lam_l: float, step_scale: float,
               abs_max: float | None = None) -> float:
    """Grid step of a layer at its own slope ``lam_l`` (high-rate theory), bounded below.
    ``abs_max``: the largest magnitude of the kept weights, where the caller knows it (a pass
    over a 22M-weight model's weights took a third of each rate estimate)."""
    delta = step_scale * math.sqrt(6.0 * lam_l / LN2)
    if abs_max is None:
        kept = np.abs(w[mask])
        abs_max = float(kept.max()) if kept.size else None
    if abs_max is not None:  # at most ~2,000 levels a side: finer than any budget needs, and a bounded file
        delta = max(delta, abs_max / 2000.0)
    return delta


def as_f64(w: np.ndarray) -> np.ndarray:
    """A layer's weights in float64, where the quantizers compute (a copy of one layer at a time)."""
    return np.asarray(w, np.float64)
