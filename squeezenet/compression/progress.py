"""Named stages of a long compression, each with a progress bar on stderr.

    with showing(True):                        # compress_ does this (progress=None: stderr is a terminal)
        with stage("sensitivities", total=16):
            for batch in batches:
                ...
                tick()                         # advances the innermost stage, if bars are shown

Code deep in a stage calls ``tick()`` without being handed anything; where no bars are shown
(``showing(False)``, the default), ``stage`` and ``tick`` cost nothing.
"""
from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

_SHOWN = contextvars.ContextVar("squeezenet_progress_shown", default=False)
_BAR = contextvars.ContextVar("squeezenet_progress_bar", default=None)


def wanted(requested: bool | None, stream=None) -> bool:
    """Whether to show bars: as ``requested``, else (None) where ``stream`` (stderr) is a terminal."""
    if requested is not None:
        return bool(requested)
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def showing(enabled: bool) -> Iterator[None]:
    """Within this block, ``stage`` draws bars on stderr when ``enabled``."""
    token = _SHOWN.set(bool(enabled))
    try:
        yield
    finally:
        _SHOWN.reset(token)


@contextmanager
def stage(name: str, total: int | None = None, unit: str = "step") -> Iterator[Callable[[int], None]]:
    """A named stage: a bar of ``total`` steps (a counter of ``unit``, plural, where ``total`` is None) while bars are
    shown; yields its ``advance(n=1)``, which ``tick()`` calls too."""
    if not _SHOWN.get():
        yield _nothing
        return
    bar = tqdm(total=total, desc=name, unit=unit, file=sys.stderr, leave=True, dynamic_ncols=True,
               bar_format=None if total else "{desc}: {n_fmt} {unit} [{elapsed}]")
    token = _BAR.set(bar)
    try:
        yield bar.update
    finally:
        _BAR.reset(token)
        bar.close()


def tick(n: int = 1) -> None:
    """Advance the innermost stage by ``n`` steps (nothing where no bar is shown)."""
    bar = _BAR.get()
    if bar is not None:
        bar.update(n)


def around_bars(log: Callable[..., None]) -> Callable[..., None]:
    """``log`` that clears the bars while it prints, so messages and bars do not mix on a terminal."""
    def write(*args, **kwargs):
        if not _SHOWN.get():
            return log(*args, **kwargs)
        with tqdm.external_write_mode(file=sys.stderr):
            return log(*args, **kwargs)
    return write


def _nothing(_n: int = 1) -> None:
    pass
