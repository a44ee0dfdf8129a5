"""Loops that run jobs: training, evaluation, the demo; distributed set-up and checkpoint files."""
