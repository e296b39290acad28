"""SqueezeNet and Deep Compression: models, the published compressed weights, compression,
training, evaluation and export."""
from .models import create_model, list_models
from .weights import pretrained as _pretrained

_pretrained.register()  # the builders' weights= values; models itself never imports the file layer

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
