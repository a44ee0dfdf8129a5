"""The README's result tables, rendered from stored study results (never typed by hand).

A block in a Markdown file::

    <!-- results:NAME -->
    ...anything...
    <!-- /results -->

is replaced by the tables of ``docs/results/NAME.json`` (a ``study.json`` copied there by the
person who ran the study), headed by the machine and the wall time it records;
``<!-- results:NAME:METHOD -->`` renders the verdicts and the table of one explanation method only
(the README's short form); ``<!-- results:A+B+C:METHOD -->`` renders one line per results file
of one recipe run on several machines (:func:`gridcam.study.tables.across`: how far they agree;
without ``:METHOD``, Grad-CAM's numbers).
``gridcam study --render-readme README.md`` rewrites every block; ``tests/test_readme.py`` fails
when the README differs from that rendering, so a table can only change with its results file.
"""

from __future__ import annotations

import re
from pathlib import Path

from gridcam.errors import GridcamError
from gridcam.study import tables

__all__ = ["BLOCK", "cpu_detail", "machine_line", "render", "render_file", "where"]

BLOCK = re.compile(r"(<!-- results:(?P<name>[\w.+-]+?)(?::(?P<method>\w+))? -->\n)(?P<body>.*?)(<!-- /results -->)",
                   re.S)


def machine_line(study: dict) -> str:
    """``_preset P, S seed(s); CPU (N cores), torch T; M min of training and evaluation, W min of
    wall time._`` (W: the study command's own, a rerun that reuses finished runs is shorter)."""
    cfg, m = study["config"], study.get("machine") or {}
    cores = f", {m['cores']} cores" if m.get("cores") else ""
    torch_v = f", torch {m['torch']}" if m.get("torch") else ""
    jobs = f", {m['jobs']} processes" if m.get("jobs", 1) > 1 else ""
    # the trainings' and evaluations' own seconds (one thread each): unlike the wall time of the
    # command, they do not shrink when a rerun reuses finished runs
    work = sum(float(v) for s in (study.get("seconds") or {}).values() for v in s.values())
    wall = study.get("wall_seconds")
    return (f"_`--preset {cfg.get('preset')}`, {cfg.get('seeds')} seed(s); {where(study)}{cores}{torch_v}{jobs}"
            + (f"; {work / 60:.1f} min of training and evaluation, one thread each" if work else "")
            + (f", {float(wall) / 60:.1f} min of wall time" if wall else "") + "._\n")


def where(study: dict) -> str:
    """The machine a study ran on: the GPU's name, or the CPU's model name with :func:`cpu_detail`."""
    m = study.get("machine") or {}
    if m.get("device_name"):
        return m["device_name"]
    return (m.get("cpu") or "an unrecorded machine") + cpu_detail(m)


def cpu_detail(m: dict) -> str:
    """`` (family 6 model 207, AVX2 kernels, MKL_ENABLE_INSTRUCTIONS=AVX2, ...)``: what tells two
    machines with one model name apart, the kernels that made the numbers and the settings that
    capped them; empty for an older results file, which recorded none of it."""
    family = f"family {m['family']} " if m.get("family") is not None else ""
    parts = ([f"{family}model {m['model']}"] if m.get("model") is not None else []) \
        + ([f"{m['kernels']} kernels"] if m.get("kernels") else []) \
        + [f"{k}={v}" for k, v in sorted((m.get("caps") or {}).items())]
    return f" ({', '.join(parts)})" if parts else ""


def _load(results: Path, name: str, block: str, method: str | None) -> dict:
    """``results/NAME.json`` read; GridcamError naming the file and the block when it is missing
    or does not score ``method``."""
    path = results / f"{name}.json"
    if not path.is_file():
        raise GridcamError(f"{path}: no such results file (named by a <!-- results:{block} --> block)")
    study = tables.load(path)
    if method is not None and method not in study["config"]["methods"]:
        raise GridcamError(f"{path}: scores no method {method!r} (named by a <!-- results:{block}:"
                           f"{method} --> block); it has {', '.join(study['config']['methods'])}")
    return study


def render(text: str, results: Path) -> str:
    """``text`` with every results block rendered from ``results/NAME.json``."""
    def one(m: re.Match) -> str:
        name, method = m["name"], m["method"]
        if "+" in name:  # one recipe on several machines
            method = method or "gradcam"
            names = name.split("+")
            studies = [_load(results, n, name, method) for n in names]
            tables.check_one_recipe([(str(results / f"{n}.json"), s) for n, s in zip(names, studies)])
            return (m.group(1) + "\n" + tables.across([(where(s), s) for s in studies], method, checked=True)
                    + m.group(5))
        study = _load(results, name, name, method)
        if method is None:
            return m.group(1) + machine_line(study) + "\n" + tables.table(study) + m.group(5)
        verdicts = "".join(f"- {v}\n" for v in study.get("verdicts") or [])
        return (m.group(1) + machine_line(study) + "\n" + (verdicts + "\n" if verdicts else "")
                + tables.table(study, method) + m.group(5))

    return BLOCK.sub(one, text)


def render_file(path: str | Path, results: str | Path | None = None) -> bool:
    """Rewrite the blocks of the Markdown file ``path`` (results: the ``docs/results`` folder of
    the nearest folder above it, so README.md and docs/*.md both work); True when it changed."""
    path = Path(path)
    if results is None:  # docs/results of the nearest folder above the file that has one
        here = path.resolve().parent
        results = next((d / "docs" / "results" for d in (here, *here.parents) if (d / "docs" / "results").is_dir()),
                       here / "docs" / "results")
    old = path.read_text()
    new = render(old, results)
    if new != old:
        path.write_text(new)
    return new != old
