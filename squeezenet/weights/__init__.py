"""All file I/O of weights: what the tool reads and writes, detected by content.

- ``loading``: ``LoadedWeights`` (a state dict with its architecture, preprocessing and class
  names) and ``load_weights`` for any file below; our checkpoints (``save_checkpoint``).
- ``sqz``: the container of our compressed format (``.sqz``), versions 1-4; ``codecs`` its layer
  codings by name (``range`` over ``entropy``, ``huffman`` over ``huffman``), ``positions`` the
  relative position coding the Huffman layers share with ``caffe_net``.
- ``caffe_net``: the published Deep Compression ``.net`` file.
- ``pretrained``: published weights as torchvision-style enums (``SqueezeNet1_0_Weights``).
"""
from .loading import LoadedWeights, load_weights, save_checkpoint, save_safetensors, save_state_dict
from .pretrained import PretrainedWeights, SqueezeNet1_0_Weights, SqueezeNet1_1_Weights
from .sqz import decode, encode, load_compressed, save_compressed, size_report

__all__ = ["PretrainedWeights", "SqueezeNet1_0_Weights", "SqueezeNet1_1_Weights", "LoadedWeights", "load_weights",
           "load_compressed", "save_compressed", "encode", "decode", "size_report", "save_checkpoint",
           "save_safetensors", "save_state_dict"]
