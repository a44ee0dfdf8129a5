"""An exact, mergeable mean of per-pair scores (deletion, insertion, Focus, randomisation).

Each value ``v`` is added as the integer ``int(v * 2**64)`` (Python ints never overflow): integer
sums do not depend on the order of addition, so ranks and resumed runs merge to bit-identical
totals, as the content heatmap's (:class:`gridcam.metrics.LocalizationCounts`). A value read back
from a per-image record (JSON keeps a float exactly) adds exactly what the computed one did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["SCALE", "ExactMean"]

#: Fixed-point scale: resolution 5e-20 per value, far below anything reported.
SCALE = 2**64


@dataclass
class ExactMean:
    """Running sum and count of scores, with the pairs skipped by reason (reason code -> pairs)."""

    fixed: int = 0
    pairs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, values: Iterable[float]) -> None:
        """Add finite float values (e.g. ``tensor.tolist()``)."""
        for v in values:
            self.fixed += int(float(v) * SCALE)
            self.pairs += 1

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + int(n)

    def merge(self, other: "ExactMean") -> "ExactMean":
        """Add ``other`` into this one (in place, also returned)."""
        self.fixed += other.fixed
        self.pairs += other.pairs
        for k, v in other.skipped.items():
            self.skip(k, v)
        return self

    def mean(self) -> float | None:
        """The mean of the values added (None when there is none)."""
        return self.fixed / (self.pairs * SCALE) if self.pairs else None

    def state(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "pairs": self.pairs, "skipped": dict(self.skipped)}

    @classmethod
    def from_state(cls, s: Mapping[str, Any]) -> "ExactMean":
        return cls(int(s["fixed"]), int(s["pairs"]), dict(s["skipped"]))
