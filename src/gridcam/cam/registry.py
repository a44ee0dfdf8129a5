"""The explanation-method registry: one :class:`Method` record per name.

A method is two things, written in two places:

* what ``gridcam methods`` shows of it (display name, description, cost, whether it reads the
  layer, its options with their defaults): an :class:`~gridcam.cam.catalog.Entry` in
  ``cam/catalog.py``, which imports no torch so that ``gridcam methods`` starts fast;
* the function that computes the maps, in a torch module (``cam/cams.py``, ``cam/saliency.py``, ...).

How to register a method (e.g. a new CAM variant in ``cam/cams.py``)::

    # in the module that defines it; every option is keyword-only, with its default
    def explain_mycam(model, layer, images, targets, *, alpha: float = 0.5):
        ...  # -> (heatmaps (B,T,h,w) float32 >= 0 detached, logits (B,C) detached)

    # cams.py: add it to the module's METHODS table (name -> (fn, keyword_defaults(fn)))
    "mycam": (explain_mycam, keyword_defaults(explain_mycam)),

    # cam/catalog.py: its entry in ENTRIES (where it stands is where it is registered)
    "mycam": Entry("MyCAM", "MyCAM: one line for `gridcam methods`", "1F+1B", uses_layer=True,
                   options={"alpha": "mixing weight (0.5)"}),

``cam/__init__.py`` registers every catalog entry with its function (a table of the torch
modules, or its own for the gradient methods); ``tests/test_catalogs.py`` fails when a method has
no entry or an entry no method, when the options differ from the function's keywords, or when a
default the help states is not the function's.

``options`` names every keyword the function accepts (name -> one-line help with the default):
``explain`` rejects any other keyword with an error listing these. ``uses_layer=False`` lets the
caller omit ``layer``. ``cost`` is per image and per pass over the T targets, in forwards (F) and
backwards (B) of the model, with ``n`` standing for the method's sample/step option; it is what
``gridcam methods`` prints, ``relative`` orders methods from cheap to expensive.

Outside code may also call :func:`register` with a :class:`Method` of its own (no catalog entry:
the record holds everything); ``gridcam methods`` lists only the catalog.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..errors import GridcamError
from .inputs import closest

__all__ = ["ExplainFn", "Method", "METHODS", "METHOD_INFO", "keyword_defaults", "method_label",
           "register", "select_options"]

ExplainFn = Callable[..., tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
        fn: ``fn(model, layer, images (B,3,H,W), targets (B,T), **options)`` returning
            ``(heatmaps (B,T,h,w) float32 >= 0 detached, logits (B,C) detached)``.
        options: keyword name -> one-line help (with its default); the only keywords accepted.
        uses_layer: whether ``layer`` matters (the CAM layer, or the layer a map is read at).
        description: one line for ``gridcam methods``.
        cost: forwards/backwards per image, e.g. ``"1F+1B"`` or ``"n F+n B (n=samples, 50)"``.
        relative: rough cost relative to Grad-CAM (1) for one target at the default options.
        label: the name people read (``"Grad-CAM++"``): ``gridcam methods``, tables, sentences,
            sheets and report pages all show it (:func:`method_label`); empty: the key.
    """

    fn: ExplainFn
    options: Mapping[str, str] = field(default_factory=dict)
    uses_layer: bool = False
    description: str = ""
    cost: str = "1F+1B"
    relative: float = 1.0
    label: str = ""


#: name -> explain function (the historical mapping; the evaluator looks functions up here).
METHODS: dict[str, ExplainFn] = {}
#: name -> :class:`Method` (options, description, cost).
METHOD_INFO: dict[str, Method] = {}


def register(name: str, method: Method) -> Method:
    """Add ``method`` under ``name`` to :data:`METHODS` and :data:`METHOD_INFO`; returns it."""
    if name in METHOD_INFO:
        raise ValueError(f"explanation method {name!r} is already registered")
    METHOD_INFO[name] = method
    METHODS[name] = method.fn
    return method


def keyword_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """The options a caller may pass to explain function ``fn``: its keyword-only parameters with
    their defaults, in order, less those a ``functools.partial`` already fixes (the elementwise
    Grad-CAM behind ``hirescam`` takes no ``variant``)."""
    fixed = fn.keywords if isinstance(fn, functools.partial) else {}
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in fixed}


def method_label(name: str) -> str:
    """The display name of method ``name`` (``"gradcampp"`` -> ``"Grad-CAM++"``): the one naming
    of methods on every page, table and picture; ``name`` itself when it has no record."""
    info = METHOD_INFO.get(name)
    return info.label if info is not None and info.label else name


def _info(name: str) -> Method:
    info = METHOD_INFO.get(name)
    if info is None or info.fn is not METHODS.get(name):
        # Someone replaced METHODS[name] by hand: trust the function, accept its keywords as given.
        return Method(METHODS[name], options={"*": "any"}, uses_layer=True)
    return info


def select_options(method: str, opts: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``opts`` that ``method`` accepts.

    An option no registered method declares is a mistake (a typo such as ``varient``): it raises
    :class:`GridcamError` naming ``method``'s valid options. An option that only OTHER methods
    declare (``variant`` when explaining with ``gradient``) is dropped, so one option set can be
    passed for several methods, as ``gridcam evaluate --methods a,b`` does.
    """
    info = _info(method)
    if "*" in info.options:
        return dict(opts)
    known = set().union(*(m.options for m in METHOD_INFO.values()))
    unknown = sorted(k for k in opts if k not in known)
    if unknown:
        valid = ", ".join(f"{k} ({v})" for k, v in info.options.items()) or "none"
        near = {k: closest(k, info.options) for k in unknown}
        hints = ", ".join(f"{v}= for {k}=" for k, v in near.items() if v)
        raise GridcamError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for explanation method {method!r}; "
            f"its options are: {valid}" + (f"; did you mean {hints}?" if hints else "")
        )
    return {k: v for k, v in opts.items() if k in info.options}
