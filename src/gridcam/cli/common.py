"""What the command modules share: the parser class, argument types, output checks, the method
vocabulary, and the model flags of train and evaluate.

* :class:`Parser` prints an argument error as ONE line (``gridcam <cmd>: error: ... (see gridcam
  <cmd> --help)``, exit 2) instead of the usage block, and its :class:`HelpFormatter` ends each
  option's help with its default.
* :func:`positive`, :func:`at_least`, :func:`fraction`: ``type=`` functions whose errors name the
  value (argparse adds the flag).
* :func:`check_output_dir` / :func:`check_output_file`: every place a command writes is checked
  BEFORE its work starts (the folder exists or can be created, is a folder, and a file can be
  created there), so a long run never dies at its last step.
* :func:`save_results`: a results file that cannot be written where asked goes to the current
  folder (or the temporary folder) instead, and the one-line error says where.
* :func:`add_methods_option` / :func:`parse_methods`: ``--methods`` in every command, with the old
  ``--method`` kept as a hidden alias.
* :func:`leaf_module`: a torch-free catalog (``gridcam.cam.catalog``) without its package's
  ``__init__``, which imports torch: what keeps ``gridcam methods`` and ``gridcam models`` fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import gridcam
from gridcam.errors import GridcamError

#: More loader processes than cores only adds contention (and a DataLoader warning).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


# -------------------------------------------------------------------------------- leaf modules
def leaf_module(name: str) -> ModuleType:
    """Import the leaf module ``name`` (``"gridcam.cam.catalog"``, ``"gridcam.models.catalog"``)
    without running its package's ``__init__`` while that package is not imported yet.

    ``gridcam.cam`` and ``gridcam.models`` import torch when imported (about 2 s on a 2-core
    machine); their catalogs import only the standard library (``LEAVES`` in
    tests/test_architecture.py), so the listing commands load the catalog's file alone. The module
    goes into ``sys.modules`` under its own name, so a later ``import gridcam.cam`` in the same
    process uses this very module. Once the package is imported, this is a plain import.
    """
    if name in sys.modules:
        return sys.modules[name]
    if name.rpartition(".")[0] in sys.modules:
        return importlib.import_module(name)
    path = Path(gridcam.__file__).parent.joinpath(*name.split(".")[1:]).with_suffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {name} from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


# ------------------------------------------------------------------------------- parser, help
class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, each option's text ending with ``(default: VALUE)`` where the option has a
    default value and its help does not already show it with ``%(default)s``. Options whose
    default is None say what None means in their own words (their help contains "default")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not text or "%(default)" in text or default is None or default is argparse.SUPPRESS
                or isinstance(default, bool) or default == []):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the command, plus where to read more;
    its sub-commands are Parsers too (argparse makes them of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message> (see <prog> --help)`` on stderr and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_alias(p: argparse.ArgumentParser, *flags: str, dest: str, **kwargs: Any) -> None:
    """An old spelling of an option: parsed into ``dest`` like the option itself, hidden from
    ``--help`` (docs/cli.md lists the aliases)."""
    p.add_argument(*flags, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)


# ---------------------------------------------------------------------------- argument types
def at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low`` (a one-line error naming the value otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


#: argparse type: an integer >= 1.
positive = at_least(1)
#: argparse type: an integer >= 0.
non_negative = at_least(0)


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1] (an opacity, a probability)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


# ----------------------------------------------------------------------------- output checks
def _existing_ancestor(path: Path) -> Path:
    """The nearest folder or file of ``path`` (itself or a parent) that exists."""
    current = path
    while not os.path.lexists(current) and current != current.parent:
        current = current.parent
    return current


def _probe(flag: str, shown: str, folder: Path) -> None:
    """Create and remove a file in ``folder``, or raise GridcamError naming ``flag``."""
    try:
        fd, name = tempfile.mkstemp(prefix=".gridcam-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise GridcamError(f"{flag} {shown}: cannot create files in {folder} "
                           f"({exc.strerror or exc}); choose another place") from None


def check_output_dir(flag: str, path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that the folder ``path`` (given as ``flag``) can be written: it is
    a folder or can be created (nothing on its way is a file), and a file can be created in it
    or in the nearest existing parent. Nothing is created. Returns ``path`` as a Path."""
    target = Path(path)
    shown = str(path)
    found = _existing_ancestor(Path(os.path.abspath(target)))
    if not found.is_dir():
        where = "is a file" if found == Path(os.path.abspath(target)) else f"is under the file {found}"
        raise GridcamError(f"{flag} {shown}: {where}, not a folder; choose another place")
    _probe(flag, shown, found)
    return target


def check_output_file(flag: str, path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that the file ``path`` (given as ``flag``) can be written: it is
    not a folder or a device, and its folder passes :func:`check_output_dir`. Nothing is created.
    Returns ``path`` as a Path."""
    target = Path(path)
    if target.is_dir():
        raise GridcamError(f"{flag} {path}: is a folder; give a file name, e.g. {target / 'results.json'}")
    if os.path.lexists(target) and not target.is_file():
        raise GridcamError(f"{flag} {path}: exists and is not a regular file; choose another name")
    found = _existing_ancestor(Path(os.path.abspath(target)).parent)
    if not found.is_dir():
        raise GridcamError(f"{flag} {path}: is under the file {found}, not in a folder; "
                           "choose another place")
    _probe(flag, str(path), found)
    return target


def save_results(flag: str, path: str | os.PathLike[str], results: Any) -> None:
    """Write ``results`` as JSON to ``path`` atomically. When that fails (a full disk, a folder
    made read-only during the run) the JSON goes to ``gridcam-<name>-<time>.json`` in the current
    folder, else in the temporary folder, else onto stdout, and GridcamError says where: the
    results of a long run are never lost to its last step."""
    from gridcam.runtime.files import atomic_write_json

    try:
        atomic_write_json(path, results)
        return
    except OSError as exc:
        reason = exc.strerror or str(exc)
    name = f"gridcam-{Path(path).stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        spare = folder / name
        try:
            atomic_write_json(spare, results)
        except OSError:
            continue
        raise GridcamError(f"{flag} {path}: could not write it ({reason}); the results were "
                           f"written to {spare} instead")
    print(json.dumps(results, indent=2))
    raise GridcamError(f"{flag} {path}: could not write it ({reason}), nor a copy in the current or "
                       "the temporary folder; the results JSON was printed above")


# ------------------------------------------------------------------------- the method words
def add_methods_option(p: argparse.ArgumentParser, *, several: bool, default: str = "gradcam") -> None:
    """``--methods`` (one vocabulary in every command), with the old ``--method`` as a hidden
    alias. ``several``: a comma-separated list is allowed (else exactly one name)."""
    if several:
        text = ("comma-separated explanation methods, or 'all' (`gridcam methods` lists them with "
                "their options and cost)")
    else:
        text = "ONE explanation method (`gridcam methods` lists them)"
    p.add_argument("--methods", default=default, metavar="METHOD[,METHOD...]" if several else "METHOD",
                   help=text)
    add_alias(p, "--method", dest="methods")


def parse_methods(text: str, *, several: bool, allow_all: bool = False) -> list[str]:
    """The names of ``--methods TEXT``, checked against the registry (GridcamError: unknown name,
    or several where one is meant). ``allow_all``: 'all' stands for every method."""
    from gridcam import cam

    names = [m.strip() for m in str(text).split(",") if m.strip()]
    if not names:
        raise GridcamError("--methods: give at least one explanation method (`gridcam methods` lists them)")
    if allow_all and names == ["all"]:
        return names
    if not several and len(names) > 1:
        raise GridcamError(f"--methods {text}: this command draws ONE method's heatmaps; give one, "
                           f"e.g. --methods {names[0]}")
    unknown = [m for m in names if m not in cam.METHODS]
    if unknown:
        raise GridcamError(f"--methods: unknown explanation method(s) {', '.join(map(repr, unknown))}; "
                           f"choose from: {', '.join(cam.list_methods())}")
    return names


# ------------------------------------------------------------------------- model flags
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
    p.add_argument("--std", default=None, help="input normalisation std (like --mean; default: the "
                                               "model's own, else ImageNet's)")


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device`` (train, evaluate, explain)."""
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:N (default: cuda if available, else cpu)")

