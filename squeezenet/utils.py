"""Small shared helpers without torch: atomic writes, numpy's page size, coded layers' state-dict keys,
the hooks that register published weights."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

# Functions that register published weights with the model registry, run the first time a builder
# is asked for weights. The package's __init__ adds the file layer's, so that the models never
# import the file layer and importing the package imports no torch.
PRETRAINED_PROVIDERS: list = []


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one.

    Temporary file in the same folder, fsync, rename, fsync of the folder.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: output folder does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except PermissionError:
        raise PermissionError(f"{folder}: output folder is not writable") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise OSError(f"{path}: could not write ({e.strerror or e})") from None
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


@contextlib.contextmanager
def numpy_small_pages():
    """Large numpy arrays on ordinary pages while the block runs, as before it afterwards.

    numpy asks the kernel for transparent huge pages for every array over 4 MB; where the
    kernel compacts memory to find them at each first touch (``defrag=madvise``, as on the
    2-core virtual machines we measure on), a 22M-weight model's error-feedback quantization
    pass took 6.5 s instead of 4. A no-op where numpy has no such switch."""
    switch = getattr(getattr(getattr(np, "_core", None), "multiarray", None), "_set_madvise_hugepage", None)
    if switch is None:
        yield
        return
    previous = switch(False)
    try:
        yield
    finally:
        switch(previous)


def coded_key(layer: str, tensor: str, whole: bool = False) -> str:
    """The state-dict key of a coded layer's ``tensor`` ("weight", "bias", "weight_mask", ...).

    A module layer holds them as attributes (``fc.weight``, ``fc.weight_mask``); a tensor layer
    (``whole``) is its parameter (``lstm.weight_ih_l0``, ``lstm.weight_ih_l0_mask``).
    """
    if whole:
        if not tensor.startswith("weight"):
            raise ValueError(f"a tensor layer has no {tensor}")
        return layer + tensor[len("weight"):]
    return f"{layer}.{tensor}" if layer else tensor
