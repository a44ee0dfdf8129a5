"""The evaluation job (``gridcam evaluate``, :func:`gridcam.evaluate`): one pass over ImageNet- or
COCO-style validation data scoring every explanation method with the pointing game, the
stochastic pointing game and the content heatmap (plus top-k accuracy or F1).

Flow: :class:`~gridcam.evaluation.loop.EvalConfig` → :func:`~gridcam.evaluation.loop.evaluate`
plans batches and loads them on threads (:mod:`~gridcam.evaluation.pipeline`, datasets from
:mod:`~gridcam.evaluation.data`), explains each group of images (:mod:`~gridcam.evaluation.forward`),
scores the pairs (:mod:`~gridcam.evaluation.scoring`, totals in :mod:`~gridcam.evaluation.totals`),
writes and resumes per-image records (:mod:`~gridcam.evaluation.records`) and prints the paper's
table (:mod:`~gridcam.evaluation.tables`).

Uses :mod:`gridcam.models`, :mod:`gridcam.cam`, :mod:`gridcam.metrics`, :mod:`gridcam.data` and
:mod:`gridcam.runtime`; never the training, the study or the CLI.
"""
