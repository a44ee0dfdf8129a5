"""The study (``gridcam study``) and the demo (``gridcam demo``): does the method work?

:mod:`~gridcam.study.config` holds the rows, the recipe and the presets;
:mod:`~gridcam.study.runner` trains the paper's four rows (Baseline, Ours: GC, GMP, Ours: GMP + GC)
over seeds through :mod:`gridcam.training` and scores each through :mod:`gridcam.evaluation`;
:mod:`~gridcam.study.stats` turns the numbers into means, 95 % intervals and paired differences
(:mod:`~gridcam.study.pairs` per image); :mod:`~gridcam.study.tables` reads and prints a finished
``study.json``;
:mod:`~gridcam.study.demo` is the quick preset plus the report page of :mod:`gridcam.report`.

The top job: it may use every layer below it, and nothing but the CLI uses it.
"""
