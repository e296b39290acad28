"""The SqueezeNet model family and AlexNet, registered by name."""
from .alexnet import AlexNet, alexnet
from .layers import prunable_layers
from .registry import (UnknownModelError, create_model, get_builder, is_registered, list_models, pretrained_tags,
                       register_model)
from .squeezenet import (Fire, SqueezeNet, SqueezeNetConfig, fire_layout_from_metaparameters, squeezenet1_0,
                         squeezenet1_0_complex_bypass, squeezenet1_0_simple_bypass, squeezenet1_1,
                         squeezenet_from_metaparameters)

__all__ = ["UnknownModelError", "create_model", "get_builder", "is_registered", "list_models", "pretrained_tags",
           "register_model",
           "prunable_layers",
           "Fire", "SqueezeNet", "SqueezeNetConfig", "fire_layout_from_metaparameters",
           "squeezenet1_0", "squeezenet1_1", "squeezenet1_0_simple_bypass",
           "squeezenet1_0_complex_bypass", "squeezenet_from_metaparameters", "AlexNet", "alexnet"]
