"""What every CLI command shares: the usage error, argument types, the JSON printer."""
from __future__ import annotations

import argparse
import json

from ..errors import SqueezeNetError


class UsageError(SqueezeNetError):
    """Bad command-line values."""


def bounded_int(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type accepting integers in [low, high] with a one-line message otherwise."""
    if high is not None:
        span = f"an integer in {low}..{high}"
    else:
        span = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < low or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"{what} must be {span}, got {text!r}")
        return v
    return parse


_positive_int = bounded_int(1, what="value")


def _print_json(obj) -> None:
    """One JSON object on one line (a report mapping is printed as its dict)."""
    print(json.dumps(obj if isinstance(obj, dict) else dict(obj), separators=(",", ":")))
