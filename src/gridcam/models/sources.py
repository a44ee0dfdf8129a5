"""Constructors of outside models, one per ``-a`` prefix, and the GMP swap.

``torchvision:NAME`` (``torchvision.models.get_model``), ``timm:NAME`` (``timm.create_model``),
``hf:NAME_OR_PATH`` (a local Hugging Face image classifier) and ``MODULE:FACTORY`` /
``file.py:FACTORY`` (any callable taking ``num_classes=`` and returning an ``nn.Module``). Each
package is imported only when its prefix is used; nothing is downloaded. Each constructor also
returns the model's :class:`Defaults` (normalisation, input size, a CAM-layer hint) where the
library provides them. :func:`gridcam.models.build` is the entry point that uses these.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from gridcam.errors import GridcamError

__all__ = ["Defaults", "HFClassifier", "IMAGENET_MEAN", "IMAGENET_STD", "construct", "swap_to_gmp"]

# The same constants as gridcam.data.transforms (models/ does not depend on data/).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _require(package: str, prefix: str) -> Any:
    try:
        return importlib.import_module(package)
    except Exception as exc:  # ImportError, or OSError from a wheel built for missing CUDA libraries
        raise GridcamError(f"-a {prefix}:... needs the {package} package, which cannot be imported "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                           f"install it with `pip install {package}`") from None


@dataclass
class Defaults:
    """A model's own normalisation constants and input size, and a CAM-layer hint (timm's
    ``feature_info[-1]``); ImageNet's constants and 224 px where it has none."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_size: int = 224
    hint: str | None = None


def _cfg_defaults(model: nn.Module) -> Defaults:
    """mean/std/input size from a timm-style ``pretrained_cfg`` (or ``default_cfg``) dict."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    d = Defaults()
    if isinstance(cfg, dict):
        if cfg.get("mean") and cfg.get("std"):
            d.mean, d.std = tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
        if cfg.get("input_size"):
            d.input_size = int(cfg["input_size"][-1])
    return d


def _torchvision(name: str, num_classes: int, pooling: str) -> tuple[nn.Module, Defaults]:
    tv = _require("torchvision", "torchvision")
    try:
        model = tv.models.get_model(name, weights=None, num_classes=num_classes)
    except (ValueError, KeyError) as exc:
        raise GridcamError(f"torchvision has no model {name!r} ({exc})") from None
    return model, Defaults()


def _timm(name: str, num_classes: int, pooling: str) -> tuple[nn.Module, Defaults]:
    timm = _require("timm", "timm")
    kw: dict[str, Any] = {"pretrained": False, "num_classes": num_classes}
    if pooling == "max":
        kw["global_pool"] = "max"
    try:
        try:  # ViT-style models interpolate their position embeddings for the 2x composite
            model = timm.create_model(name, dynamic_img_size=True, **kw)
        except TypeError:
            model = timm.create_model(name, **kw)
    except (RuntimeError, TypeError, AssertionError, ValueError) as exc:
        if pooling == "max":
            raise GridcamError(f"timm:{name} cannot use global max pooling (--maxpool): {exc}") from None
        raise GridcamError(f"timm cannot build {name!r}: {exc}") from None
    d = _cfg_defaults(model)
    feature_info = getattr(model, "feature_info", None)
    if isinstance(feature_info, list) and feature_info and isinstance(feature_info[-1], dict):
        d.hint = feature_info[-1].get("module")
    return model, d


class HFClassifier(nn.Module):
    """A Hugging Face image classifier as a plain ``images -> logits`` module.

    Its state-dict keys are the wrapped model's with a ``model.`` prefix. Models whose forward
    accepts ``interpolate_pos_encoding`` are called with it (inputs of any size)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.model = hf_model
        self._kwargs = ({"interpolate_pos_encoding": True}
                        if "interpolate_pos_encoding" in inspect.signature(hf_model.forward).parameters
                        else {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x, **self._kwargs).logits


@contextmanager
def _quiet(tf: Any) -> Iterator[None]:
    """transformers logging at "error" and no progress bar inside the block: transformers 5 prints
    a table (its "LOAD REPORT") for a classifier resized to ``num_classes``, which is what
    :func:`_hf` asks for, and a progress bar for the weights of a local folder."""
    log = getattr(tf, "logging", None)
    if log is None:
        yield
        return
    verbosity, bar = log.get_verbosity(), log.is_progress_bar_enabled()
    log.set_verbosity_error()
    log.disable_progress_bar()
    try:
        yield
    finally:
        log.set_verbosity(verbosity)
        if bar:
            log.enable_progress_bar()


def _hf(name: str, num_classes: int, pooling: str) -> tuple[nn.Module, Defaults]:
    tf = _require("transformers", "hf")
    try:
        config = tf.AutoConfig.from_pretrained(name, local_files_only=True)
    except Exception as exc:
        raise GridcamError(
            f"hf:{name}: no Hugging Face config found locally ({type(exc).__name__}); gridcam does "
            f"not download: pass a local directory, or fetch it first (`huggingface-cli download {name}`)"
        ) from None
    config.num_labels = num_classes
    with _quiet(tf):
        try:  # weights present in the directory / cache: use them (the classifier may be resized)
            hf_model = tf.AutoModelForImageClassification.from_pretrained(
                name, config=config, local_files_only=True, ignore_mismatched_sizes=True)
        except OSError:
            hf_model = tf.AutoModelForImageClassification.from_config(config)
    d = Defaults()
    side = getattr(config, "image_size", None)  # the size the model was made for (ViT configs)
    if isinstance(side, int) and side > 0:
        d.input_size = side
    try:
        proc = tf.AutoImageProcessor.from_pretrained(name, local_files_only=True)
        if getattr(proc, "image_mean", None) and getattr(proc, "image_std", None):
            d.mean, d.std = tuple(map(float, proc.image_mean)), tuple(map(float, proc.image_std))
        size = getattr(proc, "size", None) or {}
        side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else None
        if side:
            d.input_size = int(side)
    except Exception:  # no preprocessor_config.json: ImageNet's constants
        pass
    return HFClassifier(hf_model), d


def _load_factory(spec: str) -> Callable[..., Any]:
    """``package.module:callable`` or ``path/to/file.py:callable`` -> the callable."""
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise GridcamError(f"-a {spec}: file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name != target.split(".")[0] or "" in sys.path:
                raise GridcamError(f"-a {spec}: cannot import {target} ({exc})") from None
            sys.path.insert(0, "")  # a module in the current directory, as `python -m` would find it
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError as exc2:
                raise GridcamError(f"-a {spec}: cannot import {target} ({exc2})") from None
            finally:
                sys.path.remove("")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise GridcamError(f"-a {spec}: {target} has no callable {attr!r}")
    return fn


def _factory(spec: str, num_classes: int, pooling: str) -> tuple[nn.Module, Defaults]:
    fn = _load_factory(spec)
    try:
        model = fn(num_classes=num_classes)
    except TypeError as exc:
        raise GridcamError(f"-a {spec}: the factory must accept num_classes=N ({exc})") from None
    if not isinstance(model, nn.Module):
        raise GridcamError(f"-a {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, _cfg_defaults(model)


_ADAPTERS = {"torchvision": _torchvision, "tv": _torchvision, "timm": _timm, "hf": _hf}


def construct(arch: str, num_classes: int, pooling: str = "avg") -> tuple[nn.Module, Defaults]:
    """Build the bare outside model ``arch`` -> (model, its defaults); GMP swapped in if asked."""
    if pooling not in ("avg", "max"):
        raise GridcamError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    if num_classes < 1:
        raise GridcamError(f"num_classes must be >= 1, got {num_classes}")
    prefix, _, name = arch.partition(":")
    if not name:
        raise GridcamError(f"-a {arch}: nothing after {prefix!r}:")
    adapter = _ADAPTERS.get(prefix)
    model, defaults = adapter(name, num_classes, pooling) if adapter else _factory(arch, num_classes, pooling)
    if pooling == "max" and prefix != "timm":
        swap_to_gmp(model, arch)
    return model, defaults


def swap_to_gmp(model: nn.Module, arch: str = "") -> None:
    """Replace the model's one global average pooling (``nn.AdaptiveAvgPool2d(1)``) by global max
    pooling, in place. GridcamError when there is not exactly one (pooling done functionally, by
    tokens, or several candidates): the head is then not "global pooling + linear"."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1))]
    if len(found) != 1:
        raise GridcamError(
            f"--maxpool (GMP) needs a head of global average pooling + linear, with one "
            f"nn.AdaptiveAvgPool2d(1) to swap; {arch or type(model).__name__} has {len(found)} "
            "(its pooling is functional, token-based or ambiguous); train it without --maxpool")
    name = found[0][0]
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.AdaptiveMaxPool2d(found[0][1].output_size))


