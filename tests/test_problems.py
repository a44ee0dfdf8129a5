"""gridcam.problems: one line per problem, told once, counted by stable reason code."""

from __future__ import annotations

import io
import os
import pickle
import warnings

import pytest

from gridcam import problems as P
from gridcam.data import DataWarning
from gridcam.errors import GridcamError


def test_line_names_file_and_place_without_source_paths():
    p = P.Problem("xml_malformed", "/d/val/x.xml", "malformed annotation: not a number: 'a'",
                  "<object>[2]/<bndbox>/<xmin>")
    assert p.line() == ("gridcam: warning: /d/val/x.xml: <object>[2]/<bndbox>/<xmin>: "
                        "malformed annotation: not a number: 'a'")
    assert P.Problem("not_found", "/d/a.jpg", "file not found\n  twice").line() == \
        "gridcam: warning: /d/a.jpg: file not found twice"
    assert str(p) == p.cause
    assert p.record() == {"reason": "xml_malformed", "file": "/d/val/x.xml", "cause": p.cause,
                          "where": "<object>[2]/<bndbox>/<xmin>"}
    assert "where" not in P.Problem("truncated", "f", "c").record()


def test_unknown_code_is_a_bug():
    with pytest.raises(ValueError, match="unknown problem code"):
        P.Problem("no_such_code", "f", "c")


def test_collector_prints_once_and_counts_by_code():
    out = io.StringIO()
    with P.collecting(out) as col:
        P.report(P.Problem("truncated", "/a.jpg", "truncated image data"))
        P.report(P.Problem("truncated", "/a.jpg", "truncated image data (again, other words)"))
        P.report(P.Problem("truncated", "/b.jpg", "truncated image data"))
        P.report(P.Problem("unknown_category", "/i.json", "category_id 9 ...", "annotation 3"))
        P.report(P.Problem("unknown_category", "/i.json", "category_id 9 ...", "annotation 4"))
        P.report(P.Problem("no_annotations", "/i.json", "5 of 9 images have no annotations"), count=5)
        assert P.active() is col
    lines = out.getvalue().splitlines()
    assert lines[:5] == [
        "gridcam: warning: /a.jpg: truncated image data",
        "gridcam: warning: /b.jpg: truncated image data",
        "gridcam: warning: /i.json: annotation 3: category_id 9 ...",
        "gridcam: warning: /i.json: annotation 4: category_id 9 ...",
        "gridcam: warning: /i.json: 5 of 9 images have no annotations"]
    assert lines[5] == ("gridcam: 9 data problem(s) worked around: 5 no_annotations, 2 truncated, "
                        "2 unknown_category")
    assert len(lines) == 6 and col.counts == {"truncated": 2, "unknown_category": 2, "no_annotations": 5}
    assert P.reason_counts(col.problems) == {"no_annotations": 1, "truncated": 2, "unknown_category": 2}
    assert P.active() is None


def test_nothing_reported_no_summary():
    out = io.StringIO()
    with P.collecting(out):
        pass
    assert out.getvalue() == ""


def test_without_collector_a_one_line_data_warning():
    with pytest.warns(DataWarning) as rec:
        P.report(P.Problem("not_found", "/x/gone.jpg", "file not found"))
    assert str(rec[0].message) == "/x/gone.jpg: file not found"


def test_collector_of_another_process_is_not_used(monkeypatch):
    with P.collecting(io.StringIO()) as col:
        monkeypatch.setattr(os, "getpid", lambda: col.pid + 1)  # as in a forked worker
        assert P.active() is None
        with pytest.warns(DataWarning):
            P.report(P.Problem("truncated", "/a.jpg", "cut"))
    assert not col.counts


def test_plain_warnings_one_line(capsys):
    with P.plain_warnings():
        warnings.warn("/d/x.jpg: file not found", DataWarning)
        warnings.warn_explicit("--amp applies to CUDA only", UserWarning, P.__file__, 1)
        warnings.warn_explicit("someone else's", UserWarning, "/elsewhere/lib.py", 7)
    err = capsys.readouterr().err
    assert err.splitlines()[:2] == ["gridcam: warning: /d/x.jpg: file not found",
                                    "gridcam: warning: --amp applies to CUDA only"]
    assert len(err.splitlines()) == 2  # the third one went to Python's own handler


def test_problem_error_is_a_user_error_and_pickles():
    e = P.ProblemError(P.Problem("truncated", "/a.jpg", "cut", None))
    assert isinstance(e, GridcamError) and str(e) == "/a.jpg: cut"
    back = pickle.loads(pickle.dumps(e))
    assert back.problem == e.problem


def test_docs_list_every_reason_code():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    for code, meaning in P.REASONS.items():
        assert f"| `{code}` | {meaning} |" in text, code
