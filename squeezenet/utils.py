"""Small shared helpers: atomic writes, numpy's page size."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np


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
