"""Trained quantization / weight sharing (Han et al., "Deep Compression", ICLR 2016, sec. 3).

Per layer, the non-zero weights are clustered with 1-D k-means from a linear initialisation
(evenly spaced between min and max, the paper's best choice). The codebook and each weight's
cluster index are ``weight_codebook`` / ``weight_index`` buffers on the module. During
fine-tuning, ``sum_cluster_gradients_`` (before the optimizer step) replaces each weight's
gradient by the sum of the gradients of its cluster, which is the paper's centroid gradient;
the step then moves every weight of a cluster alike, and ``snap_shared_weights_`` (after the
step) re-reads the centroids and puts every weight back on its centroid.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..errors import ConfigError
from ..models.layers import coded_key, is_tensor_layer
from ..weights.sqz import CODING_BUFFERS
from .pruning import get_mask, prunable_layers


def kmeans_1d(values: np.ndarray, k: int, iters: int = 30, init: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means. Returns (centroids float32[k'], labels int64[n]) with centroids sorted.

    If there are at most ``k`` distinct values, each becomes its own centroid (exact; this
    makes re-encoding already-shared weights lossless). Empty clusters are dropped, so k' <= k.

    Args:
        values: the weights to cluster.
        k: number of clusters (2**bits).
        iters: Lloyd iterations; assignment is a binary search on centroid midpoints.
        init: "linear" (the paper's choice) or "density" (quantiles).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if v.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    uniq, inverse = np.unique(v, return_inverse=True)
    if uniq.size <= k:
        return uniq.astype(np.float32), inverse.astype(np.int64)
    if init == "linear":
        c = np.linspace(v.min(), v.max(), k)
    elif init == "density":
        c = np.quantile(v, (np.arange(k) + 0.5) / k)
    else:
        raise ConfigError(f"init must be 'linear' or 'density', got {init!r}")
    # Lloyd on the sorted distinct values with their counts: same result, far fewer points.
    counts = np.bincount(inverse).astype(np.float64)
    sums = uniq * counts
    for _ in range(iters):
        c = np.unique(c)
        labels = np.searchsorted((c[1:] + c[:-1]) / 2, uniq)
        n = np.bincount(labels, weights=counts, minlength=c.size)
        s = np.bincount(labels, weights=sums, minlength=c.size)
        keep = n > 0
        new = s[keep] / n[keep]
        if new.size < k:
            # Linear initialisation leaves clusters empty in the sparse tails; rather than lose
            # them (and bits), re-seed each at the value currently worst represented.
            new = _reseed(new, uniq, counts, k - new.size)
        elif np.allclose(new, c, rtol=0, atol=1e-12):
            c = new
            break
        c = new
    c = np.unique(c.astype(np.float32))
    labels = np.searchsorted((c[1:].astype(np.float64) + c[:-1]) / 2, uniq)
    used = np.unique(labels)
    remap = np.full(c.size, -1, np.int64)
    remap[used] = np.arange(used.size)
    return c[used], remap[labels][inverse]


def _reseed(c: np.ndarray, uniq: np.ndarray, counts: np.ndarray, missing: int) -> np.ndarray:
    """Add ``missing`` centroids at the values currently worst represented (count x squared error).

    All at once: one at a time (re-measuring the error after each) cost a second per model in
    the sparse tails of 8-bit codebooks, and the Lloyd iterations that follow even them out.
    """
    c = np.sort(c)
    labels = np.searchsorted((c[1:] + c[:-1]) / 2, uniq)
    err = counts * (uniq - c[labels]) ** 2
    worst = np.argsort(-err, kind="stable")[:missing]
    worst = worst[err[worst] > 0]
    return np.sort(np.concatenate([c, uniq[worst]]))


@torch.no_grad()
def share_weights_(model: nn.Module, bits: dict[str, int] | int = 8, iters: int = 30) -> dict[str, int]:
    """Quantize every conv / linear layer in place to ``2**bits`` shared values.

    Pruned weights (``weight_mask`` false, or zero when there is no mask) stay zero and are not
    clustered. Returns the number of centroids per layer.
    """
    layers = prunable_layers(model)
    if isinstance(bits, int):
        bits = {name: bits for name in layers}
    unknown = set(bits) - set(layers)
    if unknown:
        raise ConfigError(f"bits given for unknown layers: {', '.join(sorted(unknown))}")
    sizes = {}
    for name, m in layers.items():
        b = bits.get(name, 8)
        if not isinstance(b, int) or not 1 <= b <= 8:
            raise ConfigError(f"{name}: bits must be an integer in 1..8, got {b!r}")
        w = m.weight.data
        mask = get_mask(m)
        if mask is None:
            mask = w != 0
            m.register_buffer("weight_mask", mask)
        flat = w.reshape(-1)
        keep = mask.reshape(-1)
        centroids, labels = kmeans_1d(flat[keep].double().cpu().numpy(), 2 ** b, iters)
        index = torch.zeros(flat.numel(), dtype=torch.int16)
        index[keep.cpu()] = torch.from_numpy(labels).to(torch.int16)
        codebook = torch.from_numpy(centroids).to(w.device)
        _set_buffer(m, "weight_codebook", codebook)
        _set_buffer(m, "weight_index", index.reshape(w.shape).to(w.device))
        _set_buffer(m, "weight_bits", torch.tensor(b, dtype=torch.int16))
        new = torch.zeros_like(flat)
        if centroids.size:
            new[keep] = codebook[index.reshape(-1)[keep.cpu()].long().to(w.device)].to(w.dtype)
        w.copy_(new.reshape(w.shape))
        sizes[name] = int(centroids.size)
    return sizes


def _set_buffer(m: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in m._buffers:
        setattr(m, name, value)
    else:
        m.register_buffer(name, value)


def shared_layers(model: nn.Module):
    """(name, module) of layers that carry a codebook."""
    return [(n, m) for n, m in prunable_layers(model).items() if getattr(m, "weight_codebook", None) is not None]


@torch.no_grad()
def place_shared_weights_(m: nn.Module) -> None:
    """Set a shared layer's weights from its codebook, indices and mask (pruned ones to zero)."""
    if m.weight_codebook.numel() == 0:  # every weight pruned
        m.weight.zero_()
        return
    idx = m.weight_index.reshape(-1).long()
    flat = torch.where(m.weight_mask.reshape(-1), m.weight_codebook[idx].to(m.weight.dtype),
                       torch.zeros((), dtype=m.weight.dtype, device=m.weight.device))
    m.weight.copy_(flat.reshape(m.weight.shape))  # copy_, not a view: channels_last safe


@torch.no_grad()
def sum_cluster_gradients_(model: nn.Module) -> None:
    """Give each shared weight its cluster's gradient (paper eq. 3), zero pruned ones.

    Departure from the paper: the *mean* of the cluster's gradients rather than their sum. Both
    point the same way; the sum is n_k times larger, so with SGD at a training learning rate a
    centroid of n_k = 10,000 weights jumps 10,000 steps at once and fine-tuning diverges (we
    measured it: 80% -> 10% top-1 in one epoch). With the mean the recipe's learning rate keeps
    its meaning; Adam, which normalises the step, moves the same either way.
    """
    for _, m in shared_layers(model):
        g = m.weight.grad
        if g is None:
            continue
        if m.weight_codebook.numel() == 0:  # every weight pruned: nothing to move
            g.zero_()
            continue
        idx = m.weight_index.reshape(-1).long()
        keep = m.weight_mask.reshape(-1)
        flat = g.reshape(-1) * keep
        k = m.weight_codebook.numel()
        centroid_grad = torch.zeros(k, dtype=g.dtype, device=g.device).index_add_(0, idx[keep], flat[keep])
        members = torch.zeros(k, dtype=g.dtype, device=g.device).index_add_(
            0, idx[keep], torch.ones_like(flat[keep]))
        centroid_grad /= members.clamp_min(1)
        g.copy_((centroid_grad[idx] * keep).reshape(g.shape))


@torch.no_grad()
def snap_shared_weights_(model: nn.Module) -> None:
    """Read the centroids back from the (equal) weights of each cluster and re-place them."""
    for _, m in shared_layers(model):
        if m.weight_codebook.numel() == 0:  # every weight pruned
            m.weight.zero_()
            continue
        idx = m.weight_index.reshape(-1).long()
        keep = m.weight_mask.reshape(-1)
        flat = m.weight.reshape(-1)
        k = m.weight_codebook.numel()
        s = torch.zeros(k, dtype=torch.float64, device=flat.device).index_add_(0, idx[keep], flat[keep].double())
        n = torch.zeros(k, dtype=torch.float64, device=flat.device).index_add_(
            0, idx[keep], torch.ones_like(flat[keep], dtype=torch.float64))
        cb = torch.where(n > 0, s / n.clamp_min(1), m.weight_codebook.double()).float()
        m.weight_codebook.copy_(cb)
        # reshape() may copy (channels_last weights), so write back through copy_ on the weight
        new = torch.where(keep, cb[idx].to(flat.dtype), torch.zeros_like(flat))
        m.weight.copy_(new.reshape(m.weight.shape))


def attach_shared_state_(model: nn.Module, state_dict: dict) -> None:
    """Register codebook / index / mask buffers present in ``state_dict`` before loading it."""
    for name, m in prunable_layers(model).items():
        for buf in CODING_BUFFERS:
            key = coded_key(name, buf, is_tensor_layer(m))
            if key in state_dict:
                _set_buffer(m, buf, state_dict[key].clone())
