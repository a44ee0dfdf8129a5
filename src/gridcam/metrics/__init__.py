"""Metrics: localisation of explanations (PG, SPG, CH), beyond localisation (deletion, insertion,
Focus, the randomisation test) and classification (top-k, multi-label F1).

Single pairs (DESIGN.md public API)::

    from gridcam import metrics
    metrics.pointing_game_hit(heatmap, mask, tolerance=15)              # -> bool
    metrics.stochastic_pointing_game(heatmap, mask, samples=100)        # -> fraction in [0,1]
    metrics.content_heatmap(heatmap, mask)                              # -> fraction in [0,1]

``heatmap`` (H,W) non-negative at the mask's resolution (normalised or not); ``mask`` (H,W) bool.
An all-zero heatmap raises :class:`EmptyHeatmapError` (the evaluator skips and counts such pairs).
Beyond localisation (docs/metrics.md): :func:`perturbation_curves` and :func:`curve_auc`
(deletion/insertion), :func:`focus`, :func:`spearman`; :class:`ExactMean` accumulates their
per-pair scores exactly. The batched forms (:func:`score_pairs`, :func:`hit_points`, :func:`hit_region`) and the exact,
mergeable accumulators (:class:`LocalizationCounts`, :class:`TopKCounts`,
:class:`MultiLabelCounts`) are what ``gridcam evaluate`` uses. Pure tensor code: no file I/O.
"""

from gridcam.metrics.classification import (
    MultiLabelCounts,
    TopKCounts,
    multilabel_scores,
    topk_correct,
)
from gridcam.metrics.faithfulness import (
    BASELINES,
    Curves,
    baseline_images,
    curve_auc,
    gaussian_blur,
    perturbation_curves,
    pixel_ranks,
    step_pixels,
)
from gridcam.metrics.focus import focus
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
from gridcam.metrics.means import ExactMean
from gridcam.metrics.randomisation import average_ranks, spearman

__all__ = [
    "BASELINES",
    "Curves",
    "EmptyHeatmapError",
    "ExactMean",
    "LocalizationCounts",
    "MultiLabelCounts",
    "PairScores",
    "TopKCounts",
    "average_ranks",
    "baseline_images",
    "content_heatmap",
    "curve_auc",
    "focus",
    "gaussian_blur",
    "hit_points",
    "hit_region",
    "inverse_cdf_sample",
    "multilabel_scores",
    "perturbation_curves",
    "pixel_ranks",
    "pointing_game_hit",
    "score_pairs",
    "spearman",
    "step_pixels",
    "stochastic_pointing_game",
    "topk_correct",
]
