"""gridcam.runtime.rng: seed derivation, saving/restoring the global RNG states, restore per rank.

Direct unit tests with hand-written references (hashlib, fresh ``random.Random`` /
``np.random.RandomState`` generators). The CUDA branches are checked on CPU with a fake
``torch.cuda`` (recording what it is given), so they run on every machine.
"""

import hashlib
import random

import numpy as np
import pytest
import torch

from gridcam.runtime import distributed as du
from gridcam.runtime import rng
from gridcam.errors import GridcamError
from gridcam.runtime.rng import derive_seed

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _keep_global_rngs():
    """Each test reseeds the global generators; put them back for the rest of the suite."""
    saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    torch.set_rng_state(saved[0])
    np.random.set_state(saved[1])
    random.setstate(saved[2])


def _reference_seed(*parts):
    """The documented formula, written out: blake2b-64 of the ':'-joined str() of the parts,
    read little-endian, top bit cleared."""
    text = ":".join(str(p) for p in parts).encode()
    value = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")
    return value % 2**63


def _draws():
    """A few draws from each global generator (torch, numpy incl. a gaussian, Python)."""
    return (
        torch.rand(4).tolist(),
        np.random.rand(4).tolist(),
        float(np.random.normal()),
        [random.random() for _ in range(4)],
    )


def _info(rank=0, world_size=1):
    return du.DistInfo(rank=rank, world_size=world_size, local_rank=rank, device=CPU)


# ------------------------------------------------------------------ derive_seed

PURPOSES = [
    (0, "global", 0, 0),
    (7, "global", 3, 1),
    (42, "item", 2, 17),
    (42, "step", 0, 5, 1),
    (123456789, "spg", 9),
    ("x", None, 1.5),
]


def test_derive_seed_matches_the_documented_formula():
    got = [derive_seed(*p) for p in PURPOSES]
    assert got == [_reference_seed(*p) for p in PURPOSES]
    assert all(0 <= s < 2**63 for s in got)
    # the references include both parities, so a cleared low bit would show
    assert {s % 2 for s in got} == {0, 1}
    # golden value: stable across runs, platforms and releases (checkpoints depend on it)
    assert derive_seed(7, "global", 3, 1) == 5875240108214455306


def test_derive_seed_separator_and_byte_order_matter():
    # the ':' separator: (1, 23) and (12, 3) must not collide, and equal the joined string
    assert derive_seed(1, 23) != derive_seed(12, 3)
    assert derive_seed(1, 23) == _reference_seed("1:23")
    # little-endian read of the 8-byte digest (a big-endian read gives another number)
    digest = hashlib.blake2b(b"5:item:0:0", digest_size=8).digest()
    assert derive_seed(5, "item", 0, 0) == int.from_bytes(digest, "little") & (2**63 - 1)
    assert derive_seed(5, "item", 0, 0) != int.from_bytes(digest, "big") & (2**63 - 1)


# ------------------------------------------------------------------ seed_globals


@pytest.mark.parametrize("seed,epoch,rank", [(0, 0, 0), (7, 3, 1), (2021, 1, 0)])
def test_seed_globals_seeds_all_three_generators_from_the_derived_seed(seed, epoch, rank):
    s = _reference_seed(seed, "global", epoch, rank)
    rng.seed_globals(seed, epoch, rank)
    assert torch.initial_seed() == s
    got = _draws()
    expected_torch = torch.rand(4, generator=torch.Generator().manual_seed(s)).tolist()
    np_ref = np.random.RandomState(s % 2**32)
    py_ref = random.Random(s)
    assert got[0] == expected_torch
    assert got[1] == np_ref.rand(4).tolist()
    assert got[2] == float(np_ref.normal())
    assert got[3] == [py_ref.random() for _ in range(4)]


def test_seed_globals_depends_on_seed_epoch_and_rank():
    seen = set()
    for args in [(1, 0, 0), (2, 0, 0), (1, 1, 0), (1, 0, 1)]:
        rng.seed_globals(*args)
        torch_draws, _, _, py_draws = _draws()
        seen.add((tuple(torch_draws), tuple(py_draws)))
    assert len(seen) == 4
    rng.seed_globals(1, 0, 0)
    first = _draws()
    rng.seed_globals(1, 0, 0)
    assert _draws() == first


# ------------------------------------------------------------------ rng_state / set_rng_state


def test_rng_state_layout_is_plain_and_weights_only_loadable():
    np.random.seed(3)
    state = rng.rng_state()
    assert set(state) == {"torch", "cuda", "numpy", "python"}
    assert state["torch"].dtype == torch.uint8
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        assert state["cuda"] is None
    keys = state["numpy"]["keys"]
    # int64 (not uint32, which older torch releases cannot load and barely compute with)
    assert keys.dtype == torch.int64 and keys.shape == (624,)
    assert keys.tolist() == np.random.get_state()[1].tolist()
    assert state["numpy"]["name"] == "MT19937"


def test_set_rng_state_round_trip_continues_every_stream():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # numpy now holds a cached gaussian (has_gauss = 1)
    state = rng.rng_state()
    expected = _draws()
    rng.seed_globals(99, 0, 0)
    rng.set_rng_state(state)
    assert _draws() == expected


def test_set_rng_state_accepts_a_torch_state_in_another_integer_dtype():
    torch.manual_seed(5)
    state = rng.rng_state()
    expected = torch.rand(3)
    torch.manual_seed(6)
    rng.set_rng_state({"torch": state["torch"].to(torch.int64)})
    assert torch.equal(torch.rand(3), expected)


def test_set_rng_state_skips_absent_and_none_entries():
    rng.seed_globals(4, 0, 0)
    before = rng.rng_state()
    expected = _draws()
    rng.set_rng_state(before)
    rng.set_rng_state({})
    rng.set_rng_state({"torch": None, "cuda": None, "numpy": None, "python": None})
    assert _draws() == expected
    # only the numpy entry: torch and Python keep their current streams
    rng.set_rng_state(before)
    torch_next = torch.rand(2).tolist()
    rng.set_rng_state({"numpy": before["numpy"]})
    assert np.random.rand(4).tolist() == expected[1]
    assert torch.rand(2).tolist() != torch_next  # torch was not rewound


class _FakeCuda:
    """Stands in for torch.cuda's RNG functions; records what set_rng_state is given."""

    def __init__(self, monkeypatch, available, initialized=True):
        self.set_calls = []
        self.state = torch.arange(16, dtype=torch.uint8)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self._get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_calls.append)

    def _get(self):
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            raise AssertionError("rng_state must not touch (and so initialise) CUDA")
        return self.state


def test_rng_state_reads_cuda_only_when_it_is_initialised(monkeypatch):
    fake = _FakeCuda(monkeypatch, available=True, initialized=True)
    assert torch.equal(rng.rng_state()["cuda"], fake.state)
    _FakeCuda(monkeypatch, available=True, initialized=False)
    assert rng.rng_state()["cuda"] is None
    _FakeCuda(monkeypatch, available=False, initialized=False)
    assert rng.rng_state()["cuda"] is None


def test_set_rng_state_restores_cuda_as_uint8_when_available(monkeypatch):
    fake = _FakeCuda(monkeypatch, available=True)
    saved = torch.arange(8, dtype=torch.int64)
    rng.set_rng_state({"cuda": saved})
    assert len(fake.set_calls) == 1
    (got,) = fake.set_calls
    assert got.dtype == torch.uint8 and got.tolist() == list(range(8))
    # None / absent cuda entry: nothing is set, no error
    rng.set_rng_state({"cuda": None})
    rng.set_rng_state({})
    assert len(fake.set_calls) == 1


def test_set_rng_state_ignores_a_cuda_state_without_cuda(monkeypatch):
    fake = _FakeCuda(monkeypatch, available=False)
    rng.set_rng_state({"cuda": torch.arange(8, dtype=torch.uint8)})
    assert fake.set_calls == []


# ------------------------------------------------------------------ gather_rng / restore_rng


def test_gather_then_restore_on_one_rank_continues_every_stream():
    rng.seed_globals(11, 2, 0)
    saved = rng.gather_rng()
    assert saved["world_size"] == 1 and len(saved["ranks"]) == 1
    expected = _draws()
    rng.seed_globals(12, 0, 0)
    rng.restore_rng(saved, _info())
    assert _draws() == expected


def test_restore_rng_picks_this_ranks_entry():
    states = []
    for r in range(3):
        rng.seed_globals(1, 0, r)
        states.append(rng.rng_state())
    rng.seed_globals(1, 0, 2)
    expected = _draws()
    rng.seed_globals(9, 9, 9)
    rng.restore_rng({"world_size": 3, "ranks": states}, _info(rank=2, world_size=3))
    assert _draws() == expected


@pytest.mark.parametrize(
    "saved,world_size",
    [
        (None, 1),
        ({}, 1),
        ("other world size", 2),  # saved by a 1-rank run, resumed with 2 ranks
        ("no world size", 1),  # entry missing: never matches
    ],
)
def test_restore_rng_leaves_the_generators_alone(saved, world_size):
    rng.seed_globals(3, 0, 0)
    snapshot = rng.rng_state()
    if saved == "other world size":
        saved = {"world_size": 1, "ranks": [snapshot]}
    elif saved == "no world size":
        saved = {"ranks": [snapshot]}
    rng.seed_globals(8, 1, 0)
    expected = _draws()
    rng.seed_globals(8, 1, 0)
    if isinstance(saved, dict) and saved:  # another world size: said, not silent
        with pytest.warns(UserWarning, match=r"saved by [01] process\(es\) and this run has "
                                             rf"{world_size}: .*not bit-exactly"):
            rng.restore_rng(saved, _info(rank=0, world_size=world_size))
    else:
        rng.restore_rng(saved, _info(rank=0, world_size=world_size))
    assert _draws() == expected


def test_restore_rng_names_a_damaged_state_list():
    saved = {"world_size": 3, "ranks": [rng.rng_state(), rng.rng_state()]}
    with pytest.raises(GridcamError, match="damaged: 2 rank state.* world size of 3"):
        rng.restore_rng(saved, _info(rank=2, world_size=3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_state_round_trip_on_a_real_cuda_device():
    torch.cuda.manual_seed(5)
    torch.rand(1, device="cuda")  # CUDA is initialised now
    state = rng.rng_state()
    assert state["cuda"] is not None and state["cuda"].dtype == torch.uint8
    expected = torch.rand(4, device="cuda").cpu()
    torch.cuda.manual_seed(6)
    rng.set_rng_state(state)
    assert torch.equal(torch.rand(4, device="cuda").cpu(), expected)
