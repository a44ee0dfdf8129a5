"""The running totals of one evaluation: integer counts per method, merged exactly across ranks.

Totals are integer counts (:mod:`gridcam.metrics`), so they merge exactly across ranks and across an
interrupted-and-resumed run; the percentages are computed from them only at the end. The data
problems met (:mod:`gridcam.problems`) are tallied by reason code with a few examples each, chosen
by sort order so that they too do not depend on ranks or resumption.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from gridcam import metrics as M
from gridcam.problems import REASONS, Problem

__all__ = ["ALL_METRICS", "BEYOND", "EXAMPLES", "METRICS", "PERCENT", "Evaluation", "new_totals"]

#: Examples kept per reason code in ``results.json``'s ``"problems"`` (the first by file, place).
EXAMPLES = 3

#: Short metric names (``--metrics``) -> keys in results.json: localisation.
METRICS: dict[str, str] = OrderedDict(
    pg="pointing_game", spg="stochastic_pointing_game", ch="content_heatmap")
#: ... and beyond localisation (:mod:`gridcam.evaluation.beyond`); also the per-pair record keys.
BEYOND: dict[str, str] = OrderedDict(
    deletion="deletion_auc", insertion="insertion_auc", focus="focus",
    randomisation="randomisation_rank_correlation")
#: Every ``--metrics`` name.
ALL_METRICS: dict[str, str] = OrderedDict(**METRICS, **BEYOND)
#: Beyond-localisation metrics reported in percent (the others: randomisation's rho in [-1, 1]).
PERCENT = frozenset({"deletion", "insertion", "focus"})


@dataclass
class Evaluation:
    """Running totals of one evaluation (one rank, or merged).

    loc: method -> :class:`gridcam.metrics.LocalizationCounts`; cls: top-k or multi-label counts;
    images: images processed (decoded and scored); skipped_images: {reason code: images the
    dataset could not give (``xml_missing``, ``truncated``, ...)}; data_skipped: {reason code:
    pairs the data layer left out}; problems: {reason code: {"count": n, "examples": [up to
    :data:`EXAMPLES` ``Problem.record()`` dicts]}} for every data problem met (skipped images and
    pairs, and the ones worked around, e.g. ``exif_rotated``); more: method -> {beyond-localisation
    metric (:data:`BEYOND`) -> :class:`gridcam.metrics.ExactMean` of its per-pair scores}.
    """

    loc: dict[str, M.LocalizationCounts]
    cls: M.TopKCounts | M.MultiLabelCounts
    images: int = 0
    skipped_images: dict[str, int] = field(default_factory=dict)
    data_skipped: dict[str, int] = field(default_factory=dict)
    problems: dict[str, dict[str, Any]] = field(default_factory=dict)
    more: dict[str, dict[str, M.ExactMean]] = field(default_factory=dict)

    def state(self) -> dict[str, Any]:
        return {"loc": {m: c.state() for m, c in self.loc.items()},
                "more": {m: {k: c.state() for k, c in d.items()} for m, d in self.more.items()},
                "cls": self.cls.state(), "multilabel": isinstance(self.cls, M.MultiLabelCounts),
                "images": self.images, "skipped_images": dict(self.skipped_images),
                "data_skipped": dict(self.data_skipped),
                "problems": {k: {"count": v["count"], "examples": list(v["examples"])}
                             for k, v in self.problems.items()}}

    def merge_state(self, s: Mapping[str, Any]) -> None:
        for m, cs in s["loc"].items():
            self.loc[m].merge(M.LocalizationCounts.from_state(cs))
        for m, d in s.get("more", {}).items():
            for k, cs in d.items():
                self.more[m][k].merge(M.ExactMean.from_state(cs))
        other = (M.MultiLabelCounts if s["multilabel"] else M.TopKCounts).from_state(s["cls"])
        self.cls.merge(other)  # type: ignore[arg-type]
        self.images += s["images"]
        for k, v in s["skipped_images"].items():
            self.skipped_images[k] = self.skipped_images.get(k, 0) + v
        for k, v in s["data_skipped"].items():
            self.data_skipped[k] = self.data_skipped.get(k, 0) + v
        for code, v in s.get("problems", {}).items():
            self._tally(code, int(v["count"]), v["examples"])

    def _tally(self, code: str, count: int, examples: list[dict[str, str]]) -> None:
        entry = self.problems.setdefault(code, {"count": 0, "examples": []})
        entry["count"] += count
        merged = {_order(e): e for e in [*entry["examples"], *examples]}
        entry["examples"] = [merged[k] for k in sorted(merged)][:EXAMPLES]

    def note_problem(self, problem: Problem, count: int = 1) -> None:
        """Tally a data problem (``count`` occurrences told as one) under its reason code."""
        self._tally(problem.code, count, [problem.record()])

    def skip_image(self, problem: Problem) -> None:
        """An image the dataset could not give (unreadable file, missing annotation, ...)."""
        self.skipped_images[problem.code] = self.skipped_images.get(problem.code, 0) + 1
        self.note_problem(problem)

    def skip_pairs(self, problem: Problem, n: int = 1) -> None:
        """Pairs the data layer left out: counted once globally and as skipped for every method,
        by the problem's reason code."""
        self.data_skipped[problem.code] = self.data_skipped.get(problem.code, 0) + n
        for c in self.loc.values():
            c.skip(problem.code, n)
        self.note_problem(problem, n)

    def add_beyond(self, method: str, fields: Mapping[str, Any]) -> None:
        """Fold one scored pair's beyond-localisation fields (a per-image record, or the fields
        that will become one): ``<metric>: value`` adds it, ``<metric>_skipped: code`` counts it."""
        for short, counts in self.more.get(method, {}).items():
            if short in fields:
                counts.add([fields[short]])
            elif f"{short}_skipped" in fields:
                counts.skip(fields[f"{short}_skipped"])

    def problem_table(self) -> dict[str, dict[str, Any]]:
        """``{code: {"count", "meaning" (gridcam.problems.REASONS), "examples"}}`` sorted by code:
        the ``"problems"`` of results.json."""
        return {code: {"count": v["count"], "meaning": REASONS.get(code, ""),
                       "examples": list(v["examples"])}
                for code, v in sorted(self.problems.items())}

    def results(self, metrics: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m, c in self.loc.items():
            r = c.result()
            out[m] = {METRICS[k]: r[METRICS[k]] for k in METRICS if k in metrics}
            more = self.more.get(m, {})
            for k, c in more.items():
                v = c.mean()
                out[m][BEYOND[k]] = None if v is None else (100.0 * v if k in PERCENT else v)
            out[m].update(evaluated=r["evaluated"], skipped=r["skipped"],
                          skipped_reasons=r["skipped_reasons"])
            if more:
                out[m]["scored_pairs"] = {k: c.pairs for k, c in more.items()}
                skips = {k: dict(sorted(c.skipped.items())) for k, c in more.items() if c.skipped}
                if skips:
                    out[m]["metric_skipped_reasons"] = skips
        return out


def _order(example: Mapping[str, str]) -> tuple[str, str, str]:
    return (example.get("file", ""), example.get("where", ""), example.get("cause", ""))


def new_totals(methods: Sequence[str], num_classes: int, samples: int,
               multilabel: bool, metrics: Sequence[str] = ()) -> Evaluation:
    """Empty totals: localisation counts per method; top-1/top-5 or multi-label P/R/F1 counts;
    an exact mean per method for each beyond-localisation metric among ``metrics``."""
    beyond = [k for k in BEYOND if k in metrics]
    return Evaluation(
        loc={m: M.LocalizationCounts(num_classes=num_classes, samples=samples) for m in methods},
        cls=M.MultiLabelCounts(num_classes) if multilabel else M.TopKCounts((1, 5)),
        more={m: {k: M.ExactMean() for k in beyond} for m in methods} if beyond else {})
