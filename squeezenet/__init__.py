"""SqueezeNet and Deep Compression: models, the published compressed weights, compression,
training, evaluation and export."""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
