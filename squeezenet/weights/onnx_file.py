"""ONNX files as weights for ``eval`` and ``predict``: run by ONNX Runtime (or OpenVINO), with the
preprocessing, class names and model name our exports store in the file's metadata."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import FormatError
from ..preprocessing import TORCHVISION_IMAGENET, Preprocessing
from .loaded import LoadedWeights

ONNX_KIND = "onnx"


def looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto starts with its ``ir_version`` field (tag 0x08, a small varint)."""
    return len(head) >= 2 and head[0] == 0x08 and 3 <= head[1] <= 16


def load_onnx(path: str | Path) -> LoadedWeights | None:
    """``LoadedWeights`` for an ONNX model (no state dict: the file runs as it is), or None when
    the bytes do not parse as one."""
    import onnx
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  protobuf raises its own DecodeError on other content
        return None
    if not proto.graph.node or not proto.opset_import:
        return None
    meta = {p.key: p.value for p in proto.metadata_props}
    try:
        prep = (Preprocessing.from_dict(json.loads(meta["squeezenet.preprocessing"]))
                if "squeezenet.preprocessing" in meta else TORCHVISION_IMAGENET)
        names = json.loads(meta["squeezenet.class_names"]) if "squeezenet.class_names" in meta else None
        kwargs = json.loads(meta.get("squeezenet.model_kwargs", "{}"))
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"{path}: ONNX metadata of this tool that does not parse ({e})") from None
    num_classes = int(meta.get("squeezenet.num_classes", 0)) or _output_width(proto) or len(names or []) or 1000
    return LoadedWeights(model_name=meta.get("squeezenet.model", ""), state_dict={}, preprocessing=prep,
                         num_classes=num_classes, model_kwargs=kwargs, class_names=names, kind=ONNX_KIND,
                         path=str(path), extra={"compressed_weights": "squeezenet.compressed_weights" in meta})


def _output_width(proto) -> int | None:
    dims = proto.graph.output[0].type.tensor_type.shape.dim if proto.graph.output else []
    return int(dims[-1].dim_value) if dims and dims[-1].dim_value > 0 else None
