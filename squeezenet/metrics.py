"""Accuracy arithmetic shared by evaluation and training: one top-k."""
from __future__ import annotations

import torch


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have their label among the ``k`` highest logits, for each ``k``.

    ``k`` is capped at the number of classes (top-5 of a 3-class model is top-3). Ties resolve
    as ``torch.topk`` does.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return [int(hit[:, :k].any(dim=1).sum()) for k in ks]
