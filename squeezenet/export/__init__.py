"""Export to ONNX, TorchScript and torch.export programs; int8 ONNX; inference engines."""
from .exporting import export_weights

__all__ = ["export_weights"]
