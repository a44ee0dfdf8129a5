"""What ``gridcam methods`` shows of each explanation method: the one place it is written.

One :class:`Entry` per method name in :data:`ENTRIES`: its display name, description, cost and
options. The functions that compute the maps live in the torch modules (``gradcam.py``,
``saliency.py``, ``cams.py``, ...); :mod:`gridcam.cam` pairs each entry with its function into a
:class:`~gridcam.cam.registry.Method` record. This module imports neither torch nor numpy nor any
other part of gridcam, so ``gridcam methods`` lists the methods without loading torch (about 2 s
of start-up on a 2-core machine).

``tests/test_catalogs.py`` keeps the two sides together: every registered method has an entry and
every entry a method; an entry's options are exactly the keywords its function accepts; every
default an option's help (or the cost) states is the function's default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["ENTRIES", "Entry", "describe"]


@dataclass(frozen=True)
class Entry:
    """What ``gridcam methods`` shows of one explanation method.

    Attributes:
        label: the name people read (``"Grad-CAM++"``): tables, sentences, sheets and report pages.
        description: one line.
        cost: forwards (F) and backwards (B) of the model per image and pass over the T targets,
            with ``n`` (or ``N``, ``K``) standing for a sample, step or channel count and its
            default in parentheses: ``"(n+1)F+nB, n = samples (50)"``.
        relative: rough time relative to Grad-CAM (1) for one target at the default options
            (``benchmarks/cam_family.py``, resnet18 at 224 px on CPU); orders the listing.
        uses_layer: whether the method reads ``layer`` (the CAM layer, or the layer a map is read at).
        options: every keyword the method's function accepts -> one-line help stating its default.
    """

    label: str
    description: str
    cost: str
    relative: float = 1.0
    uses_layer: bool = False
    options: Mapping[str, str] = field(default_factory=dict)


_GENERATOR = "torch.Generator for the noise (None: the global one)"
_CHUNK = "images per forward, the memory budget (32)"
_PERTURBED = {"method_batch": "default 16", "progress": "default False"}

#: method name -> its entry, in registration order (``gridcam.cam.METHOD_INFO`` keeps it).
ENTRIES: dict[str, Entry] = {
    "gradcam": Entry(
        "Grad-CAM", "Grad-CAM: activations x gradients at the CAM layer", "1F+1B",
        uses_layer=True, options={"variant": "'elementwise' (paper, default) or 'classic'"}),
    "hirescam": Entry(
        "HiResCAM", "HiResCAM = Grad-CAM 'elementwise' (the paper's variant)", "1F+1B",
        uses_layer=True),
    "linear_approx": Entry(
        "Linear approximation",
        "TorchRay linear approximation: ReLU(sum_k A_k dS/dA_k) at `layer`", "1F+1B",
        uses_layer=True),
    "gradient": Entry(
        "Gradient", "|d logit / d input|, max over colour channels", "1F+1B", relative=2.0),
    "input_x_gradient": Entry(
        "Input x gradient", "|input x gradient|, summed over colour channels", "1F+1B",
        relative=2.0),
    "deconvnet": Entry(
        "DeconvNet", "DeconvNet: gradient with ReLU backward = ReLU(grad)", "1F+1B", relative=2.0),
    "guided_backprop": Entry(
        "Guided backprop", "guided backprop: positive gradients through active ReLUs", "1F+1B",
        relative=2.0),
    "excitation_backprop": Entry(
        "Excitation backprop", "excitation backprop: marginal winning probability at `layer`",
        "1F+1B (B ~2x a plain one)", relative=3.0, uses_layer=True),
    "contrastive_excitation_backprop": Entry(
        "Contrastive excitation backprop",
        "contrastive excitation backprop: target minus its dual at `layer`",
        "1F+1B (B ~2x a plain one)", relative=3.0, uses_layer=True),
    "smoothgrad": Entry(
        "SmoothGrad", "SmoothGrad: gradient averaged over noisy copies",
        "(n+1)F+nB, n = samples (50)", relative=100.0,
        options={"samples": "noisy copies n (50, the paper's)",
                 "sigma": "noise std relative to the image's range (0.15)",
                 "generator": _GENERATOR, "chunk": _CHUNK}),
    "integrated_gradients": Entry(
        "Integrated gradients", "integrated gradients from a constant baseline",
        "(n+1)F+nB, n = steps (50)", relative=100.0,
        options={"steps": "Gauss-Legendre points n (50)",
                 "baseline": "constant baseline image value (0.0)", "chunk": _CHUNK}),
    # The CAM family (cams.py): one forward, one batched backward, a weighting of the channels.
    "gradcampp": Entry(
        "Grad-CAM++",
        "Grad-CAM++: channel weights sum_ij alpha_ij ReLU(g_ij) (second-order alphas)",
        "1F+1B", uses_layer=True),
    "xgradcam": Entry(
        "XGrad-CAM", "XGrad-CAM: channel weights = activation-weighted mean of the gradients",
        "1F+1B", uses_layer=True),
    "layercam": Entry(
        "LayerCAM", "LayerCAM: ReLU(sum_k ReLU(g_k) * A_k)", "1F+1B", uses_layer=True),
    "eigencam": Entry(
        "Eigen-CAM",
        "Eigen-CAM: first principal component of the CAM-layer activations (no class)", "1F",
        relative=0.6, uses_layer=True),
    "scorecam": Entry(
        "Score-CAM",
        "Score-CAM: channel weights = class probability of the channel-masked image",
        "(1+K)F, K = channels (512 in ResNet-18)", relative=600.0, uses_layer=True,
        options=_PERTURBED),
    "ablationcam": Entry(
        "Ablation-CAM",
        "Ablation-CAM: channel weights = relative logit drop when a channel is zeroed",
        "(1+K/method_batch)F + K head-only F, K = channels", relative=4.0, uses_layer=True,
        options={"method_batch": "default 256", "progress": "default False"}),
    # The perturbation methods (perturbation.py): many perturbed copies of each image.
    "rise": Entry(
        "RISE", "RISE: probability-weighted mean of N random smooth masks",
        "(1+N)F, N = num_masks (4000)", relative=800.0,
        options={"num_masks": "default 4000", "cells": "default 7", "p": "default 0.5",
                 "masks": "default None", "method_batch": "default 16", "seed": "default 0",
                 "generator": "default None", "progress": "default False"}),
    "occlusion": Entry(
        "Occlusion", "Occlusion: logit drop when a sliding square is set to the baseline",
        "(1+W)F, W = window positions (169 at 224 px)", relative=450.0,
        options={"window": "default 32", "stride": "default 16", "baseline": "default 0.0",
                 **_PERTURBED}),
    "extremal_perturbation": Entry(
        "Extremal perturbation",
        "Extremal perturbation: optimised smooth mask of fixed area that preserves the logit",
        "iterations x (1F+1B) per target (80)", relative=950.0,
        options={"area": "default 0.1", "iterations": "default 80", "step": "default 7",
                 "blur": "default 20.0", "lr": "default 0.05", **_PERTURBED}),
}


class Described(Protocol):
    """What :func:`describe` reads of a record: an :class:`Entry` or a registry ``Method``."""

    @property
    def label(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def cost(self) -> str: ...
    @property
    def relative(self) -> float: ...
    @property
    def uses_layer(self) -> bool: ...
    @property
    def options(self) -> Mapping[str, str]: ...


def describe(records: Mapping[str, Described] | None = None) -> list[dict[str, Any]]:
    """One dict per method of ``records`` (default: :data:`ENTRIES`), cheapest first (by
    ``relative``, then name): name, label (the name itself when the record has none),
    description, cost, relative, options, uses_layer. ``gridcam methods`` prints these rows."""
    records = ENTRIES if records is None else records
    rows = [{"name": n, "label": r.label or n, "description": r.description, "cost": r.cost,
             "relative": r.relative, "options": dict(r.options), "uses_layer": r.uses_layer}
            for n, r in records.items()]
    return sorted(rows, key=lambda r: (r["relative"], r["name"]))
