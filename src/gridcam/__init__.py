"""gridcam: classifiers with consistent Grad-CAM explanations, and metrics that score explanations.

Public modules (import them explicitly, e.g. ``from gridcam import models, cam, grid, metrics``):
:mod:`gridcam.models`, :mod:`gridcam.cam`, :mod:`gridcam.grid`, :mod:`gridcam.metrics`.
"""

__version__ = "0.1.0"

__all__ = ["cam", "grid", "metrics", "models", "__version__"]
