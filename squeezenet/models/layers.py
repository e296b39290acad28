"""Which modules carry the weights that Deep Compression codes."""
from __future__ import annotations

import torch.nn as nn

# Convolutions (grouped and depthwise included: their weights are ordinary tensors) and linear
# layers. Everything else (batch norm, embeddings, biases of other modules) is stored exactly.
CODED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Convolution and linear layers in definition order, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, CODED_TYPES)}
