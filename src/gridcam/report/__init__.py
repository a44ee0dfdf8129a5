"""Looking at explanations: heatmap overlays and a small self-contained HTML report page."""

from gridcam.report.overlay import colorize, overlay, save_overlay_grid
from gridcam.report.page import write_report

__all__ = ["colorize", "overlay", "save_overlay_grid", "write_report"]
