"""Defaults shared by the command modules."""

from __future__ import annotations

import os

#: More loader processes than cores only adds contention (and a DataLoader warning).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
