"""gridcam: classifiers with consistent Grad-CAM explanations, and metrics that score explanations.

Public modules (import them explicitly, e.g. ``from gridcam import models, cam, grid, metrics``):
:mod:`gridcam.models`, :mod:`gridcam.cam`, :mod:`gridcam.grid`, :mod:`gridcam.metrics`.

The engine's entry points are importable from here and loaded on first use (``import gridcam``
stays light): ``gridcam.evaluate(model, dataset, gridcam.EvalConfig(...))``,
``gridcam.train(gridcam.TrainConfig(...))``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Top-level name -> "module:attribute", imported on first access (module ``__getattr__``).
_LAZY: dict[str, str] = {
    "evaluate": "gridcam.evaluation.loop:evaluate",
    "EvalConfig": "gridcam.evaluation.loop:EvalConfig",
    "train": "gridcam.training.loop:train",
    "TrainConfig": "gridcam.training.config:TrainConfig",
}

__all__ = ["cam", "grid", "metrics", "models", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'gridcam' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
