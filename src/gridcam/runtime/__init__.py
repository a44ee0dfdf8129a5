"""What every job shares, below all of them: checkpoint files and atomic writes
(:mod:`~gridcam.runtime.checkpoint`, :mod:`~gridcam.runtime.files`), the distributed set-up under
``torchrun`` (:mod:`~gridcam.runtime.distributed`), seeds and RNG states for exact resumption
(:mod:`~gridcam.runtime.rng`) and stop signals (:mod:`~gridcam.runtime.stopping`).

Uses only :mod:`gridcam.models` (reading weights safely) and :mod:`gridcam.errors`; knows nothing
of training, evaluation or the command line.
"""
