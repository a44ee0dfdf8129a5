"""The training job (``gridcam train``, :func:`gridcam.train`): the paper's loop with the Grad-CAM
consistency loss, single- and multi-label, GMP, exact resume, DDP under ``torchrun``.

Flow: :class:`~gridcam.training.config.TrainConfig` → :func:`~gridcam.training.setup.set_up`
builds a :class:`~gridcam.training.run.Run` (data from :mod:`~gridcam.training.data`, resumed
state from :mod:`~gridcam.training.resume`) → :func:`~gridcam.training.loop.train` runs epochs
(:mod:`~gridcam.training.epoch`), each batch one step (:mod:`~gridcam.training.steps`: CE/BCE +
λ·L_gc), validates (:mod:`~gridcam.training.validation`) and logs (:mod:`~gridcam.training.log`).

Uses :mod:`gridcam.models`, :mod:`gridcam.cam`, :mod:`gridcam.grid`, :mod:`gridcam.metrics`,
:mod:`gridcam.data` and :mod:`gridcam.runtime`; never the evaluation, the study or the CLI.
"""
