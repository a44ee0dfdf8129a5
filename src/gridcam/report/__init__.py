"""Looking at explanations: heatmap overlays, explain sheets, training curves and the report page.

``gridcam explain`` is :mod:`gridcam.report.explain`; ``gridcam report`` is
:mod:`gridcam.report.run_report`; :func:`results_table` and :func:`sentence` take :class:`Row`
objects from any producer (a run's results.json, a study's means and 95 % intervals).
"""

from gridcam.report.overlay import colorize, overlay, save_overlay_grid
from gridcam.report.page import write_report
from gridcam.report.summary import Row, results_table, sentence

__all__ = ["Row", "colorize", "overlay", "results_table", "save_overlay_grid", "sentence", "write_report"]
