"""Helpers shared by the command modules: lazy handlers and worker defaults."""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Callable

#: More loader processes than cores only adds contention (and a DataLoader warning).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def lazy(target: str) -> Callable[[argparse.Namespace], int | None]:
    """Return a handler that imports ``module:function`` only when the sub-command runs, so
    ``gridcam --help`` stays fast (torch is imported only by the command that needs it)."""
    module_name, func_name = target.split(":")

    def handler(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module_name), func_name)(args)

    handler.__name__ = func_name
    return handler
