"""Defaults shared by the command modules."""

from __future__ import annotations

import argparse
import os

#: More loader processes than cores only adds contention (and a DataLoader warning).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Flags that say how to explain a model that is not built in (shared by train and evaluate)."""
    p.add_argument("--cam-layer", default=None,
                   help="dotted path of the CAM layer (layer4, features.7, stages.3, blocks.11.norm1); "
                        "default: recorded in the checkpoint, else the family's (see `gridcam layers`)")
    p.add_argument("--reshape", default="auto",
                   help="how the CAM layer's output becomes a (B,K,h,w) grid: auto, none, vit, vit:P "
                        "(P leading class/distillation tokens dropped), nhwc")
    p.add_argument("--mean", default=None,
                   help="input normalisation mean, e.g. 0.5,0.5,0.5 (default: the model's own "
                        "configuration, else ImageNet's)")
    p.add_argument("--std", default=None, help="input normalisation std (like --mean)")
