"""Metrics: localisation of explanations (PG, SPG, CH) and classification (top-k, multi-label F1).

Single pairs (DESIGN.md public API)::

    from gridcam import metrics
    metrics.pointing_game_hit(heatmap, mask, tolerance=15)              # -> bool
    metrics.stochastic_pointing_game(heatmap, mask, samples=100)        # -> fraction in [0,1]
    metrics.content_heatmap(heatmap, mask)                              # -> fraction in [0,1]

``heatmap`` (H,W) non-negative at the mask's resolution (normalised or not); ``mask`` (H,W) bool.
An all-zero heatmap raises :class:`EmptyHeatmapError` (the evaluator skips and counts such pairs).
The batched forms (:func:`score_pairs`, :func:`hit_points`, :func:`hit_region`) and the exact,
mergeable accumulators (:class:`LocalizationCounts`, :class:`TopKCounts`,
:class:`MultiLabelCounts`) are what ``gridcam evaluate`` uses. Pure tensor code: no file I/O.
"""

from gridcam.metrics.classification import (
    MultiLabelCounts,
    TopKCounts,
    multilabel_scores,
    topk_correct,
)
from gridcam.metrics.localization import (
    EmptyHeatmapError,
    LocalizationCounts,
    PairScores,
    content_heatmap,
    hit_points,
    hit_region,
    inverse_cdf_sample,
    pointing_game_hit,
    score_pairs,
    stochastic_pointing_game,
)

__all__ = [
    "EmptyHeatmapError",
    "LocalizationCounts",
    "MultiLabelCounts",
    "PairScores",
    "TopKCounts",
    "content_heatmap",
    "hit_points",
    "hit_region",
    "inverse_cdf_sample",
    "multilabel_scores",
    "pointing_game_hit",
    "score_pairs",
    "stochastic_pointing_game",
    "topk_correct",
]
