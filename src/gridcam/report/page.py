"""A self-contained HTML page: result tables (paper layout) and heatmap sheets."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Mapping, Sequence


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def write_report(path: str | Path, title: str, tables: Mapping[str, tuple[Sequence[str], Sequence[Sequence[object]]]],
                 images: Mapping[str, str | Path] = (), notes: Sequence[str] = ()) -> Path:
    """Write ``path`` (HTML). ``tables``: caption -> (headers, rows); ``images``: caption -> PNG path
    (linked relative to the page). Written to a temp file and renamed, so a reader never sees half a page.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #999;padding:4px 10px;"
             "text-align:right}th{background:#eee}img{max-width:100%}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    for caption, (headers, rows) in tables.items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{_table(headers, rows)}")
    for caption, img in dict(images).items():
        rel = os.path.relpath(Path(img), path.parent)
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(rel)}'>")
    from gridcam.runtime.files import atomic_file

    with atomic_file(path, "w") as f:
        f.write("\n".join(parts))
    return path
