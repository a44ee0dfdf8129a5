"""benchmarks/evaluate.py compares with tolerances one flipped draw or pair cannot break (issue 13.9)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "bench_evaluate", Path(__file__).resolve().parents[1] / "benchmarks" / "evaluate.py")


@pytest.fixture(scope="module")
def bench():
    mod = importlib.util.module_from_spec(_SPEC)
    _SPEC.loader.exec_module(mod)
    return mod


def _res(pg, spg, n=1018):
    return {"pointing_game": pg, "stochastic_pointing_game": spg, "evaluated": n,
            "pg_pairs_per_class": [127, 128, 127, 128, 127, 128, 127, 126]}


def test_one_flipped_draw_of_101800_passes(bench):
    # the failure seen on another 2-core machine: 23.110 vs 23.111 (1 draw of 101,800)
    ref = _res(50.0, 23526 / 101800 * 100)
    got = _res(50.0, 23527 / 101800 * 100)
    c = bench.agreement(got, ref, samples=100)
    assert c["spg_draws"] == 101800 and c["spg_draws_differing"] == 1.0 and c["spg_ok"]
    assert c["spg_draws_allowed"] == 11


def test_real_disagreement_fails(bench):
    ref = _res(50.0, 23.0)
    assert not bench.agreement(_res(50.0, 23.1), ref, samples=100)["spg_ok"]  # ~102 draws
    one_pair = 100.0 / (8 * 126)
    assert bench.agreement(_res(50.0 + 2 * one_pair, 23.0), ref, samples=100)["pg_ok"]
    assert not bench.agreement(_res(50.0 + 3 * one_pair, 23.0), ref, samples=100)["pg_ok"]
