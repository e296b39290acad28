"""All file I/O of weights: what the tool reads and writes, detected by content.

- ``loading``: ``LoadedWeights`` (a state dict with its architecture, preprocessing and class
  names) and ``load_weights`` for any file below; our checkpoints (``save_checkpoint``).
- ``sqz``: the container of our compressed format (``.sqz``), versions 1-5; its torch-free half,
  shared with ``squeezenet.reader``, is ``container``; ``codecs`` its layer codings by name
  (``range`` over ``entropy``, ``huffman`` over ``huffman``), ``positions`` the
  relative position coding the Huffman layers share with ``caffe_net``.
- ``caffe_net``: the published Deep Compression ``.net`` file.
- ``pretrained``: published weights as torchvision-style enums (``SqueezeNet1_0_Weights``).
"""
from __future__ import annotations

import importlib

# Imported on first use, so that the torch-free parts (``container``, ``codecs``, ``huffman``,
# ``entropy``) can be imported where torch is not installed (``squeezenet.reader``).
_WHERE = {"LoadedWeights": "loading", "load_weights": "loading", "save_checkpoint": "loading",
          "save_safetensors": "loading", "save_state_dict": "loading", "PretrainedWeights": "pretrained",
          "SqueezeNet1_0_Weights": "pretrained", "SqueezeNet1_1_Weights": "pretrained", "decode": "sqz",
          "encode": "sqz", "load_compressed": "sqz", "save_compressed": "sqz", "size_report": "sqz"}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
