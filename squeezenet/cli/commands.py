"""Subcommands beyond list/summary, registered on the main parser."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add the remaining subcommands to ``sub``."""
