"""``CompressionReport``: what every compression entry point returns and ``--json`` prints."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from ..weights.sqz import parse_header


@dataclass(frozen=True)
class CompressionReport(Mapping):
    """The written file's exact size against the model's fp32 state dict, per coded layer, and
    what the run did (``details``: the stages' figures, the quantizer kept, accuracies ...).

    A read-only mapping too (``report["bytes"]``, ``dict(report)``): the headline fields and
    ``details`` in one namespace, as ``--json`` prints them.
    """
    bytes: int
    fp32_bytes: int
    seconds: float
    layers: list[dict] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """fp32 state-dict bytes over file bytes."""
        return self.fp32_bytes / self.bytes if self.bytes else 0.0

    @classmethod
    def of_file(cls, data: bytes, fp32_bytes: int, seconds: float, **details) -> "CompressionReport":
        """The report of a written file: per-layer rows read from its header (nothing decoded)."""
        header, _ = parse_header(data)
        rows = [{"layer": layer["name"], "weights": math.prod(layer["shape"]), "kept": layer["nnz"],
                 "levels": layer["k"], "coding": layer.get("coding", "huffman"), "bytes": sum(layer["sizes"])}
                for layer in header["layers"]]
        return cls(len(data), fp32_bytes, seconds, rows, details)

    def with_details(self, **details) -> "CompressionReport":
        return replace(self, details={**self.details, **details})

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "fp32_bytes": self.fp32_bytes, "ratio": self.ratio, "seconds": self.seconds,
                **self.details, "layers": self.layers}

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
