"""Load any weights file the tool understands, detected by content, never by extension.

Kinds: the published Deep Compression ``.net`` file, our checkpoints (``torch.save`` zip of
plain tensors and metadata, read with ``weights_only=True``), bare state dicts (torch files or
``.safetensors``), our compressed format (``squeezenet.weights.sqz``) and ONNX models (run as
they are by ``eval`` and ``predict``; ``onnx_file``). Each carries its preprocessing.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from ..errors import FormatError
from ..models.layers import state_aliases
from ..preprocessing import CAFFE_IMAGENET, TORCHVISION_IMAGENET, Preprocessing
from ..utils import atomic_write_bytes
from .caffe_net import layers_to_state_dict, parse_caffe_net
from .loaded import LoadedWeights
from .onnx_file import load_onnx, looks_like_onnx
from .sqz import MAGIC, load_compressed

CHECKPOINT_FORMAT = "squeezenet-checkpoint"
MAX_CHECKPOINT_BYTES = 2 * 2**30


def save_checkpoint(path: str | os.PathLike, model_name: str, state_dict: dict, *,
                    preprocessing: Preprocessing, num_classes: int, model_kwargs: dict | None = None,
                    class_names: list | None = None, **extra) -> None:
    """Write our checkpoint atomically (temporary file, fsync, rename). Pickle-free to read."""
    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "model": model_name,
               "model_kwargs": dict(model_kwargs or {}), "num_classes": int(num_classes),
               "preprocessing": preprocessing.to_dict(), "class_names": list(class_names) if class_names else None,
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    payload.update(extra)
    _save_atomically(path, payload)


def save_safetensors(path: str | os.PathLike, state_dict: dict) -> None:
    """Write a plain state dict as ``.safetensors`` (the ``safetensors`` package), atomically.

    safetensors holds no tensor twice: a tensor under several names (a tied embedding) is written
    under each as a copy, so every key of the state dict is there for a strict load."""
    aliases = state_aliases(state_dict)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(path, save({k: v.clone() if k in aliases else v for k, v in tensors.items()}))


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: a little-endian u64 header length, then that many bytes of JSON."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _load_safetensors(path: Path) -> LoadedWeights:
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FormatError(f"{path}: a damaged safetensors file: {e}") from None
    return _bare_state_dict(sd, path)


def _bare_state_dict(sd: dict, path: Path) -> LoadedWeights:
    """A state dict without metadata: torchvision's squeezenets are recognised; any other model's
    is compressible as it is, and building it needs its architecture."""
    arch = _infer_torchvision_arch(sd)
    if arch:
        return LoadedWeights(model_name=arch[0], state_dict=sd, preprocessing=TORCHVISION_IMAGENET,
                             num_classes=arch[1], kind="torchvision-state-dict", path=str(path))
    return LoadedWeights(model_name="", state_dict=sd, preprocessing=TORCHVISION_IMAGENET,
                         num_classes=_last_rows(sd), kind="state-dict", path=str(path))


def save_state_dict(path: str | os.PathLike, state_dict: dict) -> None:
    """Write a plain state dict (tensors only) atomically: what ``load_state_dict(torch.load(path,
    weights_only=True), strict=True)`` takes."""
    _save_atomically(path, {k: v.detach().cpu() for k, v in state_dict.items()})


def _save_atomically(path: str | os.PathLike, obj: dict) -> None:

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _infer_torchvision_arch(sd: dict) -> tuple[str, int] | None:
    w0 = sd.get("features.0.weight")
    final = sd.get("classifier.1.weight")
    if not isinstance(w0, torch.Tensor) or not isinstance(final, torch.Tensor):
        return None
    if tuple(w0.shape) == (96, 3, 7, 7):
        return "squeezenet1_0", int(final.shape[0])
    if tuple(w0.shape) == (64, 3, 3, 3):
        return "squeezenet1_1", int(final.shape[0])
    return None


def _load_torch_file(path: Path) -> LoadedWeights:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad zips and refused globals
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FormatError(f"{path}: cannot read as a checkpoint (only plain tensors and metadata "
                          f"are accepted, nothing is unpickled): {first}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: a checkpoint must hold a dict, found {type(obj).__name__}")
    if obj.get("format") == CHECKPOINT_FORMAT:
        sd = obj.get("state_dict")
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise FormatError(f"{path}: checkpoint has no valid state_dict")
        try:
            prep = Preprocessing.from_dict(obj["preprocessing"])
            return LoadedWeights(model_name=str(obj["model"]), state_dict=sd, preprocessing=prep,
                                 num_classes=int(obj["num_classes"]), model_kwargs=dict(obj.get("model_kwargs") or {}),
                                 class_names=obj.get("class_names"), kind="checkpoint", path=str(path),
                                 extra={k: v for k, v in obj.items() if k not in ("state_dict",)})
        except (KeyError, TypeError, ValueError) as e:
            raise FormatError(f"{path}: checkpoint metadata is incomplete or invalid: {e}") from None
    # A bare state dict, e.g. torchvision's published squeezenet weights.
    sd = obj.get("state_dict", obj) if isinstance(obj.get("state_dict", None), dict) else obj
    if sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
        return _bare_state_dict(sd, path)
    raise FormatError(f"{path}: a torch file, but not a state dict (a dict of tensors) nor our checkpoint")


def _last_rows(sd: dict) -> int:
    """Output rows of the last matrix-like weight: the class count of most classifiers."""
    for k in reversed(list(sd)):
        if k.endswith("weight") and sd[k].dim() >= 2:
            return int(sd[k].shape[0])
    return 0


def _is_zip(path: Path) -> bool:
    try:
        return zipfile.is_zipfile(path)
    except Exception:  # is_zipfile itself raises BadZipFile on some damaged archives
        return False


def load_weights(path: str | os.PathLike) -> LoadedWeights:
    """Load weights from ``path``, whatever kind of file it is.

    Raises:
        FileNotFoundError: no such file.
        FormatError: the content is not a weights file we understand, or is damaged.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder; give a weights file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise FormatError(f"{path}: {size} bytes is larger than any weights file this tool reads")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(b"PK\x03\x04"):  # checked first: a checkpoint needs PyTorch alone, not bitarray
        if not _is_zip(path):
            raise FormatError(f"{path}: a damaged zip archive, not a readable checkpoint")
        return _load_torch_file(path)
    if _is_safetensors(head, size):
        return _load_safetensors(path)
    if head.startswith(MAGIC):
        return load_compressed(path)
    if looks_like_onnx(head) and (onnx_model := load_onnx(path)) is not None:
        return onnx_model
    data = path.read_bytes()
    try:
        layers = parse_caffe_net(data, path)
    except FormatError as e:
        if len(data) >= 104:
            raise FormatError(f"{path}: unrecognised weights file (not our compressed format, not a "
                              f"checkpoint, and as a published .net file: {str(e).split(': ', 2)[-1]})") from None
        raise FormatError(f"{path}: unrecognised weights file ({size} bytes)") from None
    num_classes = layers[-1].shape[0]
    return LoadedWeights(model_name="squeezenet1_0", state_dict=layers_to_state_dict(layers),
                         preprocessing=CAFFE_IMAGENET, num_classes=num_classes, kind="caffe-net", path=str(path))
