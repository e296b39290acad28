"""Weight distributions per layer with the codebook centroids over them (Deep Compression, Fig. 4)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..models.layers import coded_key
from ..weights.caffe_net import read_caffe_net
from ..weights.sqz import MAGIC, load_compressed


def plot_weight_distributions(path, out, max_layers: int = 12) -> str:
    """Histogram of each layer's kept weights, centroids as vertical lines; writes a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    with open(path, "rb") as f:
        compressed = f.read(len(MAGIC)) == MAGIC
    layers = []
    if compressed:
        loaded = load_compressed(path)
        header, state, shared = loaded.extra["header"], loaded.state_dict, loaded.extra["shared_state"]
        for entry in header["layers"]:
            name = entry["name"]
            whole = entry.get("tensor", False)
            w = state[coded_key(name, "weight", whole)].numpy().ravel()
            layers.append((name, w[w != 0], shared[coded_key(name, "weight_codebook", whole)].numpy()))
    else:
        for layer in read_caffe_net(path):
            w = layer.weight().ravel()
            layers.append((layer.module, w[w != 0], layer.codebook[1:][layer.codebook[1:] != 0]))
    if len(layers) > max_layers:  # spread the chosen layers over the depth
        idx = np.linspace(0, len(layers) - 1, max_layers).round().astype(int)
        layers = [layers[i] for i in sorted(set(idx))]
    cols = 3
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, w, cb) in zip(axes.ravel(), layers):
        ax.hist(w, bins=100, color="tab:blue", alpha=0.7)
        for c in cb:
            ax.axvline(c, color="tab:red", lw=0.3, alpha=0.6)
        ax.set_title(f"{name}: {w.size:,} weights, {cb.size} centroids", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(layers):]:
        ax.axis("off")
    fig.suptitle(f"{path.name}: kept weights (histogram) and codebook centroids (red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)
