"""Fetch published weights into a local cache, checked against a sha256 pinned here.

The cache is ``$SQUEEZENET_HOME`` (default ``~/.cache/squeezenet``). Offline machines import a
local copy with ``--from``. A download is written to a temporary file and renamed only once
its checksum matches, so the cache never holds a half-written or wrong file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import SqueezeNetError


class DownloadError(SqueezeNetError):
    """A download failed or its checksum did not match."""


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str
    url: str
    sha256: str
    size: int


ASSETS = {
    "squeezenet1_0-deep-compression": Asset(
        name="squeezenet1_0-deep-compression",
        filename="compressed_SqueezeNet.net",
        url="https://github.com/songhan/SqueezeNet-Deep-Compression/raw/master/compressed_SqueezeNet.net",
        sha256="e4ab6960ae8cd81505e1c2136921201507e930966c53deaf15862a395b3a3261",
        size=675_763,
    ),
}
DEFAULT_ASSET = "squeezenet1_0-deep-compression"


def cache_dir() -> Path:
    """``$SQUEEZENET_HOME`` or ``~/.cache/squeezenet``."""
    return Path(os.environ.get("SQUEEZENET_HOME") or Path.home() / ".cache" / "squeezenet")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _install(tmp: Path, dest: Path, asset: Asset, source: str) -> Path:
    digest = _sha256_file(tmp)
    if digest != asset.sha256:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{source}: sha256 {digest} does not match the pinned {asset.sha256}; "
                            f"nothing was stored in {dest.parent}")
    os.replace(tmp, dest)
    return dest


def download(asset_name: str = DEFAULT_ASSET, to: str | os.PathLike | None = None, *,
             url: str | None = None, source: str | os.PathLike | None = None,
             progress: bool | None = None, timeout: float = 60.0) -> Path:
    """Make ``asset_name`` available locally and return its path.

    Args:
        asset_name: a key of ``ASSETS``.
        to: destination folder (default: the cache).
        url: override the public address (mirrors, tests).
        source: import from this local file, or a folder containing the asset's file, instead.
        progress: show a progress bar (default: when stderr is a terminal).
    Raises:
        DownloadError: network failure or checksum mismatch; the destination is left untouched.
    """
    if asset_name not in ASSETS:
        raise DownloadError(f"unknown asset {asset_name!r}; known: {', '.join(ASSETS)}")
    asset = ASSETS[asset_name]
    folder = Path(to) if to else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{folder}: cannot create the destination folder ({e.strerror})") from None
    dest = folder / asset.filename
    if dest.is_file() and _sha256_file(dest) == asset.sha256:
        return dest
    fd, tmp_name = tempfile.mkstemp(prefix=f".{asset.filename}.", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        if source is not None:
            src = Path(source)
            if src.is_dir():
                found = sorted(src.rglob(asset.filename))
                if not found:
                    raise DownloadError(f"{src}: no {asset.filename} in this folder")
                src = found[0]
            if not src.is_file():
                raise DownloadError(f"{src}: no such file")
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                shutil.copyfileobj(inp, out)
            return _install(tmp, dest, asset, str(src))
        address = url or asset.url
        from tqdm import tqdm
        try:
            with urllib.request.urlopen(address, timeout=timeout) as resp, os.fdopen(fd, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                if total and total > 100 * asset.size:
                    raise DownloadError(f"{address}: server announces {total} bytes; expected {asset.size}")
                show = sys.stderr.isatty() if progress is None else progress
                with tqdm(total=total, unit="B", unit_scale=True, desc=asset.filename, disable=not show) as bar:
                    received = 0
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        received += len(chunk)
                        if received > 100 * asset.size:
                            raise DownloadError(f"{address}: more than {100 * asset.size} bytes; aborted")
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise DownloadError(f"{address}: download failed ({getattr(e, 'reason', e)}); on an offline "
                                f"machine import a local copy (source=FILE_OR_DIR, "
                                f"`squeezenet download --from`)") from None
        return _install(tmp, dest, asset, address)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
        tmp.unlink(missing_ok=True)
