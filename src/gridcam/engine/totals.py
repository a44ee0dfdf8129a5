"""The running totals of one evaluation: integer counts per method, merged exactly across ranks.

Totals are integer counts (:mod:`gridcam.metrics`), so they merge exactly across ranks and across an
interrupted-and-resumed run; the percentages are computed from them only at the end.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gridcam import metrics as M

__all__ = ["METRICS", "Evaluation", "new_totals"]

#: Short metric names (``--metrics``) -> keys in results.json.
METRICS: dict[str, str] = OrderedDict(
    pg="pointing_game", spg="stochastic_pointing_game", ch="content_heatmap")


@dataclass
class Evaluation:
    """Running totals of one evaluation (one rank, or merged).

    loc: method -> :class:`gridcam.metrics.LocalizationCounts`; cls: top-k or multi-label counts;
    images: images processed (decoded and scored); skipped_images: {reason: images the dataset
    could not give (missing annotation, unreadable file)}; data_skipped: {reason: pairs the data
    layer left out}.
    """

    loc: dict[str, M.LocalizationCounts]
    cls: M.TopKCounts | M.MultiLabelCounts
    images: int = 0
    skipped_images: dict[str, int] = field(default_factory=dict)
    data_skipped: dict[str, int] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return {"loc": {m: c.state() for m, c in self.loc.items()},
                "cls": self.cls.state(), "multilabel": isinstance(self.cls, M.MultiLabelCounts),
                "images": self.images, "skipped_images": dict(self.skipped_images),
                "data_skipped": dict(self.data_skipped)}

    def merge_state(self, s: Mapping[str, Any]) -> None:
        for m, cs in s["loc"].items():
            self.loc[m].merge(M.LocalizationCounts.from_state(cs))
        other = (M.MultiLabelCounts if s["multilabel"] else M.TopKCounts).from_state(s["cls"])
        self.cls.merge(other)  # type: ignore[arg-type]
        self.images += s["images"]
        for k, v in s["skipped_images"].items():
            self.skipped_images[k] = self.skipped_images.get(k, 0) + v
        for k, v in s["data_skipped"].items():
            self.data_skipped[k] = self.data_skipped.get(k, 0) + v

    def skip_image(self, reason: str) -> None:
        """An image the dataset could not give (unreadable file, missing annotation)."""
        self.skipped_images[reason] = self.skipped_images.get(reason, 0) + 1

    def skip_pairs(self, reason: str, n: int = 1) -> None:
        """Pairs the data layer left out: counted once globally and as skipped for every method."""
        self.data_skipped[reason] = self.data_skipped.get(reason, 0) + n
        for c in self.loc.values():
            c.skip(reason, n)

    def results(self, metrics: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, c in self.loc.items():
            r = c.result()
            out[m] = {METRICS[k]: r[METRICS[k]] for k in METRICS if k in metrics}
            out[m].update(evaluated=r["evaluated"], skipped=r["skipped"],
                          skipped_reasons=r["skipped_reasons"])
        return out


def new_totals(methods: Sequence[str], num_classes: int, samples: int,
               multilabel: bool) -> Evaluation:
    """Empty totals: localisation counts per method; top-1/top-5 or multi-label P/R/F1 counts."""
    return Evaluation(
        loc={m: M.LocalizationCounts(num_classes=num_classes, samples=samples) for m in methods},
        cls=M.MultiLabelCounts(num_classes) if multilabel else M.TopKCounts((1, 5)))
