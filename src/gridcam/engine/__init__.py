"""Old module paths, kept for outside code written against gridcam 0.1's flat ``gridcam.engine``.

The jobs now live in one package each (``docs/architecture.md``): :mod:`gridcam.training`,
:mod:`gridcam.evaluation`, :mod:`gridcam.study`, over :mod:`gridcam.runtime`. Only the modules the
README of 0.1 told users to import are aliased here (``from gridcam.engine.train import
TrainingInterrupted`` still works); new code imports the new paths.
"""

from __future__ import annotations

import importlib
import sys

#: old ``gridcam.engine.<name>`` -> the module that holds it now
MOVED = {
    "train": "gridcam.training.loop",
    "train_config": "gridcam.training.config",
    "evaluate": "gridcam.evaluation.loop",
    "eval_data": "gridcam.evaluation.data",
    "forward": "gridcam.evaluation.forward",
    "tables": "gridcam.evaluation.tables",
    "study": "gridcam.study.runner",
}

for _old, _new in MOVED.items():
    _module = importlib.import_module(_new)
    sys.modules[f"{__name__}.{_old}"] = _module
    globals()[_old] = _module
