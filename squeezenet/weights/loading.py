"""Load any weights file the tool understands, detected by content, never by extension.

Kinds: the published Deep Compression ``.net`` file, our checkpoints (``torch.save`` zip of
plain tensors and metadata, read with ``weights_only=True``), bare state dicts (torch files or
``.safetensors``), and our compressed format (``squeezenet.weights.sqz``). Each carries its
preprocessing.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import FormatError
from ..preprocessing import CAFFE_IMAGENET, TORCHVISION_IMAGENET, Preprocessing

CHECKPOINT_FORMAT = "squeezenet-checkpoint"
MAX_CHECKPOINT_BYTES = 2 * 2**30


@dataclass
class LoadedWeights:
    """Weights with everything needed to rebuild and feed the model."""
    model_name: str
    state_dict: dict
    preprocessing: Preprocessing
    num_classes: int = 1000
    model_kwargs: dict = field(default_factory=dict)
    class_names: list | None = None
    kind: str = "checkpoint"
    path: str = ""
    extra: dict = field(default_factory=dict)

    def class_names_or_default(self, mapping: str | os.PathLike | None = None) -> list[str]:
        """Class names: the mapping file if given, else those in the weights, else torchvision's
        ImageNet list for 1000 classes, else the indices."""
        if mapping is not None:
            from ..data.imagenet import read_synset_mapping
            return read_synset_mapping(mapping)[1]
        if self.class_names:
            return list(self.class_names)
        if self.num_classes == 1000:
            from torchvision.models import SqueezeNet1_0_Weights
            return list(SqueezeNet1_0_Weights.IMAGENET1K_V1.meta["categories"])
        return [str(i) for i in range(self.num_classes)]

    @property
    def has_architecture(self) -> bool:
        """Whether the file names a model to build (a bare state dict of unknown origin does not)."""
        return bool(self.model_name)

    def with_architecture(self, model_name: str, model_kwargs: dict | None = None) -> "LoadedWeights":
        """These weights for ``model_name`` (a registered name, ``torchvision:NAME`` or
        ``package.module:function``); checked by building it."""
        from ..models import create_model
        kwargs = dict(model_kwargs or {})
        given = kwargs.pop("num_classes", None)
        out = LoadedWeights(model_name, self.state_dict, self.preprocessing, self.num_classes, kwargs,
                            self.class_names, self.kind, self.path, self.extra)
        out.num_classes = given or _num_classes(create_model, model_name, kwargs, self.state_dict) or self.num_classes
        out.build_model()
        return out

    def build_inference_model(self) -> nn.Module:
        """``build_model()`` with batch norm folded into the convolutions (export, inference)."""
        from ..models.fold import fold_batch_norm, has_batch_norm
        model = self.build_model()
        return fold_batch_norm(model) if has_batch_norm(model) else model

    def build_model(self) -> nn.Module:
        """The model in eval mode with these weights loaded."""
        from ..models import create_model
        if not self.model_name:
            raise FormatError(f"{self.path}: a state dict of an unknown architecture; name the model "
                              f"(torchvision:NAME or package.module:function) to build it")
        model = create_model(self.model_name, num_classes=self.num_classes, **self.model_kwargs)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise FormatError(f"{self.path}: weights do not fit {self.model_name}: {first}") from None
        return model.eval()


def _num_classes(create_model, name: str, kwargs: dict, sd: dict) -> int | None:
    """The class count that makes ``name`` fit ``sd``: the output rows of its last coded layer."""
    from ..models.layers import prunable_layers
    with torch.device("meta"):
        try:
            layers = prunable_layers(create_model(name, **kwargs))
        except TypeError:
            return None
    for lname in reversed(list(layers)):
        w = sd.get(f"{lname}.weight" if lname else "weight")
        if isinstance(w, torch.Tensor):
            return int(w.shape[0])
    return None


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
    """Write a plain state dict as ``.safetensors`` (the ``safetensors`` package), atomically."""
    from safetensors.torch import save

    from ..utils import atomic_write_bytes
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}))


def _is_safetensors(head: bytes, size: int) -> bool:
    """A safetensors file: a little-endian u64 header length, then that many bytes of JSON."""
    return len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def _load_safetensors(path: Path) -> LoadedWeights:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
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
    import io

    from ..utils import atomic_write_bytes
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
    from .sqz import MAGIC, load_compressed
    if head.startswith(MAGIC):
        return load_compressed(path)
    from .caffe_net import layers_to_state_dict, parse_caffe_net
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
